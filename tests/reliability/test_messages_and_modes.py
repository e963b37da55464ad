"""What the run prints and leaves behind: no value from pydicom's warnings, names escaped, and
files holding originals or original names readable by their owner only."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from airflow_pseudo.pseudonymisation import PseudonymKey, Settings, pseudonymise_directory
from airflow_pseudo.pseudonymisation.logs import printable, without_values
from airflow_pseudo.testing import make_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the tests plant such values
WORKTREE = Path(__file__).resolve().parents[2]
# A UID with a leading-zero component, as some vendors write them: pydicom warns, quoting it.
PLANTED_UID = "1.2.826.0.1.3680043.10.0999.042"


def _with_planted_uid(path: Path) -> None:
    dataset = make_instance("ct")
    dataset.FrameOfReferenceUID = PLANTED_UID
    dataset.StudyInstanceUID = PLANTED_UID + ".1"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)


@pytest.mark.parametrize("engine", ["auto", "reference"])
def test_a_pydicom_warning_never_carries_the_value(
    tmp_path: Path, key_bytes: bytes, caplog: pytest.LogCaptureFixture, engine: str
):
    """In process (every logger at DEBUG) and through the CLI (stderr): the UID never appears."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    _with_planted_uid(incoming / "a.dcm")
    settings = Settings(key=PseudonymKey(key_bytes), engine=engine)
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # pydicom's warnings while the test wrote its input are not the run's
    results = pseudonymise_directory(incoming, tmp_path / "out", settings=settings)
    assert [r.status for r in results] == ["ok"]
    assert "0999" not in caplog.text
    assert any("value withheld" in record.getMessage() for record in caplog.records), (
        "pydicom did not warn: the test no longer plants a value pydicom quotes"
    )
    key_file = tmp_path / "project.key"
    key_file.write_bytes(key_bytes)
    run = subprocess.run(
        [sys.executable, "-W", "always", "-m", "airflow_pseudo.cli", "pseudonymise",
         str(incoming), "-o", str(tmp_path / "cli-out"), "--key-file", str(key_file)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(WORKTREE)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "0999" not in run.stderr + run.stdout


def test_without_values_keeps_tags_vrs_and_keywords_only():
    """Quoted values, numbers and free text after the opening words are dropped."""
    message = "Invalid value for VR UI: '1.2.03.4' in (0020,000D) StudyInstanceUID Doe^John"
    cleaned = without_values(message)
    assert cleaned == (
        "Invalid value for VR UI [(0020,000D) StudyInstanceUID, VR UI, StudyInstanceUID]"
        " (value withheld)"
    )
    assert (
        without_values("The value Doe^John is invalid") == "The value is invalid (value withheld)"
    )


def test_names_with_control_characters_are_escaped_on_the_console(tmp_path: Path, key_bytes: bytes):
    """A newline or an ANSI escape in a file name cannot forge console lines."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    evil = "x\nfailed: forged line\x1b[2J.dcm"
    (incoming / evil).write_bytes(b"\0" * 300)  # named .dcm, not DICOM: a failed record
    key_file = tmp_path / "project.key"
    key_file.write_bytes(key_bytes)
    run = subprocess.run(
        [sys.executable, "-m", "airflow_pseudo.cli", "pseudonymise", str(incoming),
         "-o", str(tmp_path / "out"), "--key-file", str(key_file)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(WORKTREE)},
    )  # fmt: skip
    assert run.returncode == 1
    assert "\x1b" not in run.stdout
    assert not [line for line in run.stdout.splitlines() if line.startswith("failed: forged")]
    assert printable(evil) in run.stdout
    assert printable(evil) == "x\\nfailed: forged line\\x1b[2J.dcm"


def test_quarantine_and_results_are_private(tmp_path: Path, key_bytes: bytes):
    """Quarantined originals 0600 in a 0700 folder; the results file 0600; whatever the umask."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    pydicom.dcmwrite(incoming / "good.dcm", make_instance("ct"), enforce_file_format=True)
    (incoming / "bad.dcm").write_bytes((incoming / "good.dcm").read_bytes()[:-300])
    key_file = tmp_path / "project.key"
    key_file.write_bytes(key_bytes)
    results = tmp_path / "results.jsonl"
    results.write_text("")
    results.chmod(0o644)  # an existing file is made private too
    run = subprocess.run(
        [sys.executable, "-c", "import os, sys; os.umask(0o022); from airflow_pseudo.cli import "
         "main; sys.exit(main(sys.argv[1:]))", "pseudonymise", str(incoming),
         "-o", str(tmp_path / "out"), "--key-file", str(key_file), "--results", str(results)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(WORKTREE)},
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    quarantine = tmp_path / "out-quarantine"
    assert quarantine.stat().st_mode & 0o777 == 0o700
    kept = sorted(quarantine.iterdir())
    assert [p.suffix for p in kept] == [".dcm", ".json"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in kept)
    assert results.stat().st_mode & 0o777 == 0o600
    assert [json.loads(line)["status"] for line in results.read_text().splitlines()] == [
        "failed",
        "ok",
    ]
