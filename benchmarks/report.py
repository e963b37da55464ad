"""Turn measurements into the Markdown report: machine, tables, ratios and the issue's targets."""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.corpus import Corpus
from benchmarks.measure import Measurement

BASELINE = "fast-1"
"""Every ratio is taken against this project's fast path with one worker."""


def tool_label(tool: str, workers: int) -> str:
    """The row label of a tool; stable, so tests and readers can find rows by it."""
    return {
        "fast-1": "airflow-pseudo fast path, 1 worker",
        "fast-n": f"airflow-pseudo fast path, {workers} workers",
        "fast-split": f"airflow-pseudo fast path, {workers} processes on fixed shares",
        "fast-1-nosync": "airflow-pseudo fast path, 1 worker, durability none (no sync)",
        "fast-n-nosync": f"airflow-pseudo fast path, {workers} workers, durability none (no sync)",
        "reference": "airflow-pseudo reference engine, 1 worker",
        "validate": "airflow-pseudo validate, 1 worker, with the key",
        "roundtrip": "pydicom dcmread + save_as, no changes",
        "copy": "plain file copy (shutil.copyfile)",
        "pymedphys": "PyMedPhys pseudonymise",
        "dcmanon": "dcmanon (Rust core)",
    }[tool]


@dataclass
class Machine:
    """Where and when the numbers were measured; load averages say how noisy they may be."""

    cpu: str
    cores: int
    python: str
    system: str
    memory_gb: float
    started: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def detect(cls) -> Machine:
        return cls(
            cpu=_cpu_model(),
            cores=os.cpu_count() or 1,
            python=sys.version.split()[0],
            system=platform.platform(),
            memory_gb=_memory_gb(),
            started=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            load_before=os.getloadavg(),
        )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: PASS, FAIL, or N/A when an input is missing."""

    name: str
    verdict: str
    detail: str


def _usable(m: Measurement | None) -> bool:
    return m is not None and not m.skipped and not m.error and bool(m.seconds)


def _rate(results: Mapping[tuple[str, str], Measurement], corpus: str, tool: str) -> float:
    m = results.get((corpus, tool))
    return m.files_per_s if m is not None and _usable(m) else math.nan


def paired_ratio(numerator: Measurement | None, denominator: Measurement | None) -> float:
    """The median, over the rounds both ran in, of one's files/s divided by the other's.

    Runs of one round are minutes apart at most, so a drift in the machine's speed mostly
    cancels out of each round's ratio. Without shared rounds, the ratio of the medians.
    """
    if numerator is None or denominator is None:
        return math.nan
    if not (_usable(numerator) and _usable(denominator)):
        return math.nan
    ours = dict(zip(numerator.rounds, numerator.seconds, strict=False))
    theirs = dict(zip(denominator.rounds, denominator.seconds, strict=False))
    shared = sorted(ours.keys() & theirs.keys())
    if not shared:
        return numerator.files_per_s / denominator.files_per_s
    return statistics.median(
        (numerator.files / ours[r]) / (denominator.files / theirs[r]) for r in shared
    )


def _target(
    results: Mapping[tuple[str, str], Measurement],
    name: str,
    ours: tuple[str, str],
    theirs: tuple[str, str],
    factor: float,
    theirs_label: str,
) -> Target:
    ratio = paired_ratio(results.get(ours), results.get(theirs))
    if math.isnan(ratio):
        return Target(name, "N/A", f"not measured: {theirs_label} or this project has no result")
    verdict = "PASS" if ratio >= factor else "FAIL"
    detail = (
        f"ratio {ratio:.2f}x, required {factor:g}x (median files/s: {_rate(results, *ours):,.1f} "
        f"vs {theirs_label} {_rate(results, *theirs):,.1f})"
    )
    return Target(name, verdict, detail)


def targets(results: Mapping[tuple[str, str], Measurement], workers: int) -> list[Target]:
    """The issue's targets, each judged on the paired ratio (:func:`paired_ratio`)."""
    fast, mixed_fast = ("ct", BASELINE), ("mixed", BASELINE)
    return [
        _target(
            results,
            "CT: fast path (1 worker) >= 1.0x dcmanon",
            fast,
            ("ct", "dcmanon"),
            1.0,
            "dcmanon",
        ),
        _target(
            results,
            "CT: fast path (1 worker) >= 30x PyMedPhys",
            fast,
            ("ct", "pymedphys"),
            30.0,
            "PyMedPhys",
        ),
        _target(
            results,
            "Mixed: fast path (1 worker) >= 5x pydicom round trip",
            mixed_fast,
            ("mixed", "roundtrip"),
            5.0,
            "round trip",
        ),
        _target(
            results,
            "CT: validate (1 worker) >= 0.5x fast path (1 worker)",
            ("ct", "validate"),
            fast,
            0.5,
            "fast path",
        ),
        _target(
            results,
            "Mixed: validate (1 worker) >= 0.5x fast path (1 worker)",
            ("mixed", "validate"),
            mixed_fast,
            0.5,
            "fast path",
        ),
        _target(
            results,
            f"CT: {workers} workers >= 0.8 x {workers} x 1 worker",
            ("ct", "fast-n"),
            fast,
            0.8 * workers,
            "1 worker",
        ),
    ]


