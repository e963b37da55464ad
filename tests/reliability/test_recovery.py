"""Failed DAG runs recover by the procedures of ``docs/operations.md``; no file is stranded.

Each test makes a real ``dicom_pseudonymise`` run fail under ``dag.test()`` (a missing
connection, a missing folder, bad data, a task that cannot write, an output that fails
validation, a run that vanished), follows the documented procedure (set the connection and
trigger a new run, clear the run, trigger a new run that adopts the failed run's files) and then
checks the promise: every input is published exactly once, by whichever run, and nothing is left
in staging or in the incoming folder.

Re-running a run: ``dag.test(logical_date=..., run_after=...)`` of that run clears every task of
that run and runs it again under the same run id, as "Clear" on the whole run does in the UI; with
``mark_success_pattern`` the named tasks are marked successful instead of re-run, which leaves the
others cleared, as clearing one task "with downstream" does.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_pseudo.testing import write_corpus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("airflow_db"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

DAGS = Path(__file__).resolve().parents[2] / "dags"


def _dag(dag_id: str = "dicom_pseudonymise", **task_overrides: dict[str, Any]) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS)).dags[dag_id]
    for task_id, attrs in task_overrides.items():
        for name, value in attrs.items():
            setattr(dag.task_dict[task_id], name, value)
    return dag


def _conf(root: Path, **extra: Any) -> dict[str, Any]:
    return {
        "incoming_dir": str(root / "incoming"),
        "work_dir": str(root / "work"),
        "publish_dir": str(root / "published"),
        "archive_dir": str(root / "archive"),
        "settle_seconds": 30,
        **extra,
    }


def _inputs(root: Path, patients: int = 2) -> set[str]:
    """Write settled inputs; return their paths relative to the incoming folder."""
    files = write_corpus(root / "incoming", patients=patients, instances_per_series=1)
    stamp = time.time() - 3600
    for path in files:
        os.utime(path, (stamp, stamp))
    return {p.relative_to(root / "incoming").as_posix() for p in files}


def _bad_input(root: Path) -> str:
    path = root / "incoming" / "broken.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x40\x00" + b"1.2")
    stamp = time.time() - 3600
    os.utime(path, (stamp, stamp))
    return "broken.dcm"


def _states(dr: Any) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dr.get_task_instances()}


def _published_originals(root: Path) -> Counter[str]:
    """How many times each original input was published, over every run's manifest."""
    counts: Counter[str] = Counter()
    for manifest in sorted((root / "published").glob("*/manifest.jsonl")):
        run_id = manifest.parent.name
        claims_file = root / "archive" / run_id / "claims.jsonl"
        claims = {
            e["claimed"]: e["original"]
            for e in map(json.loads, claims_file.read_text().splitlines())
        }
        for entry in map(json.loads, manifest.read_text().splitlines()):
            if entry["record"] == "file" and entry["status"] == "published":
                counts[claims[Path(entry["source"]).name]] += 1
                assert Path(entry["published"].removeprefix("file://")).is_file()
    return counts


def _quarantined_originals(root: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for manifest in sorted((root / "published").glob("*/manifest.jsonl")):
        claims_file = root / "archive" / manifest.parent.name / "claims.jsonl"
        claims = {
            e["claimed"]: e["original"]
            for e in map(json.loads, claims_file.read_text().splitlines())
        }
        for entry in map(json.loads, manifest.read_text().splitlines()):
            if entry["record"] == "file" and entry["status"] == "quarantined":
                counts[claims[Path(entry["source"]).name]] += 1
    return counts


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _assert_recovered(root: Path, inputs: set[str], quarantined: set[str] = frozenset()) -> None:
    """Every good input published exactly once, bad ones quarantined once, nothing left over."""
    published = _published_originals(root)
    assert set(published) == inputs
    assert set(published.values()) == {1}, published
    assert _quarantined_originals(root) == Counter(quarantined)
    assert _files_under(root / "work" / "staging") == []
    assert _files_under(root / "incoming") == []
    # Work outputs are deleted once published (retention default); a failed run's stay.
    for manifest in (root / "published").glob("*/manifest.jsonl"):
        outputs = _files_under(root / "work" / "output" / manifest.parent.name)
        assert [p for p in outputs if p.suffix == ".dcm"] == []


def test_missing_connection_strands_nothing_then_a_new_run_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_bytes: bytes
):
    """Procedure "missing connection": create the connection, trigger a new run."""
    monkeypatch.delenv("AIRFLOW_CONN_PSEUDO_DEFAULT", raising=False)
    monkeypatch.delenv("AIRFLOW_PSEUDO_KEY", raising=False)
    inputs = _inputs(tmp_path)
    failed = _dag().test(run_conf=_conf(tmp_path))
    assert failed.state == "failed"
    assert _states(failed)["ingest"] == "failed"
    # Nothing was claimed: every file is still in the incoming folder.
    incoming = {
        p.relative_to(tmp_path / "incoming").as_posix() for p in _files_under(tmp_path / "incoming")
    }
    assert incoming == inputs
    assert _files_under(tmp_path / "work" / "staging") == []

    connection = {"conn_type": "pseudo", "password": key_bytes.decode()}
    monkeypatch.setenv("AIRFLOW_CONN_PSEUDO_DEFAULT", json.dumps(connection))
    again = _dag().test(run_conf=_conf(tmp_path))
    assert again.state == "success", _states(again)
    _assert_recovered(tmp_path, inputs)


