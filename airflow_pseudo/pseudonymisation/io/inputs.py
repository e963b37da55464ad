"""Reading inputs safely: listing the input tree, opening files without following links, reading
each whole within bounds, and recognising DICOM by content.

Inputs are only ever opened for reading, and only regular files are opened at all. Every folder
below the input root is opened relative to its parent's descriptor with ``O_NOFOLLOW``, and the
file itself the same way, so a folder swapped for a symbolic link by another process, between
listing and reading, cannot lead the tool outside the input tree. A file is read into memory
(never memory-mapped: a mapped file truncated by another process kills the reader with SIGBUS).
"""

from __future__ import annotations

import errno
import io
import os
import stat
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from airflow_pseudo.pseudonymisation.errors import UnsupportedInputError
from airflow_pseudo.pseudonymisation.logs import pydicom_messages_by_tag

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
# Groups a dataset without preamble can start with: file meta, or the usual first modules.
_FIRST_GROUPS = frozenset({0x0002, 0x0008})
_UNDEFINED_LENGTH = 0xFFFFFFFF
_INFLATE_INPUT_BLOCK = 1 << 16
_INFLATE_OUTPUT_BLOCK = 1 << 20
# The file meta's (0002,0010) element naming the deflated transfer syntax, as encoded.
_DEFLATED_META_VALUE = b"\x02\x00\x10\x00UI\x16\x00" + DeflatedExplicitVRLittleEndian.encode()
_OPEN_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_CACHED_FOLDERS = 32
_TRANSFER_SYNTAX_HEADER = b"\x02\x00\x10\x00UI"
_TOO_DEEP = "refused: sequences nested deeper than pydicom can read"

# What an entry that is not a regular file is, by its file type: its record's reason.
NOT_REGULAR_REASONS: dict[int, str] = {
    stat.S_IFLNK: "a symbolic link (links are not followed)",
    stat.S_IFDIR: "a folder that cannot be listed",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


@dataclass(frozen=True)
class InputLimits:
    """Bounds on what one input may cost; a file over a bound fails alone, with the bound named.

    :param max_file_bytes: the largest input read (inputs are held in memory whole).
    :param max_inflate_ratio: the largest ratio of a deflated dataset's inflated size to its
        compressed size; real DICOM deflates by a few times, a "deflate bomb" by thousands.
    :param max_inflated_bytes: the largest inflated size of a deflated dataset.
    """

    max_file_bytes: int = 1 << 30
    max_inflate_ratio: int = 200
    max_inflated_bytes: int = 2 << 30


DEFAULT_LIMITS = InputLimits()


class InputOutsideRootError(UnsupportedInputError):
    """An input whose path leads outside the input folder."""


class NotRegularFileError(UnsupportedInputError):
    """A directory entry that is not a regular file: never opened, never quarantined."""


def not_regular_reason(mode: int) -> str:
    """The record's reason for an entry of file ``mode`` that is not a regular file."""
    kind = NOT_REGULAR_REASONS.get(stat.S_IFMT(mode), "an entry of unknown type")
    return f"not a regular file: {kind}"


class InputFolder:
    """Opens inputs below one input root, relative to folder descriptors, never following links.

    The descriptors of recently used folders are kept open: a batch holds many files per folder,
    and a descriptor keeps naming the folder it was opened on even if its name is swapped
    for a link afterwards.
    """

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = os.path.abspath(root) if root is not None else None
        self.resolved_root = os.path.realpath(root) if root is not None else None
        self._folders: OrderedDict[tuple[str, ...], int] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_folders"] = OrderedDict()  # descriptors belong to this process
        return state

    def close(self) -> None:
        """Close the folder descriptors kept open."""
        while self._folders:
            os.close(self._folders.popitem()[1])

    def open(self, path: str | os.PathLike[str]) -> int:
        """Open a regular file for reading; the caller closes the descriptor.

        :raises InputOutsideRootError: the path leads outside the root.
        :raises NotRegularFileError: not a regular file, or a link in the path below the root.
        :raises OSError: the OS's error (vanished, permission denied...).
        """
        folder_fd, name = self._folder_of(os.fspath(path))
        try:
            status = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
            if not stat.S_ISREG(status.st_mode):
                raise NotRegularFileError(not_regular_reason(status.st_mode))
            try:
                fd = os.open(name, _OPEN_FILE, dir_fd=folder_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK):  # swapped for a link meanwhile
                    raise NotRegularFileError(NOT_REGULAR_REASONS[stat.S_IFLNK]) from None
                raise
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):  # swapped for something else meanwhile
                os.close(fd)
                raise NotRegularFileError(not_regular_reason(opened.st_mode))
            return fd
        finally:
            if self.root is None:
                os.close(folder_fd)

    def _folder_of(self, path: str) -> tuple[int, str]:
        """The open folder holding ``path`` and the entry's name in it."""
        if self.root is None:
            folder, name = os.path.split(os.path.abspath(path))
            return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), name
        if os.pardir in path.split(os.sep):  # "link/../x" is not "x" when "link" is a link
            raise InputOutsideRootError("refused: '..' in an input path below the input folder")
        folder, name = os.path.split(os.path.abspath(path))
        parts = self._parts_below_root(folder)
        return self._open_folder(parts), name

    def _parts_below_root(self, folder: str) -> tuple[str, ...]:
        assert self.root is not None and self.resolved_root is not None
        for root in (self.root, self.resolved_root):
            relative = os.path.relpath(folder, root)
            if relative == ".":
                return ()
            if relative != ".." and not relative.startswith(".." + os.sep):
                return tuple(relative.split(os.sep))
        raise InputOutsideRootError("refused: the input lies outside the input folder")

    def _open_folder(self, parts: tuple[str, ...]) -> int:
        fd = self._folders.get(parts)
        if fd is not None:
            self._folders.move_to_end(parts)
            return fd
        if not parts:
            assert self.root is not None
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            parent = self._open_folder(parts[:-1])
            try:
                fd = os.open(parts[-1], _OPEN_FOLDER, dir_fd=parent)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise NotRegularFileError(
                        "refused: a folder in its path is a symbolic link or not a folder "
                        "(links are not followed)"
                    ) from None
                raise
        self._folders[parts] = fd
        while len(self._folders) > _CACHED_FOLDERS:
            os.close(self._folders.popitem(last=False)[1])
        return fd


