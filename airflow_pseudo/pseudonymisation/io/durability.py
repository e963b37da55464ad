"""Making outputs durable in batches: one file-system sync covers many files.

An output is named only once its data is on stable storage, so a power cut never leaves a name
pointing at lost data. Syncing each file (``fsync``) costs a disk flush per file; one
``syncfs`` covers every file written before it starts. :class:`BackgroundSync` runs it in a
thread, so that a batch writes its next chunk of files while the disk makes the last one durable.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable
from typing import cast


def sync_filesystem(folder: str | os.PathLike[str]) -> None:
    """Flush every write to the file system holding ``folder`` to stable storage.

    ``syncfs`` where the C library has it (Linux), limited to that file system; ``sync``
    elsewhere.
    """
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
    finally:
        os.close(fd)


class BackgroundSync:
    """One :func:`sync_filesystem` in a thread of its own, started at once.

    It covers every write completed before it was created; the caller writes the next files
    meanwhile, and :meth:`wait` before naming the files it covers. The thread spends its time in
    ``syncfs``, which releases the GIL.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self._error: OSError | None = None
        self._thread = threading.Thread(
            target=self._sync, args=(folder,), name="airflow-pseudo-sync", daemon=True
        )
        self._thread.start()

    def _sync(self, folder: str | os.PathLike[str]) -> None:
        try:
            sync_filesystem(folder)
        except OSError as exc:
            self._error = exc

    def wait(self) -> None:
        """Block until the sync is done.

        :raises OSError: the sync's error: nothing it was to cover is known to be durable.
        """
        self._thread.join()
        if self._error is not None:
            raise self._error


def _find_syncfs() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return cast("Callable[[int], int]", function)


_SYNCFS = _find_syncfs() if sys.platform.startswith("linux") else None
