"""Tests for the release checks: markers naming the profile used, private elements, values."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation import Settings, validate_results
from airflow_pseudo.pseudonymisation.validation import validate_output
from airflow_pseudo.testing import make_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DIGEST = "0123456789abcdef"


def _write(tmp_path: Path, settings: Settings, change=None) -> tuple[Path, Path]:
    original = make_instance("mr", patient=2)
    output = settings.pseudonymiser.pseudonymise_dataset(original)[0]
    if change is not None:
        change(output)
    paths = tmp_path / "original.dcm", tmp_path / "output.dcm"
    pydicom.dcmwrite(paths[0], original, enforce_file_format=True)
    pydicom.dcmwrite(paths[1], output, enforce_file_format=True)
    return paths


def _with_digest(output: Dataset) -> None:
    output.DeidentificationMethod = f"airflow-pseudo 0.1.0 keyed default {DIGEST}"


def test_the_marker_must_carry_the_digest_of_the_profile_used(tmp_path: Path, settings: Settings):
    paths = _write(tmp_path, settings, _with_digest)
    assert validate_output(*paths, settings=settings, profile_digest=DIGEST).problems == []
    other = validate_output(*paths, settings=settings, profile_digest="f" * 16)
    assert other.problems == ["DeidentificationMethod does not name the digest of the profile used"]
    # A record without the digest (written before profiles had one) is tolerated.
    assert validate_output(*paths, settings=settings).problems == []


def test_the_code_sequence_must_carry_the_record_s_method_codes(tmp_path: Path, settings: Settings):
    paths = _write(tmp_path, settings)
    codes = ["113100", "113107", "113108"]
    assert validate_output(*paths, settings=settings, method_codes=codes).problems == []
    problems = validate_output(*paths, settings=settings, method_codes=[*codes, "113105"]).problems
    assert problems == ["DeidentificationMethodCodeSequence lacks 113105"]


def test_records_carry_the_profile_fields_to_validation(tmp_path: Path, settings: Settings):
    """Record dictionaries with ``profile_digest`` and ``method_codes`` (contract 1) are read."""
    original, output = _write(tmp_path, settings, _with_digest)
    record = {"source": str(original), "output": str(output), "status": "ok"}
    (verdict,) = validate_results([{**record, "profile_digest": DIGEST}], settings=settings)
    assert verdict.status == "ok"
    (verdict,) = validate_results([{**record, "profile_digest": "e" * 16}], settings=settings)
    assert verdict.problems == [
        "DeidentificationMethod does not name the digest of the profile used"
    ]
    (verdict,) = validate_results(
        [{**record, "method_codes": ["113100", "113111"]}], settings=settings
    )
    assert verdict.problems == ["DeidentificationMethodCodeSequence lacks 113111"]


def _private(output: Dataset) -> None:
    output.private_block(0x0029, "SAFE VENDOR 1", create=True).add_new(0x01, "DS", "1.5")


def test_private_elements_only_with_the_retain_safe_private_option(
    tmp_path: Path, settings: Settings
):
    paths = _write(tmp_path, settings, _private)
    problems = validate_output(*paths, settings=settings).problems
    assert "private attribute private (0029,1001) [SAFE VENDOR 1] left in the output" in problems
    retained = ["113100", "113107", "113108", "113111"]

    def _private_with_code(output: Dataset) -> None:
        _private(output)
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator = "113111", "DCM"
        item.CodeMeaning = "Retain Safe Private Option"
        output.DeidentificationMethodCodeSequence.append(item)

    paths = _write(tmp_path, settings, _private_with_code)
    assert validate_output(*paths, settings=settings, method_codes=retained).problems == []


def test_only_values_the_tool_writes_are_checked_for_their_vr(tmp_path: Path, settings: Settings):
    """An invalid value the tool wrote is a problem; one it keeps from the original is not."""

    def _invalid(output: Dataset) -> None:
        output.PatientName = "A" * 65 + "^B"  # written by the tool: checked
        output.ImageType = ["lower case is invalid CS"]  # kept from the original: not checked

    problems = validate_output(*_write(tmp_path, settings, _invalid), settings=settings).problems
    assert problems == ["invalid PN value in PatientName"]


def test_a_private_element_inside_the_markers_is_found(tmp_path: Path, settings: Settings):
    """The marker sequence is walked apart from the scan: its private elements count too."""

    def _private_in_marker(output: Dataset) -> None:
        item = output.DeidentificationMethodCodeSequence[0]
        item.private_block(0x0031, "HIDDEN VENDOR", create=True).add_new(0x01, "LO", "note")

    paths = _write(tmp_path, settings, _private_in_marker)
    problems = validate_output(*paths, settings=settings).problems
    assert (
        "private attribute DeidentificationMethodCodeSequence > private (0031,1001) "
        "[HIDDEN VENDOR] left in the output"
    ) in problems
