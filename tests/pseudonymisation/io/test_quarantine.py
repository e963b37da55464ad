"""Tests for the quarantine: whole copies with their reasons, private, or nothing at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

from airflow_pseudo.pseudonymisation.io.quarantine import quarantine, quarantine_copy


def test_a_copy_and_its_reason_are_private(tmp_path: Path):
    source = tmp_path / "in.dcm"
    source.write_bytes(b"original" * 1000)
    folder = tmp_path / "q"
    fd = os.open(source, os.O_RDONLY)
    try:
        copy = quarantine_copy(fd, source, "unreadable DICOM", folder)
    finally:
        os.close(fd)
    assert copy is not None and Path(copy).read_bytes() == source.read_bytes()
    reason = json.loads(Path(copy).with_suffix(".json").read_text())
    assert reason == {"source": str(source), "reason": "unreadable DICOM"}
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o600}


def test_a_failed_copy_leaves_nothing(tmp_path: Path):
    """A descriptor that cannot be read (a folder's): no copy, no reason, no temporary file."""
    folder = tmp_path / "q"
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert quarantine_copy(fd, tmp_path / "x.dcm", "reason", folder) is None
    finally:
        os.close(fd)
    assert list(folder.iterdir()) == []


def test_a_move_keeps_the_content_and_makes_it_private(tmp_path: Path):
    output = tmp_path / "out.dcm"
    output.write_bytes(b"output")
    output.chmod(0o644)
    moved = quarantine(output, "invalid", tmp_path / "q", move=True)
    assert moved is not None and not output.exists()
    assert Path(moved).read_bytes() == b"output"
    assert Path(moved).stat().st_mode & 0o777 == 0o600
