"""dciodvfy (dicom3tools) finds no error in an output that it did not find in its input.

Every file of pydicom's test data (bundled and pydicom-data) and of deid-data that the
pseudonymiser accepts is pseudonymised with the default profile; dciodvfy checks input and
output against their IOD (inputs dciodvfy cannot read at all are left out). Messages are
compared once values, UIDs and positions are taken out, so an error only counts when
pseudonymisation introduced it (a Type 2 attribute removed, a reference broken...).
"""

from __future__ import annotations

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from airflow_pseudo.pseudonymisation import Settings, pseudonymise_files
from tests.conftest import require_tool

from .conftest import KEY

_VALUE = re.compile(r"= <[^>]*>")
_INDEX = re.compile(r"\[\d+\]")
_UID = re.compile(r"\d+(?:\.\d+){2,}")
_AFTER_UID_NAME = re.compile(r"(UID\s+)\S+")
UNREADABLE = "Error - Dicom dataset read failed"
_UNKNOWN_TAG = re.compile(r"\(0x[0-9a-f]{4},0x[0-9a-f]{4}\)\s+\?")


def normalise(message: str) -> str:
    """Return a dciodvfy message without values, UIDs, indexes or garbage tags."""
    message = _VALUE.sub("= <>", message)
    message = _INDEX.sub("[]", message)
    message = _UID.sub("<uid>", message)
    message = _AFTER_UID_NAME.sub(r"\1<uid>", message)  # an invalid UID such as "0"
    message = _UNKNOWN_TAG.sub("(?)", message)
    return " ".join(message.split())


def dciodvfy_errors(dciodvfy: str, path: Path) -> set[str]:
    """Return the normalised error messages dciodvfy reports for a file."""
    completed = subprocess.run(
        [dciodvfy, str(path)], capture_output=True, text=True, errors="replace", timeout=300
    )
    lines = (completed.stdout + completed.stderr).splitlines()
    return {normalise(line) for line in lines if "Error" in line}


def test_normalise_keeps_the_message_and_drops_values() -> None:
    line = (
        "Error - Referenced SOP Instance is not listed in X but have IMAGE "
        "ReferencedSOPInstanceUID 2.25.9357208524007794824516166392870259181"
    )
    assert normalise(line).endswith("ReferencedSOPInstanceUID <uid>")
    assert normalise(line[: line.rindex(" ")] + " 0") == normalise(line)
    assert normalise("Error - Value invalid - PN [3] = <Doe^John>") == (
        "Error - Value invalid - PN [] = <>"
    )
    missing = "Error - Missing attribute Type 2 Required Element=<X> Module=<Y>"
    assert normalise(missing) == missing


@pytest.mark.slow
def test_outputs_have_no_dciodvfy_error_their_inputs_did_not_have(
    corpus: list[Path], tmp_path: Path
) -> None:
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    # Header conformance is checked here, so images the pixel risk gate would hold back
    # (secondary captures, ultrasound, ...) are let through.
    settings = Settings(key=KEY, allow_burned_in=True)
    pairs = []
    for index, path in enumerate(corpus):
        # One folder per input: several test files share their UIDs.
        result = pseudonymise_files(
            [path],
            tmp_path / "out" / str(index),
            settings=settings,
            quarantine_dir=tmp_path / "quarantine" / str(index),
        )[0]
        if result.status == "ok":
            assert result.output is not None
            pairs.append((path, Path(result.output)))
    assert len(pairs) >= 200, "the pseudonymiser should accept most of the test data"

    def errors_of(pair: tuple[Path, Path]) -> tuple[set[str], set[str]]:
        return dciodvfy_errors(dciodvfy, pair[0]), dciodvfy_errors(dciodvfy, pair[1])

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        checked = list(pool.map(errors_of, pairs))
    # dciodvfy cannot read some inputs (deflated transfer syntax): its messages about them are
    # noise from a misread stream, so they are not compared.
    compared = [
        (source, input_errors, output_errors)
        for (source, _), (input_errors, output_errors) in zip(pairs, checked, strict=True)
        if UNREADABLE not in input_errors
    ]
    assert len(compared) >= len(pairs) - 5
    introduced = {
        source.name: sorted(output_errors - input_errors)
        for source, input_errors, output_errors in compared
        if output_errors - input_errors
    }
    count = sum(len(errors) for errors in introduced.values())
    assert not introduced, f"{count} new errors in {len(introduced)} of {len(compared)} outputs"
