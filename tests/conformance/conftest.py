"""Inputs for the conformance tests: every DICOM file of pydicom's test data and of deid-data."""

from __future__ import annotations

from pathlib import Path

import deid_data
import pytest
from pydicom.data import get_testdata_files

from airflow_pseudo.pseudonymisation import PseudonymKey

KEY = PseudonymKey(b"airflow-pseudo conformance test key, not for production")


@pytest.fixture(scope="session")
def corpus() -> list[Path]:
    """pydicom's bundled and pydicom-data files, and deid-data's DICOM files, sorted."""
    deid = Path(deid_data.__file__).parent / "data"
    files = [Path(name) for name in get_testdata_files()] + sorted(deid.rglob("*.dcm"))
    return sorted({path for path in files if path.is_file()})
