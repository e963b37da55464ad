"""The quarantine: failed inputs (and rejected outputs) kept apart, each with its reason beside it.

A quarantined file is an original, full of identifying data: it is readable by its owner only
(0600, in a 0700 folder). The copy and its ``.json`` reason are each written under a temporary
name and renamed into place, so a full disk or a crash leaves both, or neither of them, never a
partial copy or an empty reason. Names are a digest of the source path, so they carry no
identifying text.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
FOLDER_MODE = 0o700
_BLOCK = 1 << 20


def quarantine_copy(fd: int, source: PathLike, reason: str, folder: Path) -> str | None:
    """Copy the input open at ``fd`` (never its path again) into ``folder``, with its reason.

    :returns: the copy's path, or None when it could not be made (the reason is logged).
    """
    target, sidecar = _names(source, folder)
    try:
        make_private_folder(folder)
        _write_atomically(folder, target, lambda out: _copy_descriptor(fd, out))
        _write_reason(folder, sidecar, source, reason)
    except OSError as exc:
        _not_quarantined(exc, target, sidecar)
        return None
    return str(target)


def quarantine(source: PathLike, reason: str, folder: Path, *, move: bool = False) -> str | None:
    """Move (``move``) or copy the file at ``source`` into ``folder``, with its reason.

    For this tool's own outputs; inputs are copied from their open descriptor
    (:func:`quarantine_copy`).
    """
    target, sidecar = _names(source, folder)
    try:
        make_private_folder(folder)
        if move:
            _move(source, folder, target)
        else:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                _write_atomically(folder, target, lambda out: _copy_descriptor(fd, out))
            finally:
                os.close(fd)
        _write_reason(folder, sidecar, source, reason)
    except OSError as exc:
        _not_quarantined(exc, target, sidecar)
        return None
    return str(target)


def make_private_folder(folder: Path) -> None:
    """Create ``folder`` (and parents) if missing; make it 0700 if this user owns it."""
    folder.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    with contextlib.suppress(PermissionError):
        os.chmod(folder, FOLDER_MODE)


def _names(source: PathLike, folder: Path) -> tuple[Path, Path]:
    token = hashlib.sha256(os.fsencode(os.path.abspath(source))).hexdigest()[:20]
    return folder / f"{token}.dcm", folder / f"{token}.json"


def _write_reason(folder: Path, sidecar: Path, source: PathLike, reason: str) -> None:
    text = json.dumps({"source": os.fspath(source), "reason": reason}, indent=2) + "\n"
    _write_atomically(folder, sidecar, lambda out: _write_all(out, text.encode("utf-8")))


def _not_quarantined(exc: OSError, target: Path, sidecar: Path) -> None:
    """Drop a copy left without its reason (or the reverse); log why, naming no value."""
    for path in (target, sidecar):
        with contextlib.suppress(OSError):
            os.unlink(path)
    log.warning("could not quarantine a file: %s", exc.strerror or type(exc).__name__)


def _write_atomically(folder: Path, target: Path, write: Callable[[int], None]) -> None:
    """Write a new 0600 file under a temporary name, sync it, rename it to ``target``."""
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-quarantine-")
    try:
        try:
            write(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _move(source: PathLike, folder: Path, target: Path) -> None:
    """Rename into place; across file systems, copy atomically and then remove the source."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _write_atomically(folder, target, lambda out: _copy_descriptor(fd, out))
        finally:
            os.close(fd)
        os.unlink(source)
    os.chmod(target, 0o600)


def _copy_descriptor(source_fd: int, out: int) -> None:
    offset = 0
    while block := os.pread(source_fd, _BLOCK, offset):
        _write_all(out, block)
        offset += len(block)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
