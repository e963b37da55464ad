"""Smoke test of the orchestration-overhead benchmark: ``make bench-orchestration``, tiny corpus.

It runs the real CLI and the real mapped DAG with ``dag.test()`` twice on 40 files in batches
of at least 10, at most 3 of them, and checks the report's shape (both times, the verdict lines,
the rounds, the XCom record counts), never the numbers: those depend on the machine and its load.
Every XCom value goes through Airflow's object-storage backend (threshold 0), as a batch's records
do in the shipped deployments.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FILES = 40
BATCH_SIZE = 10
MAX_BATCHES = 3

SECONDS = r"\*\*[\d,]+\.\d\*\*"
EXPECTED_LINES = (
    r"^\| CLI `airflow-pseudo pseudonymise` \| [\d,]+\.\d \|",
    r"^\| CLI `airflow-pseudo validate` \| [\d,]+\.\d \|",
    rf"^\| \*\*CLI total\*\* \| {SECONDS} \|",
    rf"^\| \*\*DAG `dicom_pseudonymise_mapped`, `dag.test\(\)`\*\* \| {SECONDS} \|",
    r"^\| \*\*Overhead \(DAG - CLI total\)\*\* \| \*\*-?[\d,]+\.\d\*\* \|",
    r"^- \*\*(PASS|FAIL)\*\* overhead < 60 s: DAG ",
    rf"^- XCom pseudonymise records: {FILES} for {FILES} files \({FILES} distinct sources; ",
    rf"^- XCom validate records: {FILES} for {FILES} files \({FILES} distinct sources; ",
    r"^- XCom records match N: \*\*yes\*\*$",
    r"^- DAG run state: success$",
    r"^- \*\*(PASS|FAIL)\*\* DAG <= 5x the CLI's pseudonymise time: DAG [\d.]+ s / CLI "
    r"pseudonymise [\d.]+ s = [\d.]+x$",
    rf"^- Published files: {FILES}; ",
    r"^- The DAG's subprocess migrated its SQLite database in [\d.]+ s, parsed the DAG file in "
    r"[\d.]+ s and started the in-process Execution API \(the API server a deployment keeps "
    r"running\) in [\d.]+ s before the timer started",
    r"^- Rounds: 2 \(each the CLI, then the DAG, on the same files\); DAG / CLI pseudonymise "
    r"per round: [\d.]+x, [\d.]+x\. The report shows the round with the median ratio\.$",
)


@pytest.mark.slow
def test_orchestration_benchmark_reports_both_times(tmp_path: Path) -> None:
    output = tmp_path / "orchestration.md"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.orchestration",
            f"--files={FILES}",
            f"--batch-size={BATCH_SIZE}",
            f"--max-batches={MAX_BATCHES}",
            "--xcom-threshold=0",
            "--settle=0",
            "--workers=1",
            "--dag-workers=2",
            "--rounds=2",
            f"--output={output}",
            f"--workdir={tmp_path / 'work'}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert output.exists()
    report = output.read_text()
    assert report.strip() in completed.stdout
    for pattern in EXPECTED_LINES:
        assert re.search(pattern, report, re.MULTILINE), pattern
    assert f"N = {FILES} " in report
    assert (
        f"batch size B = {BATCH_SIZE} at least, at most {MAX_BATCHES} batches "
        f"({MAX_BATCHES} mapped batches)"
    ) in report
    assert "workers: CLI `--workers` 1, DAG `workers` param 2 per mapped task" in report
    assert (
        "in files (object-storage XCom backend, values from 0 bytes on): ingest 1 of 1, "
        f"pseudonymise {MAX_BATCHES} of {MAX_BATCHES}, validate {MAX_BATCHES} of {MAX_BATCHES}"
    ) in report
    assert "CPU:" in report
    assert "Python 3." in report


def test_the_report_shows_the_median_round_or_the_first_failure() -> None:
    from benchmarks.orchestration import CliResult, DagResult, reported_round

    def pair(cli_s: float, dag_s: float, error: str | None = None) -> tuple[CliResult, DagResult]:
        dag = DagResult(seconds=dag_s, state="success", files=1, claimed=1, sources_match=True)
        dag.pseudonymise_records = dag.pseudonymise_sources = 1
        dag.validate_records = dag.validate_sources = 1
        dag.error = error
        return CliResult(pseudonymise_s=cli_s), dag

    rounds = [pair(4.0, 28.0), pair(4.0, 20.0), pair(3.0, 30.0)]  # 7x, 5x, 10x
    assert reported_round(rounds) is rounds[0]
    assert reported_round(rounds[1:]) is rounds[1]  # of two, the lower
    broken = pair(4.0, 8.0, error="exit 1")
    assert reported_round([*rounds, broken]) is broken
