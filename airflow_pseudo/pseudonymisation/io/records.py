"""Result files: JSON lines written one whole record at a time, readable by their owner only.

Records are written as they come, each line in full or not at all (a short write is cut back to
the last whole line), so a crash or a full disk leaves a file that parses and lists every record
up to the last one written. Records hold original file names: the file is 0600.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

FILE_MODE = 0o600


class ResultsFile:
    """A JSON lines file, created (or emptied) on opening; use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE
        )
        os.fchmod(self._fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
        self._size = 0
        self.written = 0

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record as one line.

        :raises OSError: the line could not be written whole (it is cut away again).
        """
        line = (json.dumps(record) + "\n").encode("utf-8")
        try:
            done = 0
            while done < len(line):
                done += os.pwrite(self._fd, line[done:], self._size + done)
        except OSError:
            os.ftruncate(self._fd, self._size)
            raise
        self._size += len(line)
        self.written += 1

    def close(self) -> None:
        """Make the records durable and close the file."""
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
