"""Tests for PublishOperator: copy, manifest, Asset event extra, idempotency and archiving."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import Asset, ObjectStoragePath

from airflow_pseudo.operators.pseudonymise import PseudonymiseOperator
from airflow_pseudo.operators.publish import PublishOperator
from airflow_pseudo.operators.validate import ValidateOperator
from airflow_pseudo.testing import write_corpus

ASSET = Asset(name="dicom_pseudonymised_test")


class _Event:
    extra: dict[str, Any] = {}


class OutletEvents(dict):
    """Stands in for the context's ``outlet_events`` accessor: one event object per asset."""

    def __missing__(self, key: Any) -> _Event:
        self[key] = event = _Event()
        return event


@pytest.fixture
def run(tmp_path: Path, pseudo_conn: str) -> dict[str, Any]:
    """Pseudonymise and validate a small corpus with one bad file, like the DAG does."""
    staging = tmp_path / "staging"
    write_corpus(staging, patients=2, series_per_study=1, instances_per_series=2)
    (staging / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    pseudo = PseudonymiseOperator(
        task_id="p",
        input_path=str(staging),
        output_dir=str(tmp_path / "out"),
        quarantine_dir=str(tmp_path / "q"),
        max_failed_files=1,
    ).execute({})  # type: ignore[arg-type]
    valid = ValidateOperator(task_id="v", results=pseudo).execute({})  # type: ignore[arg-type]
    return {"pseudo": pseudo, "valid": valid, "staging": staging}


def _publish(tmp_path: Path, run: dict[str, Any], **kwargs: Any) -> PublishOperator:
    kwargs.setdefault("destination", str(tmp_path / "published"))
    return PublishOperator(
        task_id="publish",
        results=run["valid"],
        pseudonymise_results=run["pseudo"],
        output_root=str(tmp_path / "out"),
        input_root=str(run["staging"]),
        outlets=[ASSET],
        **kwargs,
    )


def _manifest(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_publishes_files_and_manifest(tmp_path: Path, run: dict[str, Any]):
    """Validated outputs are copied keeping their layout; the manifest has one line per input."""
    outlet_events = OutletEvents()
    result = _publish(tmp_path, run).execute(
        {"outlet_events": outlet_events, "run_id": "r1"}  # type: ignore[typeddict-item]
    )
    published = tmp_path / "published"
    lines = _manifest(published / "manifest.jsonl")
    ok_outputs = [Path(r["output"]) for r in run["valid"] if r["status"] == "ok"]
    digests = {e["published"]: e["sha256"] for e in lines[:-1] if e["sha256"]}
    for output in ok_outputs:
        copy = published / output.relative_to(tmp_path / "out")
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == digests[f"file://{copy}"]

    files, summary = lines[:-1], lines[-1]
    assert len(files) == 5
    assert summary["record"] == "summary"
    assert summary["published"] == 4
    assert summary["quarantined"] == 1
    assert summary["run_id"] == "r1"
    (bad,) = [f for f in files if f["status"] == "quarantined"]
    assert bad["source"].endswith("broken.dcm")
    assert bad["reason"]
    assert bad["published"] is None
    assert all(f["sha256"] and f["published"].startswith("file://") for f in files if f is not bad)
    digests = {f["profile_digest"] for f in files if f is not bad}
    assert {f["profile"] for f in files if f is not bad} == {"default"}
    assert len(digests) == 1 and len(digests.pop()) == 16

    assert result["published"] == 4
    assert outlet_events[ASSET].extra == {k: result[k] for k in outlet_events[ASSET].extra}
    assert outlet_events[ASSET].extra["quarantined"] == 1


def test_work_outputs_deleted_after_publishing_by_default(tmp_path: Path, run: dict[str, Any]):
    """Published outputs are not stored twice: the work copies and their folders go."""
    outputs = [Path(r["output"]) for r in run["valid"] if r["status"] == "ok"]
    assert all(o.is_file() for o in outputs)
    _publish(tmp_path, run).execute({})  # type: ignore[arg-type]
    assert not any(o.exists() for o in outputs)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(list((tmp_path / "published").rglob("*.dcm"))) == len(outputs)


@pytest.mark.parametrize("flag", [True, "true"])
def test_keep_outputs_keeps_work_outputs(tmp_path: Path, run: dict[str, Any], flag: Any):
    """keep_outputs (also as a rendered template string) keeps the work copies."""
    outputs = [Path(r["output"]) for r in run["valid"] if r["status"] == "ok"]
    _publish(tmp_path, run, keep_outputs=flag).execute({})  # type: ignore[arg-type]
    assert all(o.is_file() for o in outputs)


def test_published_files_stand_alone_readable_as_a_copy_would_be(
    tmp_path: Path, run: dict[str, Any]
):
    """Published files get the umask's mode (work outputs are owner-only) and one name each."""
    outputs = [Path(r["output"]) for r in run["valid"] if r["status"] == "ok"]
    assert {stat.S_IMODE(o.stat().st_mode) for o in outputs} == {0o600}
    umask = os.umask(0o027)
    try:
        _publish(tmp_path, run).execute({})  # type: ignore[arg-type]
    finally:
        os.umask(umask)
    published = list((tmp_path / "published").rglob("*.dcm"))
    assert len(published) == len(outputs)
    assert {stat.S_IMODE(p.stat().st_mode) for p in published} == {0o640}
    assert {p.stat().st_nlink for p in published} == {1}


def test_kept_work_outputs_are_separate_copies(tmp_path: Path, run: dict[str, Any]):
    """With keep_outputs, changing a work output leaves its published copy as it was."""
    outputs = [Path(r["output"]) for r in run["valid"] if r["status"] == "ok"]
    _publish(tmp_path, run, keep_outputs=True).execute({})  # type: ignore[arg-type]
    published = tmp_path / "published" / outputs[0].relative_to(tmp_path / "out")
    before = published.read_bytes()
    outputs[0].write_bytes(b"changed")
    assert published.read_bytes() == before
    assert not list((tmp_path / "published").rglob(".*.publishing"))


def test_retry_after_outputs_deleted_checks_published_copies(tmp_path: Path, run: dict[str, Any]):
    """A retry after retention finds the copies unchanged; a damaged one fails, never silently."""
    _publish(tmp_path, run).execute({})  # type: ignore[arg-type]
    again = _publish(tmp_path, run).execute({})  # type: ignore[arg-type]
    assert again["unchanged"] == 4
    entry = next(e for e in _manifest(tmp_path / "published" / "manifest.jsonl") if e.get("sha256"))
    Path(entry["published"].removeprefix("file://")).write_bytes(b"damaged")
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="differs from what an earlier try published"):
        _publish(tmp_path, run).execute({})  # type: ignore[arg-type]


def test_retry_is_idempotent(tmp_path: Path, run: dict[str, Any]):
    """Publishing again copies nothing: identical files are reported unchanged."""
    _publish(tmp_path, run).execute({})  # type: ignore[arg-type]
    result = _publish(tmp_path, run).execute({})  # type: ignore[arg-type]
    assert result["published"] == 0
    assert result["unchanged"] == 4


def test_changed_destination_file_is_replaced(tmp_path: Path, run: dict[str, Any]):
    """A destination file with other content (e.g. a partial copy) is overwritten."""
    _publish(tmp_path, run, keep_outputs=True).execute({})  # type: ignore[arg-type]
    entry = next(e for e in _manifest(tmp_path / "published" / "manifest.jsonl") if e.get("sha256"))
    target = ObjectStoragePath(entry["published"])
    with target.open("wb") as handle:
        handle.write(b"partial")
    result = _publish(tmp_path, run, keep_outputs=True).execute({})  # type: ignore[arg-type]
    assert result["published"] == 1
    assert target.stat().st_size == entry["size"]


def test_archives_inputs_after_publishing(tmp_path: Path, run: dict[str, Any]):
    """Inputs (including the quarantined one) move to the archive keeping relative paths."""
    sources = [Path(r["source"]) for r in run["pseudo"]]
    result = _publish(tmp_path, run, archive_dir=str(tmp_path / "archive")).execute({})  # type: ignore[arg-type]
    assert result["archived"] == 5
    for source in sources:
        assert not source.exists()
        assert (tmp_path / "archive" / source.relative_to(run["staging"])).is_file()
    # A retry finds them archived already.
    again = _publish(tmp_path, run, archive_dir=str(tmp_path / "archive")).execute({})  # type: ignore[arg-type]
    assert again["archived"] == 5


def test_claims_mapping_is_archived_with_the_inputs(tmp_path: Path, run: dict[str, Any]):
    """Ingest's claims.jsonl (neutral name → original path) goes to the archive too."""
    (run["staging"] / "claims.jsonl").write_text('{"claimed": "000001.dcm", "original": "a.dcm"}\n')
    _publish(tmp_path, run, archive_dir=str(tmp_path / "archive")).execute({})  # type: ignore[arg-type]
    assert (tmp_path / "archive" / "claims.jsonl").read_text().startswith('{"claimed"')


def test_delete_inputs(tmp_path: Path, run: dict[str, Any]):
    """With delete_inputs the processed inputs are removed instead of archived."""
    _publish(tmp_path, run, delete_inputs=True).execute({})  # type: ignore[arg-type]
    assert not any(Path(r["source"]).exists() for r in run["pseudo"])


def test_inputs_stay_without_archive_option(tmp_path: Path, run: dict[str, Any]):
    """Without archive_dir or delete_inputs, inputs are left alone."""
    _publish(tmp_path, run).execute({})  # type: ignore[arg-type]
    assert all(Path(r["source"]).exists() for r in run["pseudo"])


def test_object_storage_destination(tmp_path: Path, run: dict[str, Any]):
    """The destination may be an ObjectStoragePath."""
    destination = ObjectStoragePath(f"file://{tmp_path}/osp")
    _publish(tmp_path, run, destination=destination).execute({})  # type: ignore[arg-type]
    assert (tmp_path / "osp" / "manifest.jsonl").is_file()


def test_nothing_archived_when_publish_fails(tmp_path: Path, run: dict[str, Any]):
    """If a validated output vanished, publishing fails and no input is archived."""
    Path(next(r["output"] for r in run["valid"] if r["status"] == "ok")).unlink()
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="missing"):
        _publish(tmp_path, run, archive_dir=str(tmp_path / "archive")).execute({})  # type: ignore[arg-type]
    assert all(Path(r["source"]).exists() for r in run["pseudo"])


