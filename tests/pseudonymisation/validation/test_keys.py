"""Tests for key consistency: the right key passes, another fails, none is said to be skipped."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest

from airflow_pseudo.pseudonymisation import PseudonymKey, Settings
from airflow_pseudo.pseudonymisation.validation import validate_output
from airflow_pseudo.testing import make_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def pair(tmp_path: Path, settings: Settings) -> tuple[Path, Path]:
    original = make_instance("rtplan", patient=4)
    paths = tmp_path / "original.dcm", tmp_path / "output.dcm"
    pydicom.dcmwrite(paths[0], original, enforce_file_format=True)
    output = settings.pseudonymiser.pseudonymise_dataset(original)[0]
    pydicom.dcmwrite(paths[1], output, enforce_file_format=True)
    return paths


def test_the_right_key_passes(pair: tuple[Path, Path], settings: Settings):
    verdict = validate_output(*pair, settings=settings)
    assert verdict.problems == []
    assert verdict.key_checks == "passed"


def test_another_key_fails_on_every_anchor(pair: tuple[Path, Path], other_key: PseudonymKey):
    verdict = validate_output(*pair, settings=Settings(key=other_key))
    assert verdict.key_checks == "failed"
    for keyword in (
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "StudyDate",
    ):
        assert f"{keyword} is not the pseudonym the key gives the original's" in verdict.problems


def test_without_a_key_only_the_key_free_checks_run(pair: tuple[Path, Path], settings: Settings):
    keyless = dataclasses.replace(settings, key=None)
    verdict = validate_output(*pair, settings=keyless)
    assert verdict.problems == []
    assert verdict.key_checks == "skipped"


def test_a_restored_original_date_fails_the_key_checks(tmp_path: Path, settings: Settings):
    """A date left unshifted is not what the key gives: the date shift anchor catches it."""
    original = make_instance("ct", patient=5)
    output = settings.pseudonymiser.pseudonymise_dataset(original)[0]
    output.StudyDate = original.StudyDate
    paths = tmp_path / "original.dcm", tmp_path / "output.dcm"
    pydicom.dcmwrite(paths[0], original, enforce_file_format=True)
    pydicom.dcmwrite(paths[1], output, enforce_file_format=True)
    verdict = validate_output(*paths, settings=settings)
    assert verdict.problems == ["StudyDate is not the pseudonym the key gives the original's"]
    assert verdict.key_checks == "failed"
