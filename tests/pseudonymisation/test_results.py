"""Tests for the per-file result records."""

from __future__ import annotations

import json
from dataclasses import asdict

from airflow_pseudo.pseudonymisation.results import FileResult, ValidationResult


def test_records_are_what_asdict_gives_with_their_containers_copied():
    """to_dict equals dataclasses.asdict (the reference), and changing it leaves the record."""
    file = FileResult(
        "in.dcm", "out.dcm", changes={"replaced": 3}, method_codes=["113100"], seconds=0.25
    )
    check = ValidationResult("in.dcm", "out.dcm", "failed", problems=["a name of the original"])
    for record in (file, check):
        record_dict = record.to_dict()
        assert record_dict == asdict(record)
        assert json.loads(json.dumps(record_dict)) == record_dict
    record_dict = file.to_dict()
    record_dict["changes"]["replaced"] = 0
    record_dict["method_codes"].append("113101")
    assert file.changes == {"replaced": 3} and file.method_codes == ["113100"]
    assert FileResult.from_dict(file.to_dict()) == file
