"""Trigger that waits, on the triggerer, for settled files in a directory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class DirectoryTrigger(BaseTrigger):
    """
    Fire once a folder holds settled files matching a glob pattern.

    Each check lists the folder with
    :func:`~airflow_pseudo.incoming.find_settled_files` in a worker thread, so a
    slow (e.g. network) file system never blocks the triggerer's event loop; the listing module is
    imported in that thread too. This module imports only the standard library and Airflow's
    trigger base. The trigger yields one event and stops:
    ``{"status": "success", "count": n}`` (or ``"files": [...]`` with ``return_files``), or
    ``{"status": "error", "message": ...}`` if listing raised.

    :param folder: The folder to watch.
    :param pattern: Glob pattern relative to ``folder``. Defaults to ``**/*``.
    :param settle_seconds: Minimum age of a file's modification time, in seconds.
    :param min_files: Minimum number of settled files. Defaults to ``1``.
    :param marker: Name of a file that must exist in ``folder`` first. Defaults to ``None``.
    :param poke_interval: Seconds between checks. Defaults to ``30``.
    :param return_files: Put the paths in the event instead of their count. Defaults to ``False``:
        event payloads are stored in the metadata database, and file names may carry patient
        names.
    """

    def __init__(
        self,
        *,
        folder: str,
        pattern: str = "**/*",
        settle_seconds: float = 30.0,
        min_files: int = 1,
        marker: str | None = None,
        poke_interval: float = 30.0,
        return_files: bool = False,
    ) -> None:
        super().__init__()
        self.folder = folder
        self.pattern = pattern
        self.settle_seconds = settle_seconds
        self.min_files = min_files
        self.marker = marker
        self.poke_interval = poke_interval
        self.return_files = return_files

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Serialize DirectoryTrigger arguments and classpath."""
        return (
            "airflow_pseudo.triggers.directory.DirectoryTrigger",
            {
                "folder": self.folder,
                "pattern": self.pattern,
                "settle_seconds": self.settle_seconds,
                "min_files": self.min_files,
                "marker": self.marker,
                "poke_interval": self.poke_interval,
                "return_files": self.return_files,
            },
        )

    def _list_settled(self) -> list[str]:
        """List the settled files; runs in a worker thread, where importing pydicom is harmless."""
        from airflow_pseudo.incoming import find_settled_files

        return find_settled_files(
            self.folder,
            self.pattern,
            settle_seconds=self.settle_seconds,
            min_files=self.min_files,
            marker=self.marker,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Check the folder every ``poke_interval`` seconds until settled files are found."""
        while True:
            try:
                files = await asyncio.to_thread(self._list_settled)
            except Exception as exc:
                yield TriggerEvent({"status": "error", "message": f"{type(exc).__name__}: {exc}"})
                return
            if files:
                self.log.info("Found %d settled file(s) in %s", len(files), self.folder)
                if self.return_files:
                    yield TriggerEvent({"status": "success", "files": files})
                else:
                    yield TriggerEvent({"status": "success", "count": len(files)})
                return
            await asyncio.sleep(self.poke_interval)
