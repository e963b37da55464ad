"""Tests for pydicom's messages re-emitted without values, and for printable names."""

from __future__ import annotations

import logging
import warnings

import pytest

from airflow_pseudo.pseudonymisation.logs import (
    install,
    printable,
    pydicom_messages_by_tag,
    without_values,
)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "Invalid value for VR UI: '1.2.03.4'. Please see <https://dicom.nema.org/x>",
            "Invalid value for VR UI [VR UI] (value withheld)",
        ),
        (
            "Unknown encoding 'ISO 2022 IR 999' - using default encoding instead",
            "Unknown encoding (value withheld)",
        ),
        ("The value Doe^John is invalid", "The value is invalid (value withheld)"),
        (
            "Value of (0010,0010) PatientName exceeds 64 characters",
            "Value of [(0010,0010) PatientName, PatientName] (value withheld)",
        ),
        ("'Doe^John'", "a problem (value withheld)"),
    ],
)
def test_without_values(message: str, expected: str):
    assert without_values(message) == expected


def test_warnings_in_the_block_are_logged_once_without_values(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    with pydicom_messages_by_tag():
        for _ in range(3):
            warnings.warn("Invalid value for VR PN: 'Doe^John'", UserWarning, stacklevel=1)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["pydicom: Invalid value for VR PN [VR PN] (value withheld)"]


def test_pydicom_logger_records_are_rewritten(caplog: pytest.LogCaptureFixture):
    install()
    caplog.set_level(logging.DEBUG, logger="pydicom")
    logging.getLogger("pydicom").debug("Reading element %s value %r", "(0010,0010)", "Doe^John")
    assert "Doe" not in caplog.text
    assert "(0010,0010) PatientName" in caplog.text


def test_printable_escapes_control_characters_only():
    assert printable("Müller/scan 1.dcm") == "Müller/scan 1.dcm"
    assert printable("a\nb\x1b[31mc\td") == "a\\nb\\x1b[31mc\\td"


def test_nested_blocks_log_once_from_the_outermost(caplog: pytest.LogCaptureFixture):
    """A chunk's block gathers what the reads inside it catch: one line per message."""
    caplog.set_level(logging.DEBUG)
    with pydicom_messages_by_tag():
        for _ in range(3):
            with pydicom_messages_by_tag():
                warnings.warn("Invalid value for VR PN: 'Doe^John'", UserWarning, stacklevel=1)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["pydicom: Invalid value for VR PN [VR PN] (value withheld)"]