def iter_files(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Every directory entry below ``folder`` that is not a folder walked into, sorted by path.

    Regular files, and also links (never followed), FIFOs, sockets, devices and folders that
    cannot be listed: each gets a record saying why it was not processed, so an entry is never
    silently missing from a run. Hidden files are included. Sorted by path text, the order
    :func:`airflow_pseudo.incoming.find_settled_files` uses.
    """
    root_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    entries: list[str] = []
    try:
        _walk(root_fd, os.fspath(folder), entries)
    finally:
        os.close(root_fd)
    yield from (Path(entry) for entry in sorted(entries))


def _walk(folder_fd: int, folder: str, entries: list[str]) -> None:
    with os.scandir(folder_fd) as listing:
        found = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]
    for name, is_folder in found:
        path = os.path.join(folder, name)
        if not is_folder:
            entries.append(path)
            continue
        try:
            child = os.open(name, _OPEN_FOLDER, dir_fd=folder_fd)
        except OSError:  # unreadable, or swapped meanwhile: listed as an entry, recorded
            entries.append(path)
            continue
        try:
            _walk(child, path, entries)
        except OSError:  # opened but not listable (no read permission)
            entries.append(path)
        finally:
            os.close(child)


PREFETCH_MAX_BYTES = 16 << 20
"""The largest file :func:`prefetch` reads ahead."""


def prefetch(paths: Iterable[str]) -> None:
    """Ask the kernel to start reading these files now, so that later reads find them cached.

    ``posix_fadvise(WILLNEED)`` queues the reads and returns: files prefetched while others are
    processed are read from the disk in the meantime. Only files of up to
    :data:`PREFETCH_MAX_BYTES` are: the time a small file costs is the disk's latency, which this
    hides, while a large one is read in sequence with the kernel's own read-ahead, and would
    push the others out of the page cache. Advice only: anything but a regular file (checked
    before opening it, which never blocks nor follows a link) is left alone, as is a file that
    cannot be opened, and where the advice does not exist nothing is done.
    """
    advise = getattr(os, "posix_fadvise", None)  # not on macOS or Windows
    if advise is None:
        return
    for path in paths:
        try:
            status = os.lstat(path)
            if not stat.S_ISREG(status.st_mode) or status.st_size > PREFETCH_MAX_BYTES:
                continue
            fd = os.open(path, _OPEN_FILE)
        except OSError:
            continue
        try:
            advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


class ReadAhead:
    """Keep the reads of files a loop will take next in flight (see :func:`prefetch`).

    :param paths: the files, in the order the loop reads them.
    :param window: how many files are prefetched at once; up to two windows are in flight.
    """

    def __init__(self, paths: Sequence[str], window: int = 64) -> None:
        self.paths = paths
        self.window = window
        self._prefetched = 0
        self.reached(0)

    def reached(self, done: int) -> None:
        """Say that the loop has read ``done`` of the files."""
        wanted = min(len(self.paths), done + 2 * self.window)
        if wanted - self._prefetched >= self.window or wanted == len(self.paths):
            prefetch(self.paths[self._prefetched : wanted])
            self._prefetched = max(self._prefetched, wanted)


def read_input(fd: int, limits: InputLimits = DEFAULT_LIMITS) -> bytes:
    """The whole content of the regular file open at ``fd``, within ``limits.max_file_bytes``.

    :raises UnsupportedInputError: the file is over the bound, or changed while it was read.
    """
    size = os.fstat(fd).st_size
    if size > limits.max_file_bytes:
        raise UnsupportedInputError(
            f"refused: the file is larger than the limit of {limits.max_file_bytes} bytes "
            "(max_file_bytes)"
        )
    data = os.pread(fd, size, 0)
    while len(data) < size:
        block = os.pread(fd, size - len(data), len(data))
        if not block:
            raise UnsupportedInputError(
                "the file changed while it was read (shorter than its size): "
                "truncated by another process?"
            )
        data += block
    return data


def read_file(path: str | os.PathLike[str], limits: InputLimits = DEFAULT_LIMITS) -> bytes:
    """The whole content of a regular file named by a trusted path (see :func:`read_input`).

    The last component is not followed if it is a link, and only a regular file is opened.
    """
    folder = InputFolder(None)
    fd = folder.open(path)
    try:
        return read_input(fd, limits)
    finally:
        os.close(fd)


@contextmanager
def file_view(
    path: str | os.PathLike[str], limits: InputLimits = DEFAULT_LIMITS
) -> Iterator[memoryview]:
    """A read-only view of a whole regular file, read into memory (see :func:`read_file`)."""
    yield memoryview(read_file(path, limits))


def looks_like_dicom(head: bytes) -> bool:
    """Whether a file's first bytes look like DICOM: the DICM prefix, or a bare dataset start."""
    if head[PREAMBLE_LENGTH : PREAMBLE_LENGTH + len(MAGIC)] == MAGIC:
        return True
    if len(head) < 8:
        return False
    orders: tuple[Literal["little", "big"], ...] = ("little", "big")
    for order in orders:
        group = int.from_bytes(head[0:2], order)
        element = int.from_bytes(head[2:4], order)
        if group in _FIRST_GROUPS and element < 0x0100:
            return True
    return False


def sniff_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether the file's content looks like DICOM (see :func:`looks_like_dicom`)."""
    with open(path, "rb") as stream:
        return looks_like_dicom(stream.read(PREAMBLE_LENGTH + len(MAGIC)))


def read_dataset(path: str | os.PathLike[str], *, named_as_dicom: bool = False) -> Dataset:
    """Read a whole DICOM file (pixel data included); see :func:`parse_dataset`."""
    return parse_dataset(read_file(path), named_as_dicom=named_as_dicom)


def parse_dataset(
    data: bytes, *, named_as_dicom: bool = False, limits: InputLimits = DEFAULT_LIMITS
) -> Dataset:
    """Parse a whole DICOM file held in ``data``; refuse what is not DICOM by content.

    pydicom reads leniently: a value cut short by the end of the file is kept short, and the
    elements after it are lost without a word. Such a file is refused here, as is a deflated
    dataset that would inflate past ``limits``.

    :param named_as_dicom: the sender called it DICOM (``.dcm``): try harder to parse it.
    """
    if not data:
        raise UnsupportedInputError("empty file (0 bytes)")
    looks = looks_like_dicom(data[: PREAMBLE_LENGTH + len(MAGIC)])
    if not named_as_dicom and not looks:
        raise UnsupportedInputError("not a DICOM file (no DICM prefix and no dataset start)")
    try:
        with pydicom_messages_by_tag():
            _check_inflated_size(data, limits)
            dataset = pydicom.dcmread(io.BytesIO(data), force=True)
            if not _is_deflated(dataset):
                _check_complete(dataset, len(data))
            # Decode every element now: one pydicom cannot decode (an unknown VR, say) would
            # otherwise be copied raw into an output that no reader accepts.
            for _ in dataset.iterall():
                pass
    except (OSError, EOFError, UnsupportedInputError):
        raise
    except RecursionError:
        raise UnsupportedInputError(_TOO_DEEP) from None
    except Exception as exc:
        raise UnsupportedInputError(f"unreadable DICOM ({type(exc).__name__})") from None
    if not looks and "SOPInstanceUID" not in dataset:
        raise UnsupportedInputError("not a DICOM file (named as one, but nothing reads as DICOM)")
    return dataset


def transfer_syntax_of(data: bytes) -> str | None:
    """The TransferSyntaxUID of a file's meta group, read from its bytes; None without one."""
    if data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + len(MAGIC)] != MAGIC:
        return None
    meta = data[: dataset_offset(data, deflated=False)]
    at = meta.find(_TRANSFER_SYNTAX_HEADER)
    if at < 0:
        return None
    length = int.from_bytes(meta[at + 6 : at + 8], "little")
    start = at + len(_TRANSFER_SYNTAX_HEADER) + 2
    return meta[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")


def read_header(data: bytes, keywords: tuple[str, ...]) -> Dataset | None:
    """The file meta and the top-level ``keywords`` of a whole file, without its pixel data.

    None for a deflated file (pydicom would inflate all of it: :func:`parse_dataset` reads it
    within bounds) and for what pydicom cannot read this way.
    """
    offset = dataset_offset(data, deflated=False) if data[PREAMBLE_LENGTH:][:4] == MAGIC else 0
    if offset and _DEFLATED_META_VALUE in data[:offset]:
        return None
    try:
        return pydicom.dcmread(
            io.BytesIO(data), force=True, stop_before_pixels=True, specific_tags=list(keywords)
        )
    except RecursionError:
        raise UnsupportedInputError(_TOO_DEEP) from None
    except Exception:
        return None


def _is_deflated(dataset: Dataset) -> bool:
    meta = getattr(dataset, "file_meta", None)
    return meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian


def _check_complete(dataset: Dataset, size: int) -> None:
    """Refuse a dataset whose last value was cut short by the end of the file."""
    tags = dataset.keys()
    for tag in tags:
        raw = dataset.get_item(tag)
        if not isinstance(raw, RawDataElement) or raw.length == _UNDEFINED_LENGTH:
            continue
        if raw.value_tell + raw.length > size:
            raise EOFError(f"{tag} ends past the end of the file")


def _check_inflated_size(data: bytes, limits: InputLimits) -> None:
    """Refuse a deflated dataset that inflates past ``limits``, inflating it piece by piece."""
    if data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + len(MAGIC)] != MAGIC:
        return
    if _DEFLATED_META_VALUE not in data[: dataset_offset(data, deflated=False)]:
        return
    start = dataset_offset(data, deflated=True)
    compressed = memoryview(data)[start:]
    bound = min(limits.max_inflated_bytes, max(len(compressed), 1) * limits.max_inflate_ratio)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = 0
    try:
        for offset in range(0, len(compressed), _INFLATE_INPUT_BLOCK):
            pending: bytes | memoryview = compressed[offset : offset + _INFLATE_INPUT_BLOCK]
            while pending:
                inflated += len(inflater.decompress(pending, _INFLATE_OUTPUT_BLOCK))
                if inflated > bound:
                    raise UnsupportedInputError(
                        "refused: the deflated dataset inflates past the limit of "
                        f"{limits.max_inflate_ratio} times its size or "
                        f"{limits.max_inflated_bytes} bytes (max_inflate_ratio, "
                        "max_inflated_bytes)"
                    )
                # At the end of the stream a trailing pad byte may stay in the tail for good.
                pending = b"" if inflater.eof else inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error:
        raise UnsupportedInputError("unreadable DICOM (corrupt deflated data)") from None


def dataset_offset(data: bytes, *, deflated: bool) -> int:
    """Where the dataset starts after the preamble and a file meta group with its length.

    :param deflated: the file meta names the deflated transfer syntax: refuse it without the
        group length (else the whole file is searched for the transfer syntax).
    """
    start = PREAMBLE_LENGTH + len(MAGIC)
    if data[start : start + 6] != b"\x02\x00\x00\x00UL":
        if not deflated:
            return len(data)
        raise UnsupportedInputError("unreadable DICOM (deflated, with no file meta group length)")
    return start + 12 + int.from_bytes(data[start + 8 : start + 12], "little")
