"""Writing outputs: naming them safely below the output folder and writing them atomically.

Outputs are written to a file in the target folder that has no name yet (or a temporary one),
flushed to disk and then linked into place, so a crash leaves either no file or a complete one,
and an existing output is never silently replaced by different content.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import filecmp
import functools
import itertools
import os
import re
import socket
import stat
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation.errors import ConfigurationError, UnsupportedInputError


def uid_relpath(dataset: Dataset | Mapping[str, Any]) -> PurePath:
    """The ``<study>/<series>/<instance>.dcm`` path of a pseudonymised dataset, by its UIDs.

    :param dataset: the dataset, or a mapping from the UIDs' keywords to their values.
    """
    return PurePath(*uid_parts(dataset))


def uid_parts(dataset: Dataset | Mapping[str, Any]) -> tuple[str, str, str]:
    """The parts of :func:`uid_relpath`: study folder, series folder, file name."""
    sop = str(dataset.get("SOPInstanceUID", "") or "")
    if not sop:
        raise UnsupportedInputError("no SOPInstanceUID (Type 1): the output cannot be named")
    study = str(dataset.get("StudyInstanceUID", "") or "") or "no-study"
    series = str(dataset.get("SeriesInstanceUID", "") or "") or "no-series"
    return study, series, f"{sop}.dcm"


def safe_join(root: str | os.PathLike[str], relpath: PurePath | str) -> Path:
    """Join ``relpath`` under ``root``, refusing anything that would escape it."""
    base = Path(root).resolve()
    target = (base / relpath).resolve()
    if target != base and base not in target.parents:
        raise UnsupportedInputError("the output name would escape the output folder")
    return target


class OutputFolder:
    """:func:`safe_join` for many names under one root, each folder checked once.

    Outputs of a series share their folder, so it is resolved (links and all) the first time
    only. A plain file name cannot lead elsewhere: writing links a new name into the checked
    folder and never follows an existing one.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._folders: dict[PurePath, Path] = {}
        self._plain: dict[tuple[str, ...], str] = {}

    def join(self, relpath: PurePath) -> Path:
        """The path of ``relpath`` below the root; see :func:`safe_join`."""
        if relpath.name in ("", ".", ".."):
            raise UnsupportedInputError("the output name would escape the output folder")
        folder = self._folders.get(relpath.parent)
        if folder is None:
            folder = self._folders[relpath.parent] = safe_join(self.root, relpath.parent)
        return folder / relpath.name

    def join_parts(self, folders: tuple[str, ...], name: str) -> str:
        """:meth:`join` for ``folders`` and ``name`` given apart; cheaper for plain names."""
        if not all(map(_is_plain_name, (*folders, name))):  # separators, "..": the full check
            return str(self.join(PurePath(*folders, name)))
        return os.path.join(self._plain_folder(folders), name)

    def _plain_folder(self, folders: tuple[str, ...]) -> str:
        """The checked folder of plain ``folders``: a new one costs one ``lstat`` below its parent.

        A name in a checked folder leads elsewhere only if it is a link (or not a folder at
        all); anything but a real folder or nothing takes :func:`safe_join`'s full check.
        """
        folder = self._plain.get(folders)
        if folder is not None:
            return folder
        if not folders:
            folder = str(self.root)
        else:
            folder = os.path.join(self._plain_folder(folders[:-1]), folders[-1])
            try:
                plain = stat.S_ISDIR(os.lstat(folder).st_mode)
            except FileNotFoundError:
                plain = True  # made when the first output is written: nothing to follow
            except OSError:
                plain = False
            if not plain:
                folder = str(safe_join(self.root, PurePath(*folders)))
        self._plain[folders] = folder
        return folder


def _is_plain_name(name: str) -> bool:
    """A single path component that names an entry of its folder (not "", "." or "..")."""
    return (
        name not in ("", ".", "..")
        and os.sep not in name
        and (os.altsep is None or os.altsep not in name)
        and "\0" not in name
    )


def check_not_inside(
    inner: str | os.PathLike[str], outer: str | os.PathLike[str], what: str
) -> None:
    """Refuse a folder placed inside (or equal to) another, e.g. an output inside the input."""
    inner_path, outer_path = Path(inner).resolve(), Path(outer).resolve()
    if inner_path == outer_path or outer_path in inner_path.parents:
        raise ConfigurationError(f"the {what} folder must not be inside the input folder")


