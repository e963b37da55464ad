"""Tests for the run report's content: counts, neutral names, reasons, profile, steps."""

from __future__ import annotations

import json
from pathlib import Path

from airflow_pseudo import __version__
from airflow_pseudo.report import REPORT_HTML, REPORT_JSON, build_report, write_report
from airflow_pseudo.report.model import (
    files_by_batch,
    neutral_name,
    scrub,
    steps_with_files,
)

SOURCE = "/data/incoming/Doe^Jane 1970/CT head.dcm"
UID_OUTPUT = "/out/2.25.1/2.25.2/2.25.3.dcm"


def _files() -> list[dict]:
    return [
        {
            "source": SOURCE,
            "output": UID_OUTPUT,
            "status": "published",
            "changes": {"replaced": 12, "removed": 0},
            "engine": "fast",
            "seconds": 0.0123,
            "profile": "default",
            "profile_digest": "0123456789abcdef",
            "method_codes": ["113100", "113107"],
        },
        {
            "source": "/data/incoming/Doe^Jane 1970/scan.dcm",
            "output": None,
            "status": "quarantined",
            "reason": "InvalidDicomError: cannot read /data/incoming/Doe^Jane 1970/scan.dcm",
        },
        {
            "source": "/data/incoming/mirror/Smith_John.dcm",
            "output": "/out/mirror/Smith_John.dcm",
            "status": "quarantined",
            "problems": ["PatientName: identifying value of the original"],
        },
    ]


def test_counts_rows_and_tool():
    report = build_report(_files(), counts={"published": 1, "quarantined": 2})
    assert report["counts"] == {"files": 3, "published": 1, "quarantined": 2}
    assert [row["status"] for row in report["files"]] == ["published", "quarantined"] * 1 + [
        "quarantined"
    ]
    assert report["tool"] == {"name": "airflow-pseudo", "version": __version__}
    assert report["files"][0]["changes"] == {"replaced": 12, "removed": 0}
    assert report["files"][0]["engine"] == "fast"
    assert report["files"][0]["seconds"] == 0.0123


def test_names_are_neutral_and_originals_are_gone():
    """UID-named outputs keep their name; anything else becomes an index; reasons lose paths."""
    report = build_report(_files(), counts={})
    assert [row["name"] for row in report["files"]] == ["2.25.3.dcm", "file-00002", "file-00003"]
    text = json.dumps(report)
    for original in ("Doe^Jane", "CT head", "scan", "Smith_John", "/data/incoming"):
        assert original not in text
    assert report["files"][1]["reason"] == "InvalidDicomError: cannot read <input>"


def test_quarantine_reasons_are_counted():
    files = _files() + [dict(_files()[1], source="/x/other-name.dcm", reason="not DICOM")] * 2
    report = build_report(files, counts={})
    assert report["quarantine_reasons"] == [
        {"reason": "InvalidDicomError: cannot read <input>", "files": 1},
        {"reason": "PatientName: identifying value of the original", "files": 1},
        {"reason": "not DICOM", "files": 2},
    ]


def test_profile_from_records_with_method_meanings():
    profile = build_report(_files(), counts={})["profile"]
    assert profile["name"] == "default"
    assert profile["digest"] == "0123456789abcdef"
    assert profile["method_codes"] == ["113100", "113107"]
    assert profile["options"] == [
        "Basic Application Confidentiality Profile",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ]


def test_records_without_profile_fields_are_tolerated():
    files = [{"source": "/a/b.dcm", "output": UID_OUTPUT, "status": "published"}]
    report = build_report(files, counts={"published": 1}, key_id="k1")
    assert report["profile"] is None
    assert report["key_id"] == "k1"


def test_neutral_name():
    assert neutral_name("/o/1.2.840.1.dcm", 4) == "1.2.840.1.dcm"
    assert neutral_name("/o/John.dcm", 4) == "file-00004"
    assert neutral_name(None, 12) == "file-00012"


def test_scrub_removes_every_part_of_the_path():
    assert scrub("bad header in /in/Jane/x-ray.dcm (x-ray)", "/in/Jane/x-ray.dcm") == (
        "bad header in <input> (<input>)"
    )
    assert scrub(None, "/a") is None


def test_steps_join_durations_with_batches():
    """A mapped task's output is a list of lists in map-index order: files per task follow."""
    handled = {
        **files_by_batch("PseudonymiseOperator", [[{"a": 1}] * 4, [{"a": 1}] * 2]),
        **files_by_batch("ValidateOperator", [{"a": 1}] * 6),
    }
    crumbs = [
        {"task_id": "pseudonymise", "map_index": 1, "operator": "PseudonymiseOperator",
         "state": "success", "duration": 1.0},
        {"task_id": "pseudonymise", "map_index": 0, "operator": "PseudonymiseOperator",
         "state": "success", "duration": 2.0},
        {"task_id": "validate", "map_index": -1, "operator": "ValidateOperator",
         "state": "success", "duration": 3.0},
        {"task_id": "publish", "map_index": -1, "operator": "PublishOperator",
         "state": "running", "duration": None},
    ]  # fmt: skip
    steps = build_report([], counts={}, steps=steps_with_files(crumbs, handled))["steps"]
    rates = {(s["task_id"], s["map_index"]): s["files_per_second"] for s in steps}
    assert rates == {
        ("pseudonymise", 0): 2.0,
        ("pseudonymise", 1): 2.0,
        ("publish", -1): None,
        ("validate", -1): 2.0,
    }


def test_write_report(tmp_path: Path):
    report = build_report(_files(), counts={"published": 1})
    json_path, html_path = write_report(report, tmp_path)
    assert (json_path, html_path) == (tmp_path / REPORT_JSON, tmp_path / REPORT_HTML)
    assert json.loads(json_path.read_text())["counts"]["published"] == 1
    assert html_path.read_text().startswith("<!DOCTYPE html>")


def test_files_left_for_the_next_run_are_a_number():
    """A run capped at max_files says how many settled files wait, as a count (never names)."""
    assert build_report(_files(), counts={}, left_for_next_run=7)["left_for_next_run"] == 7
    assert build_report(_files(), counts={})["left_for_next_run"] is None
