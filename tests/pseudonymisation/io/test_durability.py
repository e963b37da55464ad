"""Background file-system syncs: what they report, and their errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from airflow_pseudo.pseudonymisation.io import durability
from airflow_pseudo.pseudonymisation.io.durability import BackgroundSync, sync_filesystem


def test_sync_filesystem_refuses_a_missing_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        sync_filesystem(tmp_path / "missing")


def test_the_caller_goes_on_while_the_sync_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    started, release = threading.Event(), threading.Event()
    synced: list[Path] = []

    def slow_sync(folder: Path) -> None:
        started.set()
        release.wait(10)
        synced.append(folder)

    monkeypatch.setattr(durability, "sync_filesystem", slow_sync)
    sync = BackgroundSync(tmp_path)
    assert started.wait(10)  # running, and this thread was not held up
    assert synced == []
    release.set()
    sync.wait()
    assert synced == [tmp_path]
    assert not any(t.name == "airflow-pseudo-sync" for t in threading.enumerate())


def test_a_failed_sync_is_raised_by_wait(tmp_path: Path):
    """Nothing the sync was to cover is durable: waiting for it raises its error."""
    sync = BackgroundSync(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        sync.wait()
