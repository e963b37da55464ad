"""Reading inputs: recognising DICOM by content, refusing what is not a regular file inside the
input folder, and reading a whole file.

Inputs are only ever opened for reading.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation.errors import UnsupportedInputError

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
# Groups a dataset without preamble can start with: file meta, or the usual first modules.
_FIRST_GROUPS = frozenset({0x0002, 0x0008})
_READ_WHOLE_LIMIT = 1 << 20  # bytes: files up to this size are read, larger ones mapped


class InputOutsideRootError(UnsupportedInputError):
    """An input reached through a symbolic link that leads outside the input folder."""


def check_input_file(path: str | os.PathLike[str], root: str | os.PathLike[str] | None) -> None:
    """Refuse an input that is not a regular file, or that resolves outside ``root``.

    Checked before any ``open``: opening a FIFO blocks for ever, and a symbolic link planted in
    an incoming folder must not make the tool read (and publish) a file from elsewhere.

    :raises InputOutsideRootError: a symbolic link somewhere in the path leads outside ``root``.
    :raises UnsupportedInputError: a directory, FIFO, socket or device.
    :raises FileNotFoundError: the file (or a link's target) does not exist.
    """
    InputFolder(root).check(path)


class InputFolder:
    """Checks inputs against one input root, remembering the folders already found inside it.

    A batch holds many files per folder: each folder is resolved once, then each file costs one
    ``lstat``. A file that is itself a symbolic link is always resolved in full.
    """

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root).resolve() if root is not None else None
        self._inside: set[str] = set()

    def check(self, path: str | os.PathLike[str]) -> None:
        """See :func:`check_input_file`."""
        status = os.lstat(path)
        if self.root is not None:
            # The folder as written, not normalised: "a/link/../b" is not "a/b" when "link" is
            # a symbolic link.
            path = os.fspath(path)
            folder = os.path.dirname(
                path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
            )
            if stat.S_ISLNK(status.st_mode) or folder not in self._inside:
                self._check_inside(Path(path).resolve())
                if not stat.S_ISLNK(status.st_mode):
                    self._inside.add(folder)
        if stat.S_ISLNK(status.st_mode):
            status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            raise UnsupportedInputError("not a regular file (a directory, FIFO, socket or device)")

    def _check_inside(self, target: Path) -> None:
        assert self.root is not None
        if target != self.root and self.root not in target.parents:
            raise InputOutsideRootError(
                "refused: the input lies outside the input folder (a link leading out of it)"
            )


def sniff_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether the file's content looks like DICOM: the DICM prefix, or a bare dataset start."""
    with open(path, "rb") as stream:
        head = stream.read(PREAMBLE_LENGTH + len(MAGIC))
    if head[PREAMBLE_LENGTH:] == MAGIC:
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


def read_dataset(path: str | os.PathLike[str], *, named_as_dicom: bool = False) -> Dataset:
    """Read a whole DICOM file (pixel data included); refuse what is not DICOM by content.

    :param named_as_dicom: the sender called it DICOM (``.dcm``): try harder to parse it.
    """
    if os.path.getsize(path) == 0:
        raise UnsupportedInputError("empty file (0 bytes)")
    looks_like_dicom = sniff_dicom(path)
    if not named_as_dicom and not looks_like_dicom:
        raise UnsupportedInputError("not a DICOM file (no DICM prefix and no dataset start)")
    try:
        dataset = pydicom.dcmread(path, force=True)
        # Decode every element now: one pydicom cannot decode (an unknown VR, say) would
        # otherwise be copied raw into an output that no reader accepts.
        for _ in dataset.iterall():
            pass
    except (OSError, EOFError):
        raise
    except Exception as exc:
        raise UnsupportedInputError(f"unreadable DICOM ({type(exc).__name__})") from None
    if not looks_like_dicom and "SOPInstanceUID" not in dataset:
        raise UnsupportedInputError("not a DICOM file (named as one, but nothing reads as DICOM)")
    return dataset


def iter_files(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Every regular file below ``folder``, recursively, hidden files included.

    Sorted by path text, the order :func:`.incoming.find_settled_files` uses, so a folder and
    the same files listed by the sensor are processed in the same order.
    """
    paths = [
        Path(dirpath) / name for dirpath, _, filenames in os.walk(folder) for name in filenames
    ]
    yield from (path for path in sorted(paths, key=str) if path.is_file())


@contextmanager
def file_view(path: str | os.PathLike[str]) -> Iterator[memoryview]:
    """A read-only view of a whole file: read into memory when small, memory-mapped when large.

    A large file (multi-frame pixel data) is mapped, so the output's chunks are slices of the map
    and the file is never held twice; a small one costs less read than mapped. Chunks sliced from
    a map may outlive the block (in an exception, say): the map is then closed when the last of
    them is dropped instead of at the end of the block.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        size = os.fstat(fd).st_size
        if size <= _READ_WHOLE_LIMIT:
            data: bytes | mmap.mmap = _read_whole(fd, size)
        else:
            data = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    if isinstance(data, bytes):
        yield memoryview(data)
        return
    try:
        yield memoryview(data)
    finally:
        with suppress(BufferError):
            data.close()


def _read_whole(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd``, fewer if the file shrank meanwhile; a read may come short."""
    data = os.read(fd, size)
    while len(data) < size:
        block = os.read(fd, size - len(data))
        if not block:
            break
        data += block
    return data
