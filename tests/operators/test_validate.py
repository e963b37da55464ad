"""Tests for ValidateOperator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_pseudo.operators.pseudonymise import PseudonymiseOperator
from airflow_pseudo.operators.validate import ValidateOperator
from airflow_pseudo.testing import write_corpus


class RecordingTI:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.fixture
def pseudonymised(tmp_path: Path, pseudo_conn: str) -> list[dict[str, Any]]:
    write_corpus(tmp_path / "in", patients=2, series_per_study=1, instances_per_series=1)
    (tmp_path / "in" / "readme.txt").write_text("not DICOM")
    op = PseudonymiseOperator(
        task_id="p", input_path=str(tmp_path / "in"), output_dir=str(tmp_path / "out")
    )
    return op.execute({})  # type: ignore[arg-type]


def _validate(records: Any, tmp_path: Path) -> ValidateOperator:
    return ValidateOperator(task_id="validate", results=records, quarantine_dir=str(tmp_path / "q"))


def test_all_outputs_pass(tmp_path: Path, pseudonymised: list[dict[str, Any]]):
    """Clean outputs validate ok; files not pseudonymised are passed through as skipped."""
    out = _validate(pseudonymised, tmp_path).execute({})  # type: ignore[arg-type]
    assert [r["source"] for r in out] == [r["source"] for r in pseudonymised]
    assert sorted(r["status"] for r in out) == ["ok", "ok", "skipped"]
    assert all(r["problems"] == [] for r in out if r["status"] == "ok")


def test_mapped_results_are_flattened(tmp_path: Path, pseudonymised: list[dict[str, Any]]):
    """A list of per-batch lists (a mapped upstream) is accepted."""
    batches = [pseudonymised[:1], pseudonymised[1:]]
    assert len(_validate(batches, tmp_path).execute({})) == 3  # type: ignore[arg-type]


def test_residual_identifier_fails_and_quarantines(
    tmp_path: Path, pseudonymised: list[dict[str, Any]]
):
    """An output that still holds the original patient name is quarantined and fails the task."""
    leaky = next(r for r in pseudonymised if r["status"] == "ok")
    original = pydicom.dcmread(leaky["source"])
    output = pydicom.dcmread(leaky["output"])
    output.PatientName = original.PatientName
    output.save_as(leaky["output"])
    ti = RecordingTI()

    with pytest.raises(AirflowFailException, match="1 of 3 output"):
        _validate(pseudonymised, tmp_path).execute({"ti": ti})  # type: ignore[arg-type,typeddict-item]

    records = ti.pushed["return_value"]
    (failed,) = [r for r in records if r["status"] == "failed"]
    assert failed["source"] == leaky["source"]
    assert failed["problems"]
    assert str(original.PatientName) not in " ".join(failed["problems"])
    assert not Path(leaky["output"]).exists()
    assert Path(failed["quarantine"]).is_file()
    assert Path(failed["quarantine"]).is_relative_to(tmp_path / "q")


def test_template_fields():
    assert "results" in ValidateOperator.template_fields
    assert "quarantine_dir" in ValidateOperator.template_fields
