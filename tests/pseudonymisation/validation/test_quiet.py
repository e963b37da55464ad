"""Tests for reading without leaking: no pydicom warning or log record carries a value."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pydicom
import pytest

from airflow_pseudo.pseudonymisation import Settings
from airflow_pseudo.pseudonymisation.validation import validate_output
from airflow_pseudo.pseudonymisation.validation.quiet import quiet_pydicom
from airflow_pseudo.testing import make_instance

INVALID_UID = "1.2.03.424242"


def test_pydicom_warnings_while_validating_name_no_value(
    tmp_path: Path, settings: Settings, caplog: pytest.LogCaptureFixture
):
    """An original whose UID pydicom finds invalid: the validator's reading of it warns
    nothing with the value; one line says how many problems pydicom reported."""
    original = make_instance("ct", patient=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original.SOPInstanceUID = INVALID_UID
        original.file_meta.MediaStorageSOPInstanceUID = INVALID_UID
        output = settings.pseudonymiser.pseudonymise_dataset(original)[0]
        paths = tmp_path / "original.dcm", tmp_path / "output.dcm"
        pydicom.dcmwrite(paths[0], original, enforce_file_format=True)
        pydicom.dcmwrite(paths[1], output, enforce_file_format=True)
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # pydicom logged the value while the test made the files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verdict = validate_output(*paths, settings=settings)
    assert verdict.problems == []
    texts = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not any(INVALID_UID in text for text in texts), texts
    assert any("pydicom reported" in text and "values withheld" in text for text in texts)


def test_quiet_pydicom_swallows_warnings_and_log_records(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_pydicom("output"):
            warnings.warn("Invalid value 'Secret^Name'", UserWarning, stacklevel=1)
            logging.getLogger("pydicom").warning("value 'Secret^Name' is too long")
    assert caught == []
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "pydicom reported 2 problem(s) while the validator read the output (values withheld)"
    ]


def test_nested_quiet_pydicom_reports_once_from_the_outermost(caplog: pytest.LogCaptureFixture):
    """A batch's chunk captures for every read inside it: one line, counting them all."""
    caplog.set_level(logging.DEBUG)
    with quiet_pydicom("originals and outputs"):
        for _ in range(3):
            with quiet_pydicom("output"):
                warnings.warn("Invalid value 'Secret^Name'", UserWarning, stacklevel=1)
    with quiet_pydicom("output"):  # the outer block has ended: this one captures again
        logging.getLogger("pydicom").warning("value 'Secret^Name' is too long")
    assert [r.getMessage() for r in caplog.records] == [
        "pydicom reported 3 problem(s) while the validator read the originals and outputs "
        "(values withheld)",
        "pydicom reported 1 problem(s) while the validator read the output (values withheld)",
    ]


def test_batch_validation_names_no_value(
    tmp_path: Path, settings: Settings, caplog: pytest.LogCaptureFixture
):
    """Validating a batch whose original pydicom warns about: no value in any warning or log."""
    from airflow_pseudo.pseudonymisation.io.batch import pseudonymise_files, validate_results

    original = make_instance("ct", patient=1)
    (tmp_path / "in").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original.SOPInstanceUID = INVALID_UID
        original.file_meta.MediaStorageSOPInstanceUID = INVALID_UID
        pydicom.dcmwrite(tmp_path / "in" / "original.dcm", original, enforce_file_format=True)
        results = pseudonymise_files([tmp_path / "in" / "original.dcm"], tmp_path / "out",
                                     settings=settings)  # fmt: skip
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verdicts = validate_results(results, settings=settings)
    assert [v.status for v in verdicts] == ["ok"]
    texts = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not any(INVALID_UID in text for text in texts), texts
    assert any("pydicom reported" in text and "values withheld" in text for text in texts)
