"""Smoke test of the benchmark suite: ``make bench``'s entry point, real tools, tiny corpora.

It checks the report's shape (every row, every target, the file written), never the numbers:
those depend on the machine and its load.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_pseudo.testing import write_ct_copies
from benchmarks import ceiling, measure
from benchmarks.ceiling import cpu_scaling
from benchmarks.measure import Measurement
from benchmarks.report import core_share, paired_ratio, split_line, targets, write_back_line

REPO_ROOT = Path(__file__).resolve().parent.parent

EXPECTED_ROWS = (
    "airflow-pseudo fast path, 1 worker",
    "airflow-pseudo fast path, 2 workers",
    "airflow-pseudo fast path, 2 processes on fixed shares",
    "airflow-pseudo fast path, 1 worker, durability none (no sync)",
    "airflow-pseudo fast path, 2 workers, durability none (no sync)",
    "airflow-pseudo reference engine, 1 worker",
    "airflow-pseudo validate, 1 worker, with the key",
    "pydicom dcmread + save_as, no changes",
    "plain file copy (shutil.copyfile)",
    "PyMedPhys pseudonymise",
    "dcmanon (Rust core)",
)
EXPECTED_TARGETS = (
    "CT: fast path (1 worker) >= 1.0x dcmanon",
    "CT: fast path (1 worker) >= 30x PyMedPhys",
    "Mixed: fast path (1 worker) >= 5x pydicom round trip",
    "CT: validate (1 worker) >= 0.5x fast path (1 worker)",
    "Mixed: validate (1 worker) >= 0.5x fast path (1 worker)",
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
    validate_rows = [
        line for line in report.splitlines() if line.startswith("| airflow-pseudo validate")
    ]
    assert len(validate_rows) == 2
    assert all("key checks: passed" in row and "failed" not in row for row in validate_rows)
    assert "CPU:" in report
    assert "Python 3." in report
    assert "- Context for the 2-worker target: in the same rounds, a CPU-bound" in report
    assert "- Context for the 2-worker target: in the same rounds, a fixed split" in report
    assert "- Context for the 2-worker target: without syncing" in report


def test_the_cpu_ceiling_is_work_done_in_n_processes_over_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2 processes taking 1.25 s where one takes 1 s did 1.6 times one process's work."""
    assert 0.5 < cpu_scaling(1, iterations=50_000) < 2.0  # real forks: one against itself
    seconds = {1: 1.0, 2: 1.25}
    monkeypatch.setattr(ceiling, "_timed", lambda processes, iterations: seconds[processes])
    assert ceiling.cpu_scaling(2) == pytest.approx(1.6)


def _measured(tool: str, seconds: list[float], rounds: list[int]) -> Measurement:
    return Measurement(tool, "ct", 100, 4_000_000, seconds=seconds, rounds=rounds)


def test_ratios_are_paired_by_round_so_a_slow_spell_cancels_out() -> None:
    """Round 1 ran everything twice as slowly: the paired ratio still says 2x, every round."""
    ours = _measured("fast-1", [1.0, 2.0, 1.0], [0, 1, 2])
    theirs = _measured("roundtrip", [2.0, 4.0, 2.0], [0, 1, 2])
    assert paired_ratio(ours, theirs) == pytest.approx(2.0)
    # Slow spells that hit the two tools in different rounds: the median ratio ignores them.
    ours = _measured("fast-1", [1.0, 3.0, 1.0, 1.0, 1.0], [0, 1, 2, 3, 4])
    theirs = _measured("roundtrip", [2.0, 2.0, 2.0, 6.0, 2.0], [0, 1, 2, 3, 4])
    assert paired_ratio(ours, theirs) == pytest.approx(2.0)


def test_paired_ratio_uses_only_rounds_both_ran_in() -> None:
    ours = _measured("fast-1", [1.0, 1.0, 1.0], [0, 1, 2])
    budgeted = _measured("pymedphys", [30.0], [1])  # sat out rounds 0 and 2 (budget)
    assert paired_ratio(ours, budgeted) == pytest.approx(30.0)
    assert math.isnan(paired_ratio(ours, None))
    crashed = _measured("dcmanon", [], [])
    crashed.error = "exit 1"
    assert math.isnan(paired_ratio(ours, crashed))