@pytest.mark.usefixtures("pseudo_conn")
def test_missing_folder_fails_at_once_then_a_new_run_publishes(tmp_path: Path):
    """Procedure "missing folder": the sensor fails on its first check (no polling until the
    timeout, even with soft_fail); create the folder (or fix the param), trigger a new run."""
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session

    failed = _dag().test(run_conf=_conf(tmp_path))
    assert failed.state == "failed"
    states = _states(failed)
    assert states["wait"] == "failed"
    assert states["ingest"] == "upstream_failed"
    (wait,) = [t for t in failed.get_task_instances() if t.task_id == "wait"]
    with create_session() as session:
        reschedules = session.query(TaskReschedule).filter_by(ti_id=wait.id).count()
    assert (wait.try_number, reschedules) == (1, 0)  # one check: no polling, no retry

    inputs = _inputs(tmp_path)
    again = _dag().test(run_conf=_conf(tmp_path))
    assert again.state == "success", _states(again)
    _assert_recovered(tmp_path, inputs)


@pytest.mark.usefixtures("pseudo_conn")
@pytest.mark.parametrize("dag_id", ["dicom_pseudonymise", "dicom_pseudonymise_mapped"])
def test_bad_data_fails_once_then_a_new_run_adopts_and_publishes(tmp_path: Path, dag_id: str):
    """Procedure "pseudonymise failed on bad data": the task fails without retrying; trigger a
    new run allowing the failures (max_failed_files) without waiting for new files
    (min_files=0): it adopts the failed run's files, publishes the good ones and quarantines the
    bad one."""
    inputs = _inputs(tmp_path)
    bad = _bad_input(tmp_path)
    failed = _dag(dag_id).test(run_conf=_conf(tmp_path, batch_size=2))
    assert failed.state == "failed"
    pseudonymise = [t for t in failed.get_task_instances() if t.task_id == "pseudonymise"]
    assert "failed" in {t.state for t in pseudonymise}
    assert {t.try_number for t in pseudonymise} == {1}  # data failures are not retried
    staging = tmp_path / "work" / "staging" / failed.run_id
    assert len(_files_under(staging)) == len(inputs) + 1 + 2  # files, claims.jsonl, run.json
    assert stat.S_IMODE((staging / "claims.jsonl").stat().st_mode) == 0o600

    # The incoming folder is empty: min_files=0 lets the new run start at once.
    again = _dag(dag_id).test(
        run_conf=_conf(tmp_path, max_failed_files=1, min_files=0, batch_size=2)
    )
    assert again.state == "success", _states(again)
    assert not staging.exists()
    _assert_recovered(tmp_path, inputs, quarantined={bad})


@pytest.mark.usefixtures("pseudo_conn")
def test_failed_write_then_clearing_the_run_publishes(tmp_path: Path):
    """Procedure "pseudonymise failed (I/O)": fix the cause, then clear the whole run (or clear
    ingest with downstream). The sensor finds nothing new and is skipped; ingest still returns the
    files the run holds in staging."""
    inputs = _inputs(tmp_path)
    blocker = tmp_path / "work" / "output"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the output folder should be")
    failed = _dag(pseudonymise={"retries": 0}).test(run_conf=_conf(tmp_path))
    assert failed.state == "failed"
    assert _states(failed)["pseudonymise"] == "failed"

    blocker.unlink()  # the cause is fixed
    again = _dag(wait={"timeout": 0}).test(
        run_conf=_conf(tmp_path), logical_date=failed.logical_date, run_after=failed.run_after
    )
    assert again.run_id == failed.run_id
    states = _states(again)
    assert again.state == "success", states
    assert states["wait"] == "skipped" and states["publish"] == "success"
    _assert_recovered(tmp_path, inputs)