def write_atomically(
    content: Dataset | Iterable[bytes | memoryview], target: str | os.PathLike[str]
) -> None:
    """Write a dataset (or a file's ready-made chunks) at ``target``, never exposing a partial file.

    :raises FileExistsError: when ``target`` exists with different content.
    """
    staged = stage(content, target, durable=True)
    try:
        staged.commit(release_pages=True)
    finally:
        staged.discard()


@dataclass
class StagedFile:
    """An output written beside its target, not yet visible there.

    Where the system allows (Linux, a file system with ``O_TMPFILE``), the file has no name at
    all until committed: a crash leaves nothing behind, and the folder is touched once per file.
    Elsewhere it has a temporary name (see :func:`remove_stale_temporaries`).
    """

    target: str
    temporary: Path | None = None  # the temporary name, for a named file
    descriptor: int | None = None  # the open unnamed file, until committed or discarded

    def commit(self, *, release_pages: bool = False) -> None:
        """Link the file into place (atomic); an identical existing file counts as done.

        :param release_pages: the file is durable (synced): drop its pages from the page cache.
            An output is written once and not read back by this process; dropped, its clean
            pages are reused for the next outputs, instead of the cache (and a container's
            memory limit) filling with them, and fresh pages being taken for every file. Only
            an unnamed file is still open here; a named one's pages stay.

        :raises FileExistsError: when ``target`` exists with different content.
        """
        try:
            if self.descriptor is not None:
                try:
                    _link_descriptor(self.descriptor, self.target)
                    if release_pages:
                        release_cached_pages(self.descriptor)
                    self.discard()
                    return
                except FileExistsError:
                    raise
                except OSError:  # /proc hidden, say: give the file a temporary name instead
                    self._name_unnamed()
            assert self.temporary is not None
            try:
                os.link(self.temporary, self.target)
            except FileExistsError:
                raise
            except OSError:  # file systems without hard links: rename is still atomic
                os.replace(self.temporary, self.target)
        except FileExistsError:
            if not self._same_content_as(self.target):
                raise FileExistsError(
                    "an output with this name already exists with other content"
                ) from None
        self.discard()

    def discard(self) -> None:
        """Drop the unnamed file or the temporary name (a committed file stays)."""
        if self.descriptor is not None:
            os.close(self.descriptor)
            self.descriptor = None
        if self.temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temporary)

    def _name_unnamed(self) -> None:
        """Copy the unnamed file to a durable temporary name; stage named files from now on."""
        global _UNNAMED_LINKS_WORK
        _UNNAMED_LINKS_WORK = False
        assert self.descriptor is not None
        fd, name = _create_temporary(os.path.dirname(self.target))
        self.temporary = Path(name)
        try:
            offset = 0
            while block := os.pread(self.descriptor, _COMPARE_BLOCK, offset):
                _write_all(fd, [block])
                offset += len(block)
            os.fsync(fd)  # the unnamed file may have been synced already: so must this be
        finally:
            os.close(fd)
        os.close(self.descriptor)
        self.descriptor = None

    def _same_content_as(self, path: str) -> bool:
        if self.descriptor is None:
            assert self.temporary is not None
            return filecmp.cmp(self.temporary, path, shallow=False)
        with open(path, "rb") as existing:
            if os.fstat(existing.fileno()).st_size != os.fstat(self.descriptor).st_size:
                return False
            offset = 0
            while block := existing.read(_COMPARE_BLOCK):
                if os.pread(self.descriptor, len(block), offset) != block:
                    return False
                offset += len(block)
        return True


def stage(
    content: Dataset | Iterable[bytes | memoryview],
    target: str | os.PathLike[str],
    *,
    durable: bool,
) -> StagedFile:
    """Write ``content`` to a file beside ``target``, not yet visible; ``durable`` fsyncs it.

    Without ``durable``, sync it before committing (:mod:`.durability`), so that no name ever
    points at data a power cut could lose: one sync for many files costs far less than one
    fsync each.
    """
    target = os.fspath(target)
    folder = os.path.dirname(target)
    descriptor = _create_unnamed(folder)
    if descriptor is not None:
        staged, fd, named = StagedFile(target, descriptor=descriptor), descriptor, False
    else:
        fd, name = _create_temporary(folder)
        staged, named = StagedFile(target, temporary=Path(name)), True
    try:
        if isinstance(content, Dataset):
            with os.fdopen(os.dup(fd), "wb") as stream:
                pydicom.dcmwrite(stream, content, enforce_file_format=True)
        else:
            _write_all(fd, list(content))
        if durable:
            os.fsync(fd)
    except BaseException:
        staged.discard()  # an unnamed file's descriptor is closed here
        raise
    finally:
        if named:
            os.close(fd)
    return staged


