"""Tests for IngestOperator: checks before claiming, caps, retries and batches."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_pseudo.incoming import CLAIMS_FILE, RUN_FILE
from airflow_pseudo.operators.ingest import LEFT_FOR_NEXT_RUN_KEY, IngestOperator

CONN_VAR = "AIRFLOW_CONN_PSEUDO_DEFAULT"


def _incoming(tmp_path: Path, count: int = 5) -> list[Path]:
    stamp = time.time() - 3600
    files = []
    for i in range(count):
        path = tmp_path / "incoming" / "Doe^Jane" / f"{i:02d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"file {i}".encode())
        os.utime(path, (stamp, stamp))
        files.append(path)
    return files


def _op(tmp_path: Path, **kwargs: Any) -> IngestOperator:
    kwargs.setdefault("incoming_dir", str(tmp_path / "incoming"))
    kwargs.setdefault("staging_dir", str(tmp_path / "work" / "staging" / "run1"))
    kwargs.setdefault("settle_seconds", 30)
    return IngestOperator(task_id="ingest", **kwargs)


def _context() -> Any:
    return {"run_id": "run1"}


class RecordingTI:
    """Collects what a task pushes to XCom, standing in for the task instance in the context."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.mark.usefixtures("pseudo_conn")
class TestClaiming:
    def test_claims_every_settled_file_under_neutral_names(self, tmp_path: Path):
        """Files move into staging; XCom holds neutral names only; run.json names the run."""
        files = _incoming(tmp_path)
        claimed = _op(tmp_path).execute(_context())
        staging = tmp_path / "work" / "staging" / "run1"
        assert len(claimed) == len(files)
        assert not any(f.exists() for f in files)
        assert all("Doe" not in p for p in claimed)
        assert json.loads((staging / RUN_FILE).read_text())["run_id"] == "run1"

    def test_max_files_caps_and_logs_how_many_are_left(
        self, tmp_path: Path, capfd: pytest.CaptureFixture[str]
    ):
        """A capped run takes max_files and says how many wait for the next run (no names)."""
        _incoming(tmp_path, 5)
        ti = RecordingTI()
        claimed = _op(tmp_path, max_files="2").execute({"run_id": "run1", "ti": ti})
        assert len(claimed) == 2
        assert len(list((tmp_path / "incoming").rglob("*.dcm"))) == 3
        out = capfd.readouterr().out
        assert "3 settled file(s) left in the incoming folder for the next run" in out
        assert "Doe" not in out
        # The count (a number, no names) goes to XCom for the run report.
        assert ti.pushed == {LEFT_FOR_NEXT_RUN_KEY: 3}

    def test_an_uncapped_run_leaves_nothing(self, tmp_path: Path):
        """Without a cap every settled file is claimed: zero left, still pushed as a number."""
        _incoming(tmp_path, 3)
        ti = RecordingTI()
        assert len(_op(tmp_path).execute({"run_id": "run1", "ti": ti})) == 3
        assert ti.pushed == {LEFT_FOR_NEXT_RUN_KEY: 0}

    def test_min_files_claims_nothing_below_the_minimum(self, tmp_path: Path):
        """Fewer settled files than min_files: nothing is claimed and the task is skipped."""
        files = _incoming(tmp_path, 2)
        with pytest.raises(AirflowSkipException):
            _op(tmp_path, min_files=3).execute(_context())
        assert all(f.exists() for f in files)

    def test_running_again_returns_the_same_files_topped_up(self, tmp_path: Path):
        """A retry (or a clear) keeps this run's claims and tops up to max_files."""
        _incoming(tmp_path, 5)
        first = _op(tmp_path, max_files=2).execute(_context())
        again = _op(tmp_path, max_files=2).execute(_context())
        assert again == first
        more = _op(tmp_path, max_files=4).execute(_context())
        assert more[:2] == first and len(more) == 4

    def test_empty_incoming_is_skipped_leaving_no_staging_folder(self, tmp_path: Path):
        (tmp_path / "incoming").mkdir()
        with pytest.raises(AirflowSkipException):
            _op(tmp_path).execute(_context())
        assert list((tmp_path / "work" / "staging").iterdir()) == []

    def test_batches(self, tmp_path: Path):
        """With batch_size the files come back in batches for dynamic task mapping."""
        _incoming(tmp_path, 5)
        batches = _op(tmp_path, batch_size="2").execute(_context())
        assert [len(b) for b in batches] == [2, 2, 1]

    def test_batches_grow_to_stay_within_max_batches(self, tmp_path: Path):
        """max_batches caps the number of mapped tasks: each batch takes more files instead."""
        _incoming(tmp_path, 7)
        batches = _op(tmp_path, batch_size="2", max_batches="2").execute(_context())
        assert [len(b) for b in batches] == [4, 3]
        assert len({f for b in batches for f in b}) == 7

    @pytest.mark.parametrize("option", ["batch_size", "max_batches"])
    def test_batch_counts_below_one_fail_before_any_move(self, tmp_path: Path, option: str):
        files = _incoming(tmp_path, 3)
        kwargs = {"batch_size": "2", option: "0"}
        with pytest.raises(AirflowFailException, match=f"{option} must be at least 1"):
            _op(tmp_path, **kwargs).execute(_context())
        assert all(f.exists() for f in files)

    def test_staging_on_another_file_system_is_refused(self, tmp_path: Path):
        """Claiming renames files: a staging folder on another device fails before any move."""
        shm = Path("/dev/shm")
        if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("no second file system to put the staging folder on")
        files = _incoming(tmp_path, 2)
        staging = shm / f"ingest-test-{os.getpid()}" / "run1"
        try:
            with pytest.raises(AirflowFailException, match="same file system"):
                _op(tmp_path, staging_dir=str(staging)).execute(_context())
        finally:
            if staging.parent.exists():
                staging.parent.rmdir()
        assert all(f.exists() for f in files)


