"""Fixtures for the pseudonymisation core: keys, settings, sample datasets and corpora."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation import (
    Pseudonymiser,
    PseudonymKey,
    Settings,
    default_profile,
)
from airflow_pseudo.pseudonymisation.sources import KeyedSource
from airflow_pseudo.testing import make_instance, write_corpus

OTHER_KEY = b"another project key, for unlinkability checks"


@pytest.fixture
def key(key_bytes: bytes) -> PseudonymKey:
    """The test project key."""
    return PseudonymKey(key_bytes)


@pytest.fixture
def other_key() -> PseudonymKey:
    """A second key, whose pseudonyms must be unlinkable to the first's."""
    return PseudonymKey(OTHER_KEY)


@pytest.fixture
def settings(key: PseudonymKey) -> Settings:
    """Default settings: keyed strategy, default profile."""
    return Settings(key=key)


@pytest.fixture
def source(key: PseudonymKey) -> KeyedSource:
    """The keyed source under the test key."""
    return KeyedSource(key)


@pytest.fixture
def pseudonymiser(source: KeyedSource) -> Pseudonymiser:
    """A keyed pseudonymiser with the default profile."""
    return Pseudonymiser(source, default_profile())


def _testdata(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    assert isinstance(path, str), name
    return pydicom.dcmread(path, force=True)


@pytest.fixture
def testdata() -> Callable[[str], Dataset]:
    """Read one of pydicom's bundled files by name (force: some have no preamble)."""
    return _testdata


@pytest.fixture
def ct() -> Dataset:
    """A CT instance of patient 1 with planted fake PHI."""
    return make_instance("ct", patient=1)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only corpus: 3 patients (one non-ASCII), CT, MR, RT plan/dose/struct series."""
    root = tmp_path_factory.mktemp("corpus") / "in"
    write_corpus(
        root,
        patients=3,
        series_per_study=5,
        instances_per_series=1,
        templates=("ct", "mr", "rtplan", "rtdose", "rtstruct"),
    )
    return root


@pytest.fixture
def corpus(tmp_path: Path, corpus_dir: Path) -> Path:
    """A private copy of the corpus, for tests that put things beside it."""
    target = tmp_path / "in"
    shutil.copytree(corpus_dir, target)
    return target


@pytest.fixture(scope="session")
def pydicom_test_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of every file bundled in pydicom's test data."""
    source = Path(pydicom.__file__).parent / "data" / "test_files"
    target = tmp_path_factory.mktemp("pydicom") / "test_files"
    shutil.copytree(source, target)
    return target


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _all_texts(ds: Dataset) -> Iterator[str]:
    meta = getattr(ds, "file_meta", None)
    elements = list(meta) if meta is not None else []
    for element in elements + list(ds.iterall()):
        if element.VR == "SQ":
            continue
        value = element.value
        if isinstance(value, bytes):
            continue
        if isinstance(value, list | pydicom.multival.MultiValue):
            yield from (str(v) for v in value)
        else:
            yield str(value)


@pytest.fixture
def tree_digest() -> Callable[[Path], dict[str, str]]:
    """Relative path → SHA-256 of every file below a folder."""
    return _tree_digest


@pytest.fixture
def all_texts() -> Callable[[Dataset], str]:
    """Every text value of a dataset (file meta and nested items included), one per line."""
    return lambda ds: "\n".join(_all_texts(ds))


def _pages_in_cache(path: Path) -> int:
    """How many of a file's pages are in the page cache (``mincore`` on a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with path.open("rb") as file:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, file.fileno(), 0)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    try:
        resident = ctypes.create_string_buffer(pages)
        if libc.mincore(address, size, resident) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return sum(byte & 1 for byte in resident.raw)
    finally:
        libc.munmap(address, size)


@pytest.fixture
def pages_in_cache(tmp_path: Path) -> Callable[[Path], int]:
    """Count a file's pages in the page cache; skips where the kernel keeps a synced file's pages.

    Linux drops a synced file's pages when advised to (``POSIX_FADV_DONTNEED``) on disk file
    systems, not on tmpfs, which has nowhere else to keep them.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "posix_fadvise"):
        pytest.skip("page-cache residency is checked on Linux")
    probe = tmp_path / "page-cache-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 4 * mmap.PAGESIZE)
        os.fsync(fd)
        written = _pages_in_cache(probe)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if written == 0 or _pages_in_cache(probe) != 0:
        pytest.skip("this file system keeps a synced file's pages whatever it is advised")
    probe.unlink()
    return _pages_in_cache
