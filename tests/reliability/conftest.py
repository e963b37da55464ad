"""Shared helpers for the reliability tests: raw DICOM building, digests, invariants, leak scans.

Everything is generated here (nothing is downloaded). Helpers are fixtures returning plain
functions or objects, because test modules are imported with ``--import-mode=importlib``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from airflow_pseudo.pseudonymisation import PseudonymKey, Settings
from airflow_pseudo.pseudonymisation.validation import validate_file

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV"}
_LONG_VRS |= {b"UV"}
UNDEFINED = 0xFFFFFFFF


def pad(value: bytes, vr: bytes = b"LO") -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB", b"UN") else b" "
    return value


def element(tag: int, vr: bytes, value: bytes, *, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element; ``length`` overrides the real value length."""
    value = pad(value, vr)
    size = len(value) if length is None else length
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, elem, vr, size) + value
    return struct.pack("<HH2sH", group, elem, vr, size & 0xFFFF) + value


def item(body: bytes, *, undefined: bool = True) -> bytes:
    if undefined:
        return (
            struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
            + body
            + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        )
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def sequence(tag: int, items: Iterable[bytes]) -> bytes:
    """An undefined-length sequence of undefined-length items."""
    body = b"".join(item(i) for i in items)
    return (
        element(tag, b"SQ", b"", length=UNDEFINED) + body + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )


def file_meta(sop_uid: str, transfer_syntax: str | None = EXPLICIT_LE) -> bytes:
    body = element(0x00020001, b"OB", b"\0\1")
    body += element(0x00020002, b"UI", CT_IMAGE_STORAGE.encode())
    body += element(0x00020003, b"UI", sop_uid.encode())
    if transfer_syntax is not None:
        body += element(0x00020010, b"UI", transfer_syntax.encode())
    body += element(0x00020012, b"UI", b"1.2.3.4")
    group_length = element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"\0" * 128 + b"DICM" + group_length + body


def base_dataset(number: int, *, name: bytes = b"Testperson^Raw") -> list[bytes]:
    """Top-level elements of a small valid CT header, in tag order (no pixel data)."""
    uid = f"1.2.826.0.1.3680043.10.999.{number}"
    return [
        element(0x00080016, b"UI", CT_IMAGE_STORAGE.encode()),
        element(0x00080018, b"UI", f"{uid}.3".encode()),
        element(0x00080060, b"CS", b"CT"),
        element(0x00100010, b"PN", name),
        element(0x00100020, b"LO", f"RAWMRN{number:04d}".encode()),
        element(0x0020000D, b"UI", f"{uid}.1".encode()),
        element(0x0020000E, b"UI", f"{uid}.2".encode()),
    ]


def raw_file(
    number: int, elements: list[bytes], transfer_syntax: str | None = EXPLICIT_LE
) -> bytes:
    sop = f"1.2.826.0.1.3680043.10.999.{number}.3"
    return file_meta(sop, transfer_syntax) + b"".join(elements)


def digest_tree(folder: Path) -> dict[str, str]:
    """SHA-256 of every entry below ``folder`` (links by their target text, not followed)."""
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = "special"
    return out


def no_temp_or_empty_files(folder: Path) -> None:
    """No ``.tmp-*`` leftovers and no empty file anywhere below ``folder``."""
    if not folder.exists():
        return
    for path in folder.rglob("*"):
        assert not path.name.startswith(".tmp-"), f"temporary file left: {path}"
        if path.is_file() and not path.is_symlink():
            assert path.stat().st_size > 0, f"empty output: {path}"


@pytest.fixture
def settings(key_bytes: bytes) -> Settings:
    return Settings(key=PseudonymKey(key_bytes))


@pytest.fixture
def check_records() -> Callable[..., None]:
    """Assert the batch invariants on ``results`` for ``inputs``."""

    def check(
        results: list[Any],
        inputs: list[str],
        output: Path,
        settings: Settings,
        unvalidated: Iterable[str] = (),
    ) -> None:
        skip_validation = set(unvalidated)
        assert sorted(r.source for r in results) == sorted(inputs), "one record per input"
        assert len(results) == len(inputs)
        for r in results:
            assert r.status in {"ok", "skipped", "failed"}
            if r.status == "failed":
                assert r.reason and len(r.reason) < 200, r
                assert r.output is None
            if r.status == "ok":
                out = Path(r.output)
                assert out.is_file() and out.stat().st_size > 0
                assert out.resolve().is_relative_to(output.resolve())
                if Path(r.source).name not in skip_validation:
                    assert validate_file(r.source, r.output, settings=settings) == [], r.source
        no_temp_or_empty_files(output)

    return check


def decodings(data: bytes, charsets: Iterable[str] = ()) -> list[str]:
    """``data`` decoded every way a planted value could hide in it."""
    texts = [data.decode("utf-8", "ignore"), data.decode("latin-1")]
    for charset in charsets:
        with contextlib.suppress(LookupError):
            texts.append(data.decode(charset, "ignore"))
    return texts


def needles(value: str) -> set[str]:
    """A planted value and the pieces of it that must not survive (PN components too)."""
    found = {value}
    if "^" in value:
        found |= {part for part in value.split("^") if len(part) >= 5}
    return found


def scan_bytes(data: bytes, planted: Iterable[str], charsets: Iterable[str] = ()) -> set[str]:
    """Every planted value found in ``data`` under UTF-8, Latin-1 and ``charsets``."""
    texts = decodings(data, charsets)
    hits = set()
    for value in planted:
        for needle in needles(value):
            if any(needle in text for text in texts):
                hits.add(needle)
    return hits


def python_charsets(path: Path) -> list[str]:
    """The Python codecs of a DICOM file's SpecificCharacterSet, if it can be read."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return []
    from pydicom.charset import python_encoding

    terms = ds.get("SpecificCharacterSet") or []
    terms = [terms] if isinstance(terms, str) else list(terms)
    return [python_encoding[t] for t in terms if t in python_encoding]


@pytest.fixture(scope="session")
def rel() -> Any:
    """This module, so tests can use its helpers (``rel.element(...)``, ``rel.scan_bytes``...)."""
    import sys

    return sys.modules[__name__]


@pytest.fixture
def mount_tmpfs() -> Iterator[Callable[[Path, str], Path]]:
    """Mount size-limited tmpfs file systems (root only, as in CI; skip elsewhere), each
    unmounted after the test."""
    mounted: list[Path] = []

    def mount(mount_point: Path, size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a size-limited tmpfs needs root (CI runs these tests as root)")
        mount_point.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(mount_point)
        return mount_point

    yield mount
    for mount_point in reversed(mounted):
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
