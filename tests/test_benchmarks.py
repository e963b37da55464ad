"""Smoke test of the benchmark suite: ``make bench``'s entry point, real tools, tiny corpora.

It checks the report's shape (every row, every target, the file written), never the numbers:
those depend on the machine and its load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

EXPECTED_ROWS = (
    "airflow-pseudo fast path, 1 worker",
    "airflow-pseudo fast path, 2 workers",
    "airflow-pseudo fast path, 1 worker, durability none (no sync)",
    "airflow-pseudo reference engine, 1 worker",
    "pydicom dcmread + save_as, no changes",
    "plain file copy (shutil.copyfile)",
    "PyMedPhys pseudonymise",
    "dcmanon (Rust core)",
)
EXPECTED_TARGETS = (
    "CT: fast path (1 worker) >= 1.0x dcmanon",
    "CT: fast path (1 worker) >= 30x PyMedPhys",
    "Mixed: fast path (1 worker) >= 5x pydicom round trip",
    "CT: 2 workers >= 0.8 x 2 x 1 worker",
)


@pytest.mark.slow
def test_quick_benchmark_writes_every_row(tmp_path: Path) -> None:
    output = tmp_path / "report.md"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--files=6",
            "--mixed-files=7",
            "--repeats=1",
            "--workers=2",
            f"--output={output}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert output.exists()
    report = output.read_text()
    assert report.strip() in completed.stdout
    for corpus in ("## CT corpus", "## MIXED corpus"):
        section = report.split(corpus, 1)[1].split("\n## ", 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("| ")]
        labels = [row.split("|")[1].strip() for row in rows[1:]]
        assert labels == list(EXPECTED_ROWS), corpus
        measured = {row.split("|")[1].strip(): row for row in rows[1:]}
        for label, row in measured.items():
            if label != "dcmanon (Rust core)":  # skipped unless installed
                assert "skipped" not in row, row
                assert "crashed" not in row, row
    for target in EXPECTED_TARGETS:
        assert any(
            line.startswith(("- **PASS** ", "- **FAIL** ", "- **N/A** ")) and target in line
            for line in report.splitlines()
        ), target
    assert "CPU:" in report
    assert "Python 3." in report