def release_cached_pages(fd: int) -> None:
    """Advise the kernel that the file open at ``fd`` will not be read soon (where it can be told).

    Clean pages are dropped at once; dirty ones are only queued for writing. Advice: a kernel
    that refuses it changes nothing.
    """
    advise = getattr(os, "posix_fadvise", None)  # not on macOS or Windows
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _create_unnamed(folder: str) -> int | None:
    """Open a new unnamed file in ``folder`` (made if missing); None where there are none."""
    if _LINKAT is None or not _UNNAMED_LINKS_WORK:
        return None
    for _ in range(2):
        try:
            return os.open(folder, _CREATE_UNNAMED, 0o600)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            if exc.errno in _NO_UNNAMED_FILES:
                return None
            raise
    return None


def _link_descriptor(descriptor: int, target: str) -> None:
    """Give the unnamed file open at ``descriptor`` the name ``target``; never replaces one."""
    assert _LINKAT is not None
    source = f"/proc/self/fd/{descriptor}".encode()
    if _LINKAT(_AT_FDCWD, source, _AT_FDCWD, os.fsencode(target), _AT_SYMLINK_FOLLOW) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), target)


def _write_all(fd: int, chunks: list[bytes | memoryview]) -> None:
    """Write every chunk in order with few system calls.

    Small files are joined and written at once; large ones (pixel data held in a memory map) go
    out with ``writev``, so they are never copied whole into memory.
    """
    if sum(map(len, chunks)) <= _JOIN_LIMIT:
        data = memoryview(b"".join(chunks))
        while data:
            data = data[os.write(fd, data) :]
        return
    views = [memoryview(chunk).cast("B") for chunk in chunks if len(chunk)]
    index = 0
    while index < len(views):
        written = os.writev(fd, views[index : index + _IOV_MAX])
        while index < len(views) and written >= len(views[index]):
            written -= len(views[index])
            index += 1
        if written:
            views[index] = views[index][written:]


def _find_linkat() -> Callable[[int, bytes, int, bytes, int], int] | None:
    """``linkat`` where unnamed files can be named through ``/proc/self/fd`` (Linux)."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).linkat
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    function.restype = ctypes.c_int
    return cast("Callable[[int, bytes, int, bytes, int], int]", function)


_LINKAT = _find_linkat() if sys.platform.startswith("linux") else None
_CREATE_UNNAMED = os.O_RDWR | getattr(os, "O_TMPFILE", 0)
_NO_UNNAMED_FILES = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP})
_UNNAMED_LINKS_WORK = True  # until linking one fails: then named temporaries, as elsewhere
_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_COMPARE_BLOCK = 1 << 16
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_JOIN_LIMIT = 1 << 20


_TEMPORARY = re.compile(r"^\.tmp-(?P<host>[A-Za-z0-9.-]+)-(?P<pid>\d+)-.*\.dcm$")
# O_EXCL: a name already taken, by a leftover or a planted link, is never opened or followed.
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
_MAX_NAME_TRIES = 10_000
_serial = itertools.count()


def _create_temporary(folder: str) -> tuple[int, str]:
    """Create and open a new empty file in ``folder`` (made if missing), readable by owner only.

    Named ``<prefix><serial>.dcm``: the prefix names this process, so a serial number suffices,
    and it costs less than the random names of :func:`tempfile.mkstemp`.
    """
    prefix = _temporary_prefix()
    for _ in range(_MAX_NAME_TRIES):
        name = os.path.join(folder, f"{prefix}{next(_serial)}.dcm")
        try:
            return os.open(name, _CREATE_NEW, 0o600), name
        except FileExistsError:
            continue
        except FileNotFoundError:  # a new folder: made once, not checked for every file
            os.makedirs(folder, exist_ok=True)
    raise FileExistsError("no free temporary name in the output folder")


def _temporary_prefix() -> str:
    """``.tmp-<host>-<pid>-``: lets a later run tell a dead writer's leftovers from live ones."""
    return _prefix_for(os.getpid())  # a forked child gets its own


@functools.lru_cache(maxsize=1)
def _prefix_for(pid: int) -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname()) or "host"
    return f".tmp-{host}-{pid}-"


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files left below ``folder`` by writers on this host that have died.

    A killed run (SIGKILL, OOM) cannot clean up after itself. Files of live processes, of other
    hosts (a shared file system) or of unknown form are left alone. Returns how many went.
    """
    root = Path(folder)
    if not root.is_dir():
        return 0
    host = re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname()) or "host"
    removed = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            match = _TEMPORARY.match(name)
            if not match or match["host"] != host or _alive(int(match["pid"])):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(dirpath, name))
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