class TestChecksBeforeClaiming:
    def test_missing_connection_strands_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ):
        """Without the connection the task fails at once and every file stays in incoming."""
        monkeypatch.delenv(CONN_VAR, raising=False)
        files = _incoming(tmp_path)
        with pytest.raises(AirflowFailException, match="'pseudo_default' is not defined"):
            _op(tmp_path).execute(_context())
        assert all(f.exists() for f in files)
        assert not (tmp_path / "work" / "staging" / "run1").exists()

    def test_invalid_key_strands_nothing(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        """A key too short to use fails before claiming, and the message holds no key bytes."""
        monkeypatch.setenv(CONN_VAR, json.dumps({"conn_type": "pseudo", "password": "tooshort"}))
        files = _incoming(tmp_path)
        with pytest.raises(AirflowFailException, match="not usable") as exc:
            _op(tmp_path).execute(_context())
        assert "tooshort" not in str(exc.value)
        assert all(f.exists() for f in files)

    @pytest.mark.usefixtures("pseudo_conn")
    def test_missing_incoming_folder(self, tmp_path: Path):
        with pytest.raises(AirflowFailException, match="does not exist"):
            _op(tmp_path).execute(_context())

    @pytest.mark.usefixtures("pseudo_conn")
    def test_folder_names_in_errors_are_escaped(self, tmp_path: Path):
        """A newline or an ANSI escape in a folder name is escaped in the task's error."""
        folder = tmp_path / "in\ncoming\x1b[2J"
        with pytest.raises(AirflowFailException, match="does not exist") as failure:
            _op(tmp_path, incoming_dir=str(folder)).execute(_context())
        message = str(failure.value)
        assert "\n" not in message and "\x1b" not in message
        assert "in\\ncoming\\x1b[2J" in message

    def test_check_can_be_turned_off(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        """pseudo_conn_id=None claims without a connection (e.g. a key-less strategy)."""
        monkeypatch.delenv(CONN_VAR, raising=False)
        _incoming(tmp_path, 1)
        assert len(_op(tmp_path, pseudo_conn_id=None).execute(_context())) == 1


@pytest.mark.usefixtures("pseudo_conn")
def test_orphans_are_not_adopted_without_a_run_state(tmp_path: Path):
    """Outside a task runner a run's state is unknown, so another staging folder is left alone."""
    _incoming(tmp_path, 2)
    _op(tmp_path, staging_dir=str(tmp_path / "work" / "staging" / "other")).execute(_context())
    (tmp_path / "incoming" / "x").mkdir()
    with pytest.raises(AirflowSkipException):
        _op(tmp_path).execute(_context())
    assert (tmp_path / "work" / "staging" / "other" / CLAIMS_FILE).is_file()


def test_template_fields_are_init_arguments():
    """Every templated field is an __init__ argument of the same name (Airflow's rule)."""
    import inspect

    params = inspect.signature(IngestOperator.__init__).parameters
    assert set(IngestOperator.template_fields) <= set(params)