def test_targets_are_judged_on_paired_ratios() -> None:
    results = {
        ("ct", "fast-1"): _measured("fast-1", [1.0, 2.0], [0, 1]),
        ("ct", "fast-n"): _measured("fast-n", [0.6, 1.2], [0, 1]),  # 1.67x in both rounds
    }
    results["ct", "validate"] = _measured("validate", [1.8, 4.4], [0, 1])  # 0.56x, 0.45x
    verdicts = {t.name: t.verdict for t in targets(results, workers=2)}
    assert verdicts["CT: 2 workers >= 0.8 x 2 x 1 worker"] == "PASS"
    assert verdicts["CT: validate (1 worker) >= 0.5x fast path (1 worker)"] == "PASS"
    assert verdicts["Mixed: validate (1 worker) >= 0.5x fast path (1 worker)"] == "N/A"
    assert verdicts["CT: fast path (1 worker) >= 1.0x dcmanon"] == "N/A"
    results["ct", "fast-n"] = _measured("fast-n", [0.7, 1.4], [0, 1])  # 1.43x
    verdicts = {t.name: t.verdict for t in targets(results, workers=2)}
    assert verdicts["CT: 2 workers >= 0.8 x 2 x 1 worker"] == "FAIL"


def test_the_split_reference_pseudonymises_every_file_once_across_its_processes(
    tmp_path: Path,
) -> None:
    """Three forked processes on fixed shares: every file has one output, counts add up."""
    files = [str(p) for p in write_ct_copies(tmp_path / "in", 7)]
    run, version = measure._ours_split(3)
    counts = run(files, tmp_path / "out")
    assert counts == {"ok": 7, "engine:fast": 7}
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 7
    assert version.startswith("airflow-pseudo ")


def test_the_split_line_compares_the_workers_with_the_split_round_by_round() -> None:
    results = {
        ("ct", "fast-1"): _measured("fast-1", [1.0, 2.0], [0, 1]),
        ("ct", "fast-split"): _measured("fast-split", [0.55, 1.1], [0, 1]),  # 1.82x
        ("ct", "fast-n"): _measured("fast-n", [0.625, 1.25], [0, 1]),  # 1.6x: 88 % of it
    }
    line = split_line(results, workers=2)
    assert line is not None
    assert "did 1.82x one worker, and the 2 workers 88% of that split's rate" in line
    del results["ct", "fast-split"]
    assert split_line(results, workers=2) is None


def test_each_timed_run_records_the_machines_idle_and_stolen_core_time(tmp_path: Path) -> None:
    """Read from /proc/stat around the timed run: one value per run, never negative."""
    files = [str(p) for p in write_ct_copies(tmp_path / "in", 3)]
    spec = measure.Spec("fast-1", "ct", files, str(tmp_path / "out"), max_repeats=2)
    m = measure.measure(spec)
    assert m.counts == {"ok": 3, "engine:fast": 3}
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat here")
    assert len(m.idle_seconds) == len(m.steal_seconds) == len(m.seconds) == 2
    assert min(m.idle_seconds + m.steal_seconds) >= 0


def test_the_write_back_line_gives_the_workers_without_sync_and_the_cores_time() -> None:
    results = {
        ("ct", "fast-1-nosync"): _measured("fast-1-nosync", [1.0, 2.0], [0, 1]),
        ("ct", "fast-n-nosync"): _measured("fast-n-nosync", [0.55, 1.1], [0, 1]),  # 1.82x
    }
    line = write_back_line(results, workers=2, cores=2)
    assert line is not None
    assert "2 workers did 1.82x one worker (paired medians)." in line
    assert "steal" not in line  # the synced rows are missing
    # 2 cores for 0.5 s: 0.1 core-second stolen is 10 % of their time.
    results["ct", "fast-n"] = _measured("fast-n", [0.5, 0.5], [0, 1])
    results["ct", "fast-n"].steal_seconds = [0.1, 0.1]
    results["ct", "fast-n"].idle_seconds = [0.05, 0.15]
    results["ct", "fast-1"] = _measured("fast-1", [1.0, 1.0], [0, 1])
    results["ct", "fast-1"].steal_seconds = [0.0, 0.0]
    results["ct", "fast-1"].idle_seconds = [1.0, 1.0]
    assert core_share(results["ct", "fast-n"], "steal_seconds", 2) == pytest.approx(0.1)
    line = write_back_line(results, workers=2, cores=2)
    assert line is not None
    assert "the hypervisor took 10.0% of the 2 cores' time during the 2-worker runs" in line
    assert (
        "(steal; 0.0% during the 1-worker runs), and the cores were idle 10.0% of it (50.0%)"
        in line
    )
    del results["ct", "fast-n-nosync"]
    assert write_back_line(results, workers=2, cores=2) is None