@pytest.mark.usefixtures("pseudo_conn")
def test_failed_validation_then_clearing_from_ingest_publishes(tmp_path: Path):
    """Procedure "validate failed": nothing is published; fix the cause (here the pseudonymise
    task kept PatientName), then clear ingest with downstream."""
    inputs = _inputs(tmp_path)
    failed = _dag(pseudonymise={"keep_keywords": ["PatientName"]}).test(run_conf=_conf(tmp_path))
    states = _states(failed)
    assert failed.state == "failed"
    assert states["validate"] == "failed" and states["publish"] == "upstream_failed"
    assert not (tmp_path / "published").exists()

    again = _dag().test(
        run_conf=_conf(tmp_path),
        logical_date=failed.logical_date,
        run_after=failed.run_after,
        mark_success_pattern="wait",
    )
    assert again.state == "success", _states(again)
    _assert_recovered(tmp_path, inputs)


@pytest.mark.usefixtures("pseudo_conn")
def test_failed_publish_then_clearing_the_run_publishes(tmp_path: Path):
    """Procedure "publish failed": fix the destination, clear the run from ingest (or publish
    alone: it is idempotent). Nothing was archived, so the run still holds every input."""
    inputs = _inputs(tmp_path)
    (tmp_path / "published").write_text("a file where the destination folder should be")
    failed = _dag(publish={"retries": 0}).test(run_conf=_conf(tmp_path))
    assert failed.state == "failed"
    assert _states(failed)["publish"] == "failed"
    staging = tmp_path / "work" / "staging" / failed.run_id
    assert len(_files_under(staging)) == len(inputs) + 2  # nothing archived before publishing

    (tmp_path / "published").unlink()
    again = _dag().test(
        run_conf=_conf(tmp_path),
        logical_date=failed.logical_date,
        run_after=failed.run_after,
        mark_success_pattern="wait",
    )
    assert again.state == "success", _states(again)
    _assert_recovered(tmp_path, inputs)


@pytest.mark.usefixtures("pseudo_conn")
def test_staging_of_a_vanished_run_is_adopted(tmp_path: Path):
    """Procedure "worker killed": a run whose worker died (and which was then deleted, or
    failed) leaves claimed files in staging; the next run adopts and publishes them."""
    from airflow_pseudo.incoming import claim_files_neutral, find_settled_files, write_run_file

    inputs = _inputs(tmp_path)
    orphan = tmp_path / "work" / "staging" / "manual__killed"
    incoming = tmp_path / "incoming"
    settled = find_settled_files(incoming, settle_seconds=30)
    claim_files_neutral(settled[:2], orphan, incoming)  # killed half-way through
    write_run_file(orphan, dag_id="dicom_pseudonymise", run_id="manual__killed")

    run = _dag().test(run_conf=_conf(tmp_path))
    assert run.state == "success", _states(run)
    assert not orphan.exists()
    _assert_recovered(tmp_path, inputs)


@pytest.mark.usefixtures("pseudo_conn")
def test_keep_outputs_keeps_work_outputs(tmp_path: Path):
    """The retention setting: with keep_outputs the work copies stay after publishing."""
    inputs = _inputs(tmp_path, patients=1)
    run = _dag().test(run_conf=_conf(tmp_path, keep_outputs=True))
    assert run.state == "success", _states(run)
    outputs = [p for p in _files_under(tmp_path / "work" / "output") if p.suffix == ".dcm"]
    assert len(outputs) == len(inputs)
    shutil.rmtree(tmp_path / "work" / "output")
    _assert_recovered(tmp_path, inputs)


@pytest.fixture
def small_tmpfs(tmp_path: Path, mount_tmpfs: Callable[[Path, str], Path]) -> Path:
    """A 64 KiB tmpfs (root only, as in CI), unmounted afterwards."""
    return mount_tmpfs(tmp_path / "work" / "output", "64k")


@pytest.mark.usefixtures("pseudo_conn")
def test_full_disk_then_clearing_the_run_publishes(tmp_path: Path, small_tmpfs: Path):
    """Procedure "disk full": the outputs do not fit; the task is retried (an I/O error), then
    fails with every input still staged; free space, then clear the run."""
    import subprocess
    from datetime import timedelta

    inputs = _inputs(tmp_path)
    retry_at_once = {"retries": 1, "retry_delay": timedelta(0), "retry_exponential_backoff": False}
    failed = _dag(pseudonymise=retry_at_once).test(run_conf=_conf(tmp_path))
    assert failed.state == "failed"
    assert _states(failed)["pseudonymise"] == "failed"
    (ti,) = [t for t in failed.get_task_instances() if t.task_id == "pseudonymise"]
    assert ti.try_number == 2  # an I/O error is retried (bad data is not)
    staging = tmp_path / "work" / "staging" / failed.run_id
    assert len(_files_under(staging)) == len(inputs) + 2

    remount = ["mount", "-o", "remount,size=64m", str(small_tmpfs)]
    subprocess.run(remount, check=True)  # space is freed
    again = _dag(wait={"timeout": 0}).test(
        run_conf=_conf(tmp_path), logical_date=failed.logical_date, run_after=failed.run_after
    )
    assert again.state == "success", _states(again)
    _assert_recovered(tmp_path, inputs)