def ceiling_line(ceilings: Sequence[float], workers: int) -> str:
    """What the cores gave ``workers`` processes in the same rounds: the N-worker ceiling."""
    return (
        f"- Context for the {workers}-worker target: in the same rounds, a CPU-bound pure-Python "
        f"loop did {statistics.median(ceilings):.2f}x one process's work in {workers} processes "
        f"(median; {min(ceilings):.2f}-{max(ceilings):.2f}x over {len(ceilings)} rounds), what "
        f"this machine's cores give any {workers}-process program."
    )


def split_line(results: Mapping[tuple[str, str], Measurement], workers: int) -> str | None:
    """The N-worker row against N processes splitting the files with no coordination at all.

    Both pay what this machine withholds from N processes doing this work (the disk, the kernel,
    a shared host), which a CPU-bound loop never meets; the N-worker row alone pays for its
    coordination and alone gains from balancing the load.
    """
    split, pool = results.get(("ct", "fast-split")), results.get(("ct", "fast-n"))
    baseline = results.get(("ct", BASELINE))
    split_ratio, reached = paired_ratio(split, baseline), paired_ratio(pool, split)
    if math.isnan(split_ratio) or math.isnan(reached):
        return None
    return (
        f"- Context for the {workers}-worker target: in the same rounds, a fixed split of the CT "
        f"files over {workers} independent processes (1 worker each, forked at the start, "
        f"nothing exchanged, no balancing) did {split_ratio:.2f}x one worker, and the "
        f"{workers} workers {reached:.0%} of that split's rate (paired medians)."
    )


def write_back_line(
    results: Mapping[tuple[str, str], Measurement], workers: int, cores: int
) -> str | None:
    """The N-worker row without its sync, and what the synced rows left to the machine.

    Without a sync, the disk writes of both rows fall after their timed runs: the ratio is what
    N workers give the work itself. With it, one worker's writes are done while a core is idle,
    and N workers' on the cores they need: steal (time the hypervisor gives to something else,
    its own disk threads among them) and idle time show where that goes.
    """
    ratio = paired_ratio(results.get(("ct", "fast-n-nosync")), results.get(("ct", "fast-1-nosync")))
    if math.isnan(ratio):
        return None
    line = (
        f"- Context for the {workers}-worker target: without syncing (durability none in both "
        f"rows, so that their disk writes fall after the timed run), {workers} workers did "
        f"{ratio:.2f}x one worker (paired medians)."
    )
    pool, alone = results.get(("ct", "fast-n")), results.get(("ct", BASELINE))
    steal = [core_share(m, "steal_seconds", cores) for m in (pool, alone)]
    idle = [core_share(m, "idle_seconds", cores) for m in (pool, alone)]
    if not any(math.isnan(share) for share in steal + idle):
        line += (
            f" With the sync, the hypervisor took {steal[0]:.1%} of the {cores} cores' time "
            f"during the {workers}-worker runs (steal; {steal[1]:.1%} during the 1-worker runs), "
            f"and the cores were idle {idle[0]:.1%} of it ({idle[1]:.1%})."
        )
    return line


def core_share(m: Measurement | None, kind: str, cores: int) -> float:
    """The median over runs of ``kind`` (``steal_seconds``, ``idle_seconds``) per core-second."""
    if m is None or not _usable(m):
        return math.nan
    values = getattr(m, kind)
    if len(values) != len(m.seconds):
        return math.nan
    return statistics.median(v / (s * cores) for v, s in zip(values, m.seconds, strict=True))


def _mb(kb: int) -> str:
    return f"{kb / 1024:,.0f}"


