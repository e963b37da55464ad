"""A full file system: outputs, quarantine and results on a 1 MiB tmpfs mounted for the test.

Mounting needs root (as in CI); elsewhere the test skips with a message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from airflow_pseudo.testing import make_instance

WORKTREE = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_disk(tmp_path: Path, mount_tmpfs: Callable[[Path, str], Path]) -> Path:
    """A 1 MiB tmpfs, unmounted afterwards."""
    return mount_tmpfs(tmp_path / "disk", "1m")


@pytest.mark.parametrize("results_on", ["full-disk", "other-disk"])
def test_a_full_disk_fails_files_alone_and_leaves_consistent_results(
    tmp_path: Path, small_disk: Path, key_bytes: bytes, results_on: str
):
    """Outputs, quarantine copies and the results file all compete for 1 MiB.

    Whatever fills first: no traceback; every results line parses and the records are the first
    ones in input order; every output on the disk is named by a record (and every ok record's
    output exists); no temporary file, no empty file, no copy without its reason or reason
    without its copy; the console counts only the copies made; exit status 1.
    """
    incoming = tmp_path / "in"
    incoming.mkdir()
    for number in range(1, 61):
        path = incoming / f"{number:03d}.dcm"
        pydicom.dcmwrite(
            path, make_instance("ct", patient=number, series=number), enforce_file_format=True
        )
        if number % 4 == 0:  # a bad file now and then, to be quarantined as the disk fills
            path.write_bytes(path.read_bytes()[:-200])
    key_file = tmp_path / "project.key"
    key_file.write_bytes(key_bytes)
    results_file = (small_disk if results_on == "full-disk" else tmp_path) / "results.jsonl"
    quarantine = small_disk / "quarantine"
    run = subprocess.run(
        [sys.executable, "-m", "airflow_pseudo.cli", "pseudonymise", str(incoming),
         "-o", str(small_disk / "out"), "--quarantine", str(quarantine),
         "--key-file", str(key_file), "--results", str(results_file)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(WORKTREE)},
    )  # fmt: skip
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 1, (run.stdout, run.stderr)
    inputs = sorted(str(p) for p in incoming.iterdir())

    records = [json.loads(line) for line in results_file.read_text().splitlines()]
    assert [r["source"] for r in records] == inputs[: len(records)]
    if results_on == "other-disk":
        assert len(records) == len(inputs)
        assert results_file.stat().st_mode & 0o777 == 0o600
    assert any("No space left on device" in (r.get("reason") or "") for r in records) or (
        "results file could not be written" in run.stderr
    ), "the disk never filled: make the test's disk smaller"

    outputs = {str(p) for p in (small_disk / "out").rglob("*") if p.is_file()}
    named = {r["output"] for r in records if r["status"] == "ok"}
    assert outputs == named

    everything = [p for p in small_disk.rglob("*") if p.is_file()]
    assert not [p for p in everything if p.name.startswith(".tmp")]
    assert not [p for p in everything if p.stat().st_size == 0]
    copies = {p.stem for p in quarantine.glob("*.dcm")} if quarantine.exists() else set()
    reasons = {p.stem for p in quarantine.glob("*.json")} if quarantine.exists() else set()
    assert copies == reasons
    for reason in reasons:
        assert json.loads((quarantine / f"{reason}.json").read_text())["reason"]
    for record in records:
        if record["quarantine"]:
            assert Path(record["quarantine"]).stem in copies
    if copies:
        assert f"; {len(copies)} failed input(s) copied to" in run.stdout
    else:
        assert "copied" not in run.stdout