def test_writes_the_run_report_beside_the_manifest(
    tmp_path: Path, run: dict[str, Any], key_bytes: bytes
):
    """report.json and report.html hold the counts, a row per file and the key id, no name."""
    from airflow_pseudo.pseudonymisation import PseudonymKey
    from airflow_pseudo.testing import FakePatient

    outlet_events = OutletEvents()
    result = _publish(tmp_path, run).execute(
        {"outlet_events": outlet_events, "run_id": "r1"}  # type: ignore[typeddict-item]
    )
    published = tmp_path / "published"
    report = json.loads((published / "report.json").read_text())
    assert report["counts"] == {
        "files": 5, "published": 4, "unchanged": 0, "failed": 0, "skipped": 0, "quarantined": 1,
    }  # fmt: skip
    assert sorted(row["status"] for row in report["files"]) == ["published"] * 4 + ["quarantined"]
    assert report["key_id"] == PseudonymKey.from_text(key_bytes.decode()).key_id
    assert report["run"]["run_id"] == "r1"
    assert len(report["quarantine_reasons"]) == 1
    assert result["report"] == str(ObjectStoragePath(f"file://{published}/report.html"))
    assert outlet_events[ASSET].extra["report"] == result["report"]

    html = (published / "report.html").read_text()
    originals = [Path(r["source"]) for r in run["pseudo"]]
    forbidden = {p.name for p in originals} | {p.stem for p in originals} | {str(run["staging"])}
    forbidden |= {v for n in (1, 2) for v in FakePatient.for_number(n).planted_values()}
    for text in (html, json.dumps(report)):
        leaked = sorted(value for value in forbidden if value in text)
        assert leaked == []