def _notes(m: Measurement) -> str:
    parts = [m.version] if m.version else []
    if m.failures:
        errors = ", ".join(
            f"{k.removeprefix('error:')} x{v}"
            for k, v in m.counts.items()
            if k.startswith("error:")
        )
        parts.append(
            f"**{m.failures} failed** ({errors})" if errors else f"**{m.failures} failed**"
        )
    checks = {k.removeprefix("key checks:"): v for k, v in m.counts.items() if "key checks:" in k}
    if checks:
        parts.append("key checks: " + ", ".join(f"{k} {v}" for k, v in sorted(checks.items())))
    engines = {k.removeprefix("engine:"): v for k, v in m.counts.items() if k.startswith("engine:")}
    if engines:
        parts.append("engines: " + ", ".join(f"{k} {v}" for k, v in sorted(engines.items())))
    return "; ".join(parts)


def table(
    corpus: Corpus,
    results: Mapping[tuple[str, str], Measurement],
    tools: Sequence[str],
    workers: int,
) -> str:
    """One Markdown table for one corpus: a row per tool, in ``tools`` order."""
    baseline = results.get((corpus.name, BASELINE))
    lines = [
        "| tool | files/s | MB/s | CPU ms/file | peak RSS MB (largest worker) | x fast path 1w "
        "| runs | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for tool in tools:
        label = tool_label(tool, workers)
        m = results.get((corpus.name, tool))
        if m is None:
            lines.append(f"| {label} | - | - | - | - | - | 0 | not run |")
            continue
        if m.skipped or m.error:
            why = f"skipped: {m.skipped}" if m.skipped else f"**crashed**: {m.error}"
            lines.append(f"| {label} | - | - | - | - | - | 0 | {why} |")
            continue
        memory = _mb(m.peak_rss_kb)
        if m.worker_peak_rss_kb:
            memory += f" ({_mb(m.worker_peak_rss_kb)})"
        ratio = paired_ratio(m, baseline)
        lines.append(
            f"| {label} | {m.files_per_s:,.1f} | {m.mb_per_s:,.2f} | {m.cpu_ms_per_file:.3f} "
            f"| {memory} | {ratio:,.2f}x "
            f"| {len(m.seconds)} | {_notes(m)} |"
        )
    return "\n".join(lines)


def markdown(
    machine: Machine,
    corpora: Sequence[Corpus],
    results: Mapping[tuple[str, str], Measurement],
    tools: Sequence[str],
    workers: int,
    notes: Sequence[str],
    elapsed_s: float,
    ceilings: Sequence[float] = (),
) -> str:
    """The whole report, as printed and as written to ``benchmarks/results/latest.md``.

    :param ceilings: per round, how many times one process's work a CPU-bound loop did in
        ``workers`` processes (:mod:`benchmarks.ceiling`).
    """
    versions = ", ".join(f"{k} {v}" for k, v in sorted(machine.versions.items()))
    out = [
        "# airflow-pseudo benchmark",
        "",
        f"- Date: {machine.started}; whole run {elapsed_s:,.0f} s",
        f"- CPU: {machine.cpu}, {machine.cores} cores; memory {machine.memory_gb:,.1f} GB",
        f"- System: {machine.system}; Python {machine.python}",
        "- Load average (1/5/15 min) before: "
        + " / ".join(f"{x:.2f}" for x in machine.load_before)
        + "; after: "
        + " / ".join(f"{x:.2f}" for x in machine.load_after),
    ]
    if versions:
        out.append(f"- Versions: {versions}")
    out += [
        "",
        "files/s and MB/s are the median over the runs of one pass over the corpus, single "
        "process unless workers are stated; MB/s counts input bytes; CPU ms/file is the median CPU "
        "time (user + system, worker processes included) per file. The runs are interleaved: "
        "each round runs every tool once, in an order rotated from round to round. Ratios are "
        "paired: the median over rounds of files/s divided by the fast path's with 1 worker in "
        "the same round, on the same corpus; targets are judged on such ratios.",
    ]
    for corpus in corpora:
        out += [
            "",
            f"## {corpus.name.upper()} corpus",
            "",
            f"{corpus.description}; {corpus.bytes / 1e6:,.1f} MB in total, "
            f"{corpus.bytes / max(1, len(corpus.files)) / 1e3:,.1f} KB per file.",
            "",
            table(corpus, results, tools, workers),
        ]
    out += ["", "## Targets (issue 6)", ""]
    out += [f"- **{t.verdict}** {t.name}: {t.detail}" for t in targets(results, workers)]
    if ceilings:
        out.append(ceiling_line(ceilings, workers))
    if line := split_line(results, workers):
        out.append(line)
    if line := write_back_line(results, workers, machine.cores):
        out.append(line)
    if notes:
        out += ["", "## Notes", ""]
        out += [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"
