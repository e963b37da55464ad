"""`make demo` (python -m airflow_pseudo.demo) works from a fresh folder, twice in a row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow_pseudo.demo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_demo_runs_twice_on_new_files(tmp_path: Path):
    """Each demo run generates a new batch, runs the DAG and prints the per-file table."""
    first = _demo(tmp_path, "--patients", "1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Per-file results" in first.stdout
    assert first.stdout.count("published") >= 4
    key_file = tmp_path / ".airflow-home" / "pseudo.key"
    key = key_file.read_text()
    assert key.strip() not in first.stdout + first.stderr

    second = _demo(tmp_path, "--patients", "1", "--with-bad-file")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "quarantined" in second.stdout
    assert key_file.read_text() == key  # generated once

    runs = sorted((tmp_path / "demo-data" / "published").iterdir())
    assert len(runs) == 2
    summaries = [
        json.loads(p.read_text().splitlines()[-1]) for p in (r / "manifest.jsonl" for r in runs)
    ]
    assert sorted(s["published"] for s in summaries) == [4, 4]
    assert sorted(s["quarantined"] for s in summaries) == [0, 1]
    assert not list((tmp_path / "demo-data" / "incoming").rglob("*.dcm"))
