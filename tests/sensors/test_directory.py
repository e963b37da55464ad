"""Tests for DirectorySensor in poke, reschedule and deferrable mode."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)

from airflow_pseudo.sensors.directory import DirectorySensor
from airflow_pseudo.triggers.directory import DirectoryTrigger


def _old_file(path: Path, age: float = 600.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"DICM")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


class _FirstTry:
    """The piece of a task instance a reschedule-mode sensor asks for: no earlier reschedule."""

    def get_first_reschedule_date(self, context: Any) -> datetime | None:
        return None


def _sensor(folder: Path, **kwargs: Any) -> DirectorySensor:
    """A sensor that returns the paths, which most tests here check (the default is a count)."""
    kwargs.setdefault("return_files", True)
    kwargs.setdefault("settle_seconds", 60)
    kwargs.setdefault("poke_interval", 0.01)
    return DirectorySensor(task_id="wait", folder=str(folder), **kwargs)


class TestPoke:
    def test_returns_settled_files_as_xcom(self, tmp_path: Path):
        """poke() reports done with the sorted settled paths as its XCom value."""
        a = _old_file(tmp_path / "a.dcm")
        result = _sensor(tmp_path).poke({})  # type: ignore[arg-type]
        assert isinstance(result, PokeReturnValue)
        assert result.is_done
        assert result.xcom_value == [str(a)]

    def test_pushes_only_the_count_by_default(self, tmp_path: Path):
        """File names may carry PHI: unless asked, XCom gets the number of files only."""
        _old_file(tmp_path / "Doe^Jane" / "MRN123.dcm")
        sensor = DirectorySensor(task_id="wait", folder=str(tmp_path), settle_seconds=60)
        assert sensor.return_files is False
        assert sensor.poke({}).xcom_value == 1  # type: ignore[arg-type]

    def test_not_done_when_empty(self, tmp_path: Path):
        """An empty folder is not done."""
        assert not _sensor(tmp_path).poke({})  # type: ignore[arg-type]

    def test_file_still_being_written_is_not_reported(self, tmp_path: Path):
        """A file whose mtime is within settle_seconds is not reported."""
        old = _old_file(tmp_path / "old.dcm")
        (tmp_path / "copying.dcm").write_bytes(b"DI")
        assert _sensor(tmp_path).poke({}).xcom_value == [str(old)]  # type: ignore[arg-type]

    def test_min_files_and_marker(self, tmp_path: Path):
        """min_files and the marker must both be satisfied."""
        _old_file(tmp_path / "a.dcm")
        _old_file(tmp_path / "b.dcm")
        sensor = _sensor(tmp_path, min_files=2, marker="_SUCCESS")
        assert not sensor.poke({})  # type: ignore[arg-type]
        _old_file(tmp_path / "_SUCCESS")
        assert len(sensor.poke({}).xcom_value) == 2  # type: ignore[arg-type]

    def test_max_files_caps_the_list(self, tmp_path: Path):
        """max_files keeps the XCom bounded; the rest wait for the next run."""
        for i in range(5):
            _old_file(tmp_path / f"{i}.dcm")
        assert len(_sensor(tmp_path, max_files=2).poke({}).xcom_value) == 2  # type: ignore[arg-type]

    def test_template_fields(self):
        """The folder and every listing option can come from params."""
        assert set(DirectorySensor.template_fields) == {
            "folder",
            "pattern",
            "marker",
            "settle_seconds",
            "min_files",
            "max_files",
        }

    def test_rendered_strings_are_converted(self, tmp_path: Path):
        """Templated numbers rendered as strings are converted when poking."""
        _old_file(tmp_path / "a.dcm")
        _old_file(tmp_path / "b.dcm")
        sensor = _sensor(tmp_path, settle_seconds="60", min_files="2", max_files="1", marker="")
        assert len(sensor.poke({}).xcom_value) == 1  # type: ignore[arg-type]


class TestPokeMode:
    def test_execute_returns_files(self, tmp_path: Path):
        """In poke mode execute() returns the file list (the task's XCom)."""
        a = _old_file(tmp_path / "a.dcm")
        assert _sensor(tmp_path, mode="poke").execute({}) == [str(a)]  # type: ignore[arg-type]

    def test_waits_until_file_settles(self, tmp_path: Path):
        """A file still being written is returned only after it has settled."""
        path = tmp_path / "copying.dcm"
        path.write_bytes(b"DICM")
        start = time.monotonic()
        sensor = _sensor(tmp_path, settle_seconds=0.3, poke_interval=0.05, timeout=10)
        assert sensor.execute({}) == [str(path)]  # type: ignore[arg-type]
        assert time.monotonic() - start >= 0.25

    def test_timeout(self, tmp_path: Path):
        """Nothing settled within timeout fails the sensor."""
        with pytest.raises(AirflowSensorTimeout):
            _sensor(tmp_path, timeout=0).execute({})  # type: ignore[arg-type]

    def test_soft_fail_skips(self, tmp_path: Path):
        """With soft_fail, an empty incoming folder ends as skipped, not failed."""
        with pytest.raises(AirflowSkipException):
            _sensor(tmp_path, timeout=0, soft_fail=True).execute({})  # type: ignore[arg-type]


class TestRescheduleMode:
    def test_reschedules_when_nothing_is_settled(self, tmp_path: Path):
        """Reschedule mode frees the worker slot instead of sleeping."""
        (tmp_path / "copying.dcm").write_bytes(b"DI")
        sensor = _sensor(tmp_path, mode="reschedule", poke_interval=30, timeout=3600)
        with pytest.raises(AirflowRescheduleException):
            sensor.execute({"ti": _FirstTry()})  # type: ignore[arg-type,typeddict-item]

    def test_returns_files_when_settled(self, tmp_path: Path):
        """Reschedule mode returns the files as soon as a poke succeeds."""
        a = _old_file(tmp_path / "a.dcm")
        sensor = _sensor(tmp_path, mode="reschedule")
        assert sensor.execute({"ti": _FirstTry()}) == [str(a)]  # type: ignore[arg-type,typeddict-item]


class TestDeferrable:
    def test_defers_to_directory_trigger(self, tmp_path: Path):
        """With nothing settled, the sensor defers to a DirectoryTrigger with its own settings."""
        (tmp_path / "copying.dcm").write_bytes(b"DI")
        sensor = _sensor(
            tmp_path, deferrable=True, pattern="*.dcm", min_files=2, marker="_SUCCESS", timeout=120
        )
        with pytest.raises(TaskDeferred) as exc:
            sensor.execute({})  # type: ignore[arg-type]
        trigger = exc.value.trigger
        assert isinstance(trigger, DirectoryTrigger)
        assert trigger.serialize()[1] == {
            "folder": str(tmp_path),
            "pattern": "*.dcm",
            "settle_seconds": 60,
            "min_files": 2,
            "marker": "_SUCCESS",
            "poke_interval": 0.01,
            "return_files": True,
        }
        assert exc.value.method_name == "execute_complete"
        assert exc.value.timeout is not None
        assert exc.value.timeout.total_seconds() == 120

    def test_returns_immediately_when_files_are_ready(self, tmp_path: Path):
        """No deferral when the first check already succeeds."""
        a = _old_file(tmp_path / "a.dcm")
        assert _sensor(tmp_path, deferrable=True).execute({}) == [str(a)]  # type: ignore[arg-type]

    def test_execute_complete_returns_files(self, tmp_path: Path):
        """execute_complete returns the trigger's file list as the XCom value."""
        event = {"status": "success", "files": ["/in/a.dcm", "/in/b.dcm"]}
        sensor = _sensor(tmp_path, deferrable=True, max_files=1)
        assert sensor.execute_complete({}, event) == ["/in/a.dcm"]  # type: ignore[arg-type]

    def test_execute_complete_error(self, tmp_path: Path):
        """An error event fails the task with the trigger's message."""
        event = {"status": "error", "message": "PermissionError: denied"}
        with pytest.raises(AirflowException, match="denied"):
            _sensor(tmp_path, deferrable=True).execute_complete({}, event)  # type: ignore[arg-type]

    def test_default_follows_config(self, tmp_path: Path):
        """deferrable defaults to [operators] default_deferrable (False here)."""
        assert _sensor(tmp_path).deferrable is False


def _serialize(dag: Any) -> None:
    """Store a DAG defined in a test in the metadata DB, as the dag-processor would."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull, bundle_name="dags-folder")
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


@pytest.mark.slow
@pytest.mark.usefixtures("airflow_db")
def test_all_three_modes_under_dag_test(tmp_path: Path):
    """Under dag.test(), a poke, a reschedule and a deferrable sensor each meet a file that is
    still being written, wait for it to settle, and return the number of files as their XCom."""
    from airflow.sdk import DAG, task

    settle = 1.5

    @task
    def start_writing(folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        _old_file(Path(folder) / "a.dcm")
        (Path(folder) / "b.dcm").write_bytes(b"DI")  # fresh: not settled for `settle` seconds

    with DAG(dag_id="test_directory_sensor_modes", schedule=None) as dag:
        previous = None
        for mode, deferrable in (("poke", False), ("reschedule", False), ("poke", True)):
            name = "deferrable" if deferrable else mode
            folder = str(tmp_path / name)
            writer = start_writing.override(task_id=f"write_{name}")(folder)
            sensor = DirectorySensor(
                task_id=f"wait_{name}",
                folder=folder,
                settle_seconds=settle,
                min_files=2,
                poke_interval=0.2,
                timeout=60,
                mode=mode,
                deferrable=deferrable,
            )
            if previous is not None:
                previous >> writer
            writer >> sensor
            previous = sensor
    _serialize(dag)
    started = time.monotonic()
    dr = dag.test()
    assert time.monotonic() - started >= 3 * settle
    assert dr.state == "success"
    for name in ("poke", "reschedule", "deferrable"):
        ti = dr.get_task_instance(f"wait_{name}")
        assert ti.state == "success", name
        assert ti.xcom_pull(task_ids=f"wait_{name}") == 2  # the default: a count, no names


class TestMissingFolder:
    @pytest.mark.parametrize("deferrable", [False, True])
    def test_fails_at_once_even_with_soft_fail(self, tmp_path: Path, deferrable: bool):
        """A missing folder is a configuration error: it fails the task (no retry, no skip)
        at the first check instead of polling until the timeout."""
        from airflow.sdk.exceptions import AirflowFailException

        sensor = _sensor(
            tmp_path / "not-created", soft_fail=True, timeout=3600, deferrable=deferrable
        )
        with pytest.raises(AirflowFailException, match=r"does not exist.*not-created"):
            sensor.execute({"ti": _FirstTry()})  # type: ignore[arg-type]

    def test_a_file_is_not_a_folder(self, tmp_path: Path):
        from airflow.sdk.exceptions import AirflowFailException

        (tmp_path / "plain").write_bytes(b"x")
        with pytest.raises(AirflowFailException, match="not a directory"):
            _sensor(tmp_path / "plain").execute({"ti": _FirstTry()})  # type: ignore[arg-type]


def test_min_files_zero_does_not_wait(tmp_path: Path):
    """min_files=0 is done at the first poke, even on an empty folder (a run that only adopts)."""
    result = _sensor(tmp_path, min_files=0).poke({})  # type: ignore[arg-type]
    assert result.is_done
    assert result.xcom_value == []