def test_report_shows_the_seconds_each_file_took(tmp_path: Path, run: dict[str, Any]):
    """The per-file time column holds what the pseudonymise records measured, per row."""
    from html.parser import HTMLParser

    _publish(tmp_path, run).execute({})  # type: ignore[arg-type]
    report = json.loads((tmp_path / "published" / "report.json").read_text())
    measured = sorted(r["seconds"] for r in run["pseudo"])
    assert all(isinstance(s, float) for s in measured)
    assert sorted(row["seconds"] for row in report["files"]) == measured

    class LastCells(HTMLParser):
        """The text of the last cell (Seconds) of each file row."""

        def __init__(self) -> None:
            super().__init__()
            self.cells: list[str] = []
            self.in_file_row = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "tr":
                self.in_file_row = dict(attrs).get("class") == "file"
            elif tag == "td" and self.in_file_row:
                self.cells.append("")

        def handle_data(self, data: str) -> None:
            if self.in_file_row and self.cells:
                self.cells[-1] += data

    parser = LastCells()
    parser.feed((tmp_path / "published" / "report.html").read_text())
    seconds = parser.cells[6::7]  # seven columns: #, name, status, reason, changes, engine, time
    assert sorted(float(s) for s in seconds) == measured


def test_report_without_a_connection_has_no_key_id(tmp_path: Path, run: dict[str, Any]):
    _publish(tmp_path, run, pseudo_conn_id=None).execute({})  # type: ignore[arg-type]
    assert json.loads((tmp_path / "published" / "report.json").read_text())["key_id"] is None


def test_manifest_records_size_and_digest_of_files_larger_than_one_read(tmp_path: Path):
    """An output bigger than publish's read size (1 MiB) is hashed whole, as sha256 sees it."""
    data = os.urandom(2 * 1024 * 1024 + 12345)
    output = tmp_path / "out" / "big.dcm"
    output.parent.mkdir()
    output.write_bytes(data)
    source = tmp_path / "staging" / "000001.dcm"
    source.parent.mkdir()
    source.write_bytes(b"the original")
    record = {"source": str(source), "output": str(output), "status": "ok", "problems": []}
    PublishOperator(
        task_id="publish",
        results=[record],
        destination=str(tmp_path / "published"),
        output_root=str(output.parent),
        input_root=str(source.parent),
        pseudo_conn_id=None,
    ).execute({})  # type: ignore[arg-type]
    entry = _manifest(tmp_path / "published" / "manifest.jsonl")[0]
    assert entry["size"] == len(data)
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "published" / "big.dcm").read_bytes() == data
