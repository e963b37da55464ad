"""Tests for DirectoryTrigger."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from unittest import mock

import pytest
from airflow.triggers.base import TriggerEvent

from airflow_pseudo.triggers.directory import DirectoryTrigger


def _old_file(path: Path, age: float = 600.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"DICM")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


async def _first_event(trigger: DirectoryTrigger) -> TriggerEvent | None:
    """Return the first event, or None if the trigger went to sleep instead (sleep is cancelled)."""
    with mock.patch(
        "airflow_pseudo.triggers.directory.asyncio.sleep", side_effect=asyncio.CancelledError
    ):
        generator = trigger.run()
        try:
            return await asyncio.wait_for(anext(generator), timeout=10)
        except asyncio.CancelledError:
            return None
        finally:
            await generator.aclose()


class TestDirectoryTrigger:
    def test_serialize(self):
        """serialize() returns the classpath and every constructor argument."""
        trigger = DirectoryTrigger(
            folder="/in",
            pattern="**/*.dcm",
            settle_seconds=12.5,
            min_files=3,
            marker="_SUCCESS",
            poke_interval=7.0,
        )
        assert trigger.serialize() == (
            "airflow_pseudo.triggers.directory.DirectoryTrigger",
            {
                "folder": "/in",
                "pattern": "**/*.dcm",
                "settle_seconds": 12.5,
                "min_files": 3,
                "marker": "_SUCCESS",
                "poke_interval": 7.0,
                "return_files": False,
            },
        )

    def test_round_trip(self):
        """A trigger rebuilt from its serialized kwargs serializes identically."""
        trigger = DirectoryTrigger(folder="/in", marker=None)
        classpath, kwargs = trigger.serialize()
        assert DirectoryTrigger(**kwargs).serialize() == (classpath, kwargs)

    def test_unknown_argument_is_rejected(self):
        """A misspelt argument is an error, not silently swallowed."""
        with pytest.raises(TypeError):
            DirectoryTrigger(folder="/in", poll_interval=5)  # type: ignore[call-arg]

    def test_fires_with_settled_files(self, tmp_path: Path):
        """With settled files present, one success event carries their paths when asked."""
        a = _old_file(tmp_path / "a.dcm")
        b = _old_file(tmp_path / "s" / "b.dcm")
        trigger = DirectoryTrigger(folder=str(tmp_path), settle_seconds=60, return_files=True)
        event = asyncio.run(_first_event(trigger))
        assert event == TriggerEvent({"status": "success", "files": sorted([str(a), str(b)])})

    def test_event_holds_only_the_count_by_default(self, tmp_path: Path):
        """Names may carry PHI and events are stored in the metadata DB: by default, a count."""
        _old_file(tmp_path / "Doe^Jane.dcm")
        _old_file(tmp_path / "s" / "b.dcm")
        event = asyncio.run(_first_event(DirectoryTrigger(folder=str(tmp_path))))
        assert event == TriggerEvent({"status": "success", "count": 2})

    def test_stops_after_one_event(self, tmp_path: Path):
        """run() yields one event and then returns."""
        _old_file(tmp_path / "a.dcm")

        async def collect() -> list[TriggerEvent]:
            return [e async for e in DirectoryTrigger(folder=str(tmp_path), settle_seconds=1).run()]

        assert len(asyncio.run(asyncio.wait_for(collect(), timeout=10))) == 1

    def test_file_still_being_written_does_not_fire(self, tmp_path: Path):
        """A fresh file (mtime within settle_seconds) keeps the trigger waiting."""
        (tmp_path / "copying.dcm").write_bytes(b"DICM")
        trigger = DirectoryTrigger(folder=str(tmp_path), settle_seconds=60)
        assert asyncio.run(_first_event(trigger)) is None

    def test_waits_for_marker(self, tmp_path: Path):
        """Settled files without the marker keep the trigger waiting."""
        _old_file(tmp_path / "a.dcm")
        trigger = DirectoryTrigger(folder=str(tmp_path), settle_seconds=1, marker="_SUCCESS")
        assert asyncio.run(_first_event(trigger)) is None

    def test_fires_once_file_settles(self, tmp_path: Path):
        """The trigger polls until a file settles, then fires."""
        path = tmp_path / "a.dcm"
        path.write_bytes(b"DICM")
        trigger = DirectoryTrigger(
            folder=str(tmp_path), settle_seconds=0.3, poke_interval=0.05, return_files=True
        )

        async def first() -> TriggerEvent:
            return await asyncio.wait_for(anext(trigger.run()), timeout=10)

        assert asyncio.run(first()).payload == {"status": "success", "files": [str(path)]}

    def test_listing_runs_off_the_event_loop(self, tmp_path: Path):
        """The folder is listed in a worker thread, so a slow listing never blocks the loop."""
        import threading

        listing_threads: list[threading.Thread] = []

        def slow_listing(*args, **kwargs):
            listing_threads.append(threading.current_thread())
            time.sleep(0.3)
            return ["/in/a.dcm"]

        async def main() -> tuple[TriggerEvent, int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            tick_task = asyncio.create_task(ticker())
            trigger = DirectoryTrigger(folder="/in", return_files=True)
            event = await asyncio.wait_for(anext(trigger.run()), timeout=10)
            tick_task.cancel()
            return event, ticks

        with mock.patch("airflow_pseudo.incoming.find_settled_files", slow_listing):
            event, ticks = asyncio.run(main())
        assert event.payload["files"] == ["/in/a.dcm"]
        assert listing_threads
        assert listing_threads[0] is not threading.main_thread()
        assert ticks >= 5

    def test_listing_error_yields_error_event(self, tmp_path: Path):
        """An exception while listing becomes an error event instead of killing the triggerer."""
        with mock.patch(
            "airflow_pseudo.incoming.find_settled_files",
            side_effect=PermissionError("denied"),
        ):
            event = asyncio.run(_first_event(DirectoryTrigger(folder=str(tmp_path))))
        assert event is not None
        assert event.payload == {"status": "error", "message": "PermissionError: denied"}


def test_pydicom_is_never_imported_on_the_event_loop(tmp_path: Path):
    """The trigger module is light; the listing runs in a thread and pydicom, if the listing
    ever needs it, is imported there, never on the triggerer's event loop."""
    import subprocess
    import sys
    import textwrap

    _old_file(tmp_path / "a.dcm")
    code = textwrap.dedent(
        f"""
        import asyncio, sys, threading
        import airflow_pseudo.triggers.directory as module
        assert "pydicom" not in sys.modules, "imported with the trigger module"
        threads = []
        def audit(event, args):
            if event == "import" and args[0] == "pydicom":
                threads.append(threading.current_thread().name)
        sys.addaudithook(audit)
        async def main():
            return await anext(module.DirectoryTrigger(folder={str(tmp_path)!r}).run())
        event = asyncio.run(main())
        print(event.payload, threads, threading.main_thread().name)
        assert threading.main_thread().name not in threads, threads
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "{'status': 'success', 'count': 1}" in proc.stdout
