"""Build the corpora, time every tool on the same files, print and save the Markdown report.

``make bench`` runs ``python -m benchmarks.run``; see ``--help`` for the options. This is a
benchmark, not a test: target verdicts are printed, and the exit status is 0 unless a measurement
crashed (an exception escaped a tool's harness, not a per-file failure that is counted).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from benchmarks import settle
from benchmarks.ceiling import cpu_scaling
from benchmarks.corpus import Corpus, build_ct, build_mixed
from benchmarks.measure import TOOLS, Measurement, Spec, write_pymedphys_home
from benchmarks.report import Machine, markdown, tool_label

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "latest.md"
DCMANON_ENV_VAR = "DCMANON_PYTHON"
DCMANON_HOW_TO = (
    "dcmanon is not a project dependency (nor in constraints.txt). To include it, install it "
    "where the benchmark can import it: `.venv/bin/pip install dcmanon==0.3.1`, or keep the "
    "project venv clean with `python3.11 -m venv /tmp/dcmanon-venv && "
    "/tmp/dcmanon-venv/bin/pip install dcmanon==0.3.1` and run "
    f"`{DCMANON_ENV_VAR}=/tmp/dcmanon-venv/bin/python make bench` "
    "(or `--dcmanon-python /tmp/dcmanon-venv/bin/python`)."
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Time airflow-pseudo against its peers on the same generated DICOM files.",
    )
    parser.add_argument("--files", type=int, help="CT corpus size (1000; 100 with --quick)")
    parser.add_argument(
        "--mixed-files", type=int, help="approximate mixed corpus size (half of --files)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="100 CT files and a short repetition budget (~1 min)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=9,
        help="rounds: each runs every tool once, interleaved (9)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        help="no further round for a tool once its runs took this many seconds (20; 3 quick)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="N for the N-worker row (cores)"
    )
    parser.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help=f"comma-separated subset of {','.join(TOOLS)} (all)",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown report (%(default)s)"
    )
    parser.add_argument(
        "--dcmanon-python",
        default=os.environ.get(DCMANON_ENV_VAR),
        help=f"interpreter that can import dcmanon, if this one cannot (${DCMANON_ENV_VAR})",
    )
    parser.add_argument(
        "--workdir", type=Path, help="build corpora and outputs here and keep them (a temp dir)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        help="seconds from a sync to the first run (60; 0 with --quick): files deleted shortly "
        "before (a test run, say) slow file creation on ext4 without a journal (settle.py)",
    )
    args = parser.parse_args(argv)
    if args.files is None:
        args.files = 100 if args.quick else 1000
    if args.mixed_files is None:
        args.mixed_files = max(1, args.files // 2)
    if args.budget is None:
        args.budget = 3.0 if args.quick else 20.0
    if args.settle is None:
        args.settle = 0.0 if args.quick else settle.DEFAULT_SECONDS
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown or not tools:
        parser.error(f"--tools: unknown or missing {unknown}; choose from {','.join(TOOLS)}")
    args.tools = [t for t in TOOLS if t in tools]
    if args.files < 1 or args.mixed_files < 1 or args.repeats < 1 or args.workers < 1:
        parser.error("--files, --mixed-files, --repeats and --workers must be at least 1")
    return args


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def dcmanon_interpreter(configured: str | None) -> str | None:
    """This interpreter if it imports dcmanon, else the configured one, else None (skip)."""
    if importlib.util.find_spec("dcmanon") is not None:
        return sys.executable
    if configured and shutil.which(configured) is None:
        _log(f"{configured} is not an executable interpreter: dcmanon is skipped")
        return None
    return configured or None


def run_measurement(
    spec: Spec, python: str, workdir: Path, env: dict[str, str]
) -> tuple[Measurement, float]:
    """Run one measurement in a fresh subprocess; a crash becomes a Measurement with ``error``."""
    stem = workdir / f"{spec.corpus}-{spec.tool}"
    spec_path, result_path = stem.with_suffix(".spec.json"), stem.with_suffix(".result.json")
    spec_path.write_text(json.dumps(asdict(spec)))
    result_path.unlink(missing_ok=True)  # a crash must not pass off an earlier round's result
    started = time.perf_counter()
    completed = subprocess.run(
        [python, "-m", "benchmarks.measure", str(spec_path), str(result_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if completed.returncode == 0 and result_path.exists():
        return Measurement.from_dict(json.loads(result_path.read_text())), wall
    tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
    failed = Measurement(spec.tool, spec.corpus, len(spec.files), 0)
    failed.error = f"exit {completed.returncode}: {tail[:200]}"
    _log(completed.stderr[-4000:])
    return failed, wall


def _environment(home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if home is not None:
        env["HOME"] = str(home)
    return env


def measure_in_rounds(
    args: argparse.Namespace,
    corpora: Sequence[Corpus],
    dcmanon_python: str | None,
    pymedphys_home: Path,
    workdir: Path,
) -> tuple[dict[tuple[str, str], Measurement], list[float]]:
    """Time every tool on every corpus once per round, for ``--repeats`` rounds.

    Interleaved rather than one tool's runs back to back: this machine's speed drifts (a shared
    disk and CPU), and a slow spell then hits every tool of a round instead of all runs of one.
    The order of the tools rotates from round to round, so none is always first or last. A tool
    runs in no further round once its timed runs add up to ``--budget`` seconds.

    Each round also measures what the machine's cores give ``--workers`` processes at all
    (:mod:`benchmarks.ceiling`), when the N-worker row is timed; those ratios are returned too.
    """
    results: dict[tuple[str, str], Measurement] = {}
    ceilings: list[float] = []
    for round_ in range(args.repeats):
        if "fast-n" in args.tools and args.workers > 1:
            ceilings.append(cpu_scaling(args.workers))
            _log(
                f"round {round_ + 1}, CPU-bound loop in {args.workers} processes: "
                f"{ceilings[-1]:.2f}x one process"
            )
        shift = round_ % len(args.tools)
        for corpus in corpora:
            for tool in args.tools[shift:] + args.tools[:shift]:
                merged = results.setdefault(
                    (corpus.name, tool),
                    Measurement(tool, corpus.name, len(corpus.files), corpus.bytes),
                )
                if merged.skipped or merged.error or sum(merged.seconds) >= args.budget:
                    continue
                label = tool_label(tool, args.workers)
                if tool == "dcmanon" and dcmanon_python is None:
                    merged.skipped = "dcmanon not installed (see notes)"
                    _log(f"{corpus.name:5} {label}: skipped, dcmanon not installed")
                    continue
                spec = Spec(
                    tool=tool,
                    corpus=corpus.name,
                    files=corpus.files,
                    output_root=str(workdir / "outputs" / f"{corpus.name}-{tool}-{round_}"),
                    workers=args.workers,
                    max_repeats=1,
                )
                python = dcmanon_python if tool == "dcmanon" and dcmanon_python else sys.executable
                env = _environment(pymedphys_home if tool == "pymedphys" else None)
                m, wall = run_measurement(spec, python, workdir, env)
                merged.add_round(m, round_)
                if m.seconds:
                    summary = f"{m.files_per_s:,.1f} files/s"
                else:
                    summary = m.error or m.skipped or "no result"
                _log(f"round {round_ + 1}, {corpus.name:5} {label}: {summary} ({wall:.1f} s wall)")
    return results, ceilings


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_started = time.perf_counter()
    machine = Machine.detect()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="airflow-pseudo-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        _log(f"building corpora in {workdir} ...")
        settled_since = settle.start()
        t0 = time.perf_counter()
        corpora: list[Corpus] = [
            build_ct(workdir / "corpus-ct", args.files),
            build_mixed(workdir / "corpus-mixed", args.mixed_files),
        ]
        build_s = time.perf_counter() - t0
        settle.wait(settled_since, args.settle)
        pymedphys_home = write_pymedphys_home(workdir / "pymedphys-home")
        dcmanon_python = dcmanon_interpreter(args.dcmanon_python)

        results, ceilings = measure_in_rounds(
            args, corpora, dcmanon_python, pymedphys_home, workdir
        )
        machine.load_after = os.getloadavg()
        for m in results.values():
            if m.version:
                name, _, version = m.version.rpartition(" ")
                machine.versions[name] = version
        report = markdown(
            machine,
            corpora,
            results,
            args.tools,
            args.workers,
            _notes(machine, build_s, dcmanon_python, args),
            time.perf_counter() - run_started,
            ceilings,
        )
    finally:
        shutil.rmtree(workdir / "outputs", ignore_errors=True)  # kept until now: see settle.py
        settle.start()  # spare whatever runs next
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    _log(f"wrote {args.output}")
    return 1 if any(m.error for m in results.values()) else 0


def _notes(
    machine: Machine, build_s: float, dcmanon_python: str | None, args: argparse.Namespace
) -> list[str]:
    """Caveats a reader needs to interpret the numbers."""
    notes = []
    busy = machine.load_before[0] > 0.5 * machine.cores
    if busy or machine.load_after[0] > 0.5 * machine.cores:
        notes.append(
            f"The machine was busy (1-min load {machine.load_before[0]:.2f} before, "
            f"{machine.load_after[0]:.2f} after, on {machine.cores} cores): numbers are noisy."
        )
    if "dcmanon" in args.tools:
        if dcmanon_python is None:
            notes.append("dcmanon was skipped: not importable. " + DCMANON_HOW_TO)
        else:
            notes.append(
                f"dcmanon ran under {dcmanon_python}, with its default configuration "
                "(`Anonymizer().anonymize(path)`, bytes written to a file); that is its own "
                "profile, not this project's. " + DCMANON_HOW_TO
            )
    notes += [
        "Each measurement is a fresh subprocess; peak RSS is that process's `ru_maxrss`, and "
        "for the N-worker row the largest worker's in parentheses.",
        "This project writes each output atomically (an unnamed or temporary file, then a hard "
        "link) and, by default (durability batch), syncs the file system once per chunk of 64 "
        "files before linking them, in a background thread while the next chunk is written; the "
        "'durability none' rows skip the sync, like the round trip, copy, PyMedPhys and dcmanon "
        "rows, which neither sync nor write atomically; their disk writes happen after the "
        "timed run (the kernel writes dirty pages back within 30 s, or at the next run's "
        "untimed sync).",
        "The N-worker time includes starting the worker processes in every run (forked, as no "
        "other thread runs in the measuring process). Every timed run starts after an untimed "
        "os.sync() and an untimed read of the corpus, so no tool pays for write-back left by "
        "an earlier one, nor for reading files from the disk.",
        "No output is deleted until the whole benchmark has run (a few GB at the default "
        "sizes): on ext4 without a journal, creating files stays slow for a minute or more "
        "after thousands were deleted, which would slow whichever tool ran next.",
        "PyMedPhys runs `pymedphys.experimental.pseudonymisation.pseudonymise` on each Dataset "
        "then `save_as`, with HOME set to a temp folder holding a fixed `[pseudo]` pepper and "
        "epoch_jitter; its per-file exceptions are counted as failures, and failed files still "
        "count towards its files/s.",
        "Logging and warnings are silenced in every measurement, so console output (PyMedPhys "
        "logs warnings for every file) costs no tool anything.",
        f"Corpora built in {build_s:,.0f} s (not timed in any row).",
    ]
    return notes


if __name__ == "__main__":
    raise SystemExit(main())
