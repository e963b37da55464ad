"""One measurement in a fresh subprocess: ``python -m benchmarks.measure SPEC.json RESULT.json``.

A fresh process per (tool, corpus) keeps one tool's imports, caches and warmed-up state away from
the next, and makes ``getrusage`` report that measurement's own peak memory. Tools are imported
lazily so this module runs under any Python 3.11 that has the one tool it is asked to time
(dcmanon may live in a scratch venv with nothing else installed).

Every repetition writes into a fresh, empty output folder. Nothing is deleted while measuring (the
runner deletes every output at the end): on ext4 without a journal, as on the machine these
numbers come from, creating files stays slow after thousands were deleted (the inode allocator
skips, one by one, inodes deleted in the last minute, or in the last five while the deletion is
not yet written back), which would slow whichever tool ran next.

Logging and warnings are silenced for every tool alike, so console output (PyMedPhys logs several
warnings per file) is not part of any tool's cost.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TOOLS = (
    "fast-1",
    "fast-n",
    "fast-split",
    "fast-1-nosync",
    "fast-n-nosync",
    "reference",
    "validate",
    "roundtrip",
    "copy",
    "pymedphys",
    "dcmanon",
)
"""Every tool the suite can time, in the order of the table."""
WARM_UP_FILES = 8
"""Files processed, untimed, before the first timed run."""
OPTIONAL_TOOLS = frozenset({"pymedphys", "dcmanon"})
"""Tools that are skipped, with a note, when they cannot be imported."""
FORKING_TOOLS = frozenset({"fast-n", "fast-split", "fast-n-nosync"})
"""Tools whose processes fork from the measuring one: they warm up in it with one worker."""

BENCH_KEY = b"airflow-pseudo benchmark key, never use in production"
"""A fixed project key: keyed pseudonyms cost the same whatever the key is."""

PYMEDPHYS_PEPPER = "LZS5jElRYR7nIPpBihq8V6s5Sdie_TYwMrCtrU1dEyA"
PYMEDPHYS_EPOCH_JITTER = 775

# A tool times one pass over the files into an empty folder and returns per-file counts:
# ``run(files, out)``; this project's runners also take ``workers=``.
Runner = Callable[..., Counter[str]]


@dataclass
class Spec:
    """What to measure; written by the runner as JSON."""

    tool: str
    corpus: str
    files: list[str]
    output_root: str
    workers: int = 1
    max_repeats: int = 3
    repeat_budget_s: float = 20.0


@dataclass
class Measurement:
    """What one subprocess measured; read back by the runner as JSON.

    :param seconds: wall time of each repetition.
    :param rounds: the round of each repetition (the runner's interleaving), for paired ratios.
    :param cpu_seconds: CPU time (user + system, workers included) of each repetition: unlike
        wall time, barely moved by a slow disk or a busy neighbour.
    :param counts: per-file outcomes of the last repetition (``ok``, ``failed``, and for this
        project ``engine:fast`` / ``engine:reference``).
    :param steal_seconds: time the hypervisor took from this machine's cores during each
        repetition (``steal`` in ``/proc/stat``: summed over cores, machine-wide); empty where
        the system does not say.
    :param idle_seconds: time the cores were idle or waiting for the disk during each
        repetition, summed over cores, machine-wide; empty where the system does not say.
    :param peak_rss_kb: peak resident set size of the measuring process.
    :param worker_peak_rss_kb: largest peak of any reaped child (worker) process, 0 if none.
    """

    tool: str
    corpus: str
    files: int
    bytes: int
    seconds: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    steal_seconds: list[float] = field(default_factory=list)
    idle_seconds: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    peak_rss_kb: int = 0
    worker_peak_rss_kb: int = 0
    version: str = ""
    skipped: str | None = None
    error: str | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def cpu_ms_per_file(self) -> float:
        if not self.cpu_seconds:
            return float("nan")
        return statistics.median(self.cpu_seconds) * 1000 / self.files

    @property
    def files_per_s(self) -> float:
        return self.files / self.median_s if self.seconds else float("nan")

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.median_s if self.seconds else float("nan")

    @property
    def failures(self) -> int:
        return self.counts.get("failed", 0)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Measurement:
        return cls(**record)

    def add_round(self, other: Measurement, round_: int) -> None:
        """Take in ``other``, one round's measurement of the same tool on the same corpus."""
        self.seconds += other.seconds
        self.cpu_seconds += other.cpu_seconds
        self.steal_seconds += other.steal_seconds
        self.idle_seconds += other.idle_seconds
        self.rounds += [round_] * len(other.seconds)
        self.counts = other.counts or self.counts
        self.peak_rss_kb = max(self.peak_rss_kb, other.peak_rss_kb)
        self.worker_peak_rss_kb = max(self.worker_peak_rss_kb, other.worker_peak_rss_kb)
        self.version = other.version or self.version
        self.skipped = other.skipped
        self.error = other.error


def _ours(engine: str, workers: int, durability: str = "batch") -> tuple[Runner, str]:
    from airflow_pseudo.pseudonymisation import PseudonymKey, Settings, pseudonymise_files
    from airflow_pseudo.pseudonymisation.fastpath import SCANNER

    # The pixel risk gate would refuse the corpus's ultrasound and secondary captures, which the
    # other tools process: allowed here, so every tool does the same work.
    settings = Settings(
        key=PseudonymKey(BENCH_KEY), engine=engine, durability=durability, allow_burned_in=True
    )
    settings.check()  # build the pseudonymiser once, outside the timed region

    def run(files: Sequence[str], out: Path, workers: int = workers) -> Counter[str]:
        results = pseudonymise_files(files, out, settings=settings, workers=workers)
        counts: Counter[str] = Counter(str(r.status) for r in results)
        counts.update(f"engine:{r.engine}" for r in results if r.status == "ok")
        return counts

    from importlib.metadata import version

    return run, f"airflow-pseudo {version('airflow-pseudo')}, {SCANNER} scanner"


class _Validation:
    """This project's validation with 1 worker and the key, on outputs made before timing.

    :meth:`prepare` pseudonymises the corpus (untimed, durability none); each run validates
    every output against its original, as ``airflow-pseudo validate`` does, and writes nothing.
    """

    def __init__(self) -> None:
        from airflow_pseudo.pseudonymisation import PseudonymKey, Settings

        self.settings = Settings(
            key=PseudonymKey(BENCH_KEY), durability="none", allow_burned_in=True
        )
        self.settings.check()
        self.records: dict[str, Any] = {}

    def prepare(self, files: Sequence[str], out: Path) -> None:
        from airflow_pseudo.pseudonymisation import pseudonymise_files

        for result in pseudonymise_files(files, out, settings=self.settings):
            self.records[result.source] = result

    def __call__(self, files: Sequence[str], out: Path) -> Counter[str]:
        from airflow_pseudo.pseudonymisation import validate_results

        verdicts = validate_results([self.records[f] for f in files], settings=self.settings)
        counts: Counter[str] = Counter(str(v.status) for v in verdicts)
        counts.update(f"key checks:{v.key_checks}" for v in verdicts)
        return counts


def _validation() -> tuple[Runner, str]:
    from importlib.metadata import version

    return _Validation(), f"airflow-pseudo {version('airflow-pseudo')}"


def _ours_split(processes: int) -> tuple[Runner, str]:
    """The fast path in ``processes`` independent processes, each on a fixed share of the files.

    Each child forks from the measuring process at the start of the run and pseudonymises its
    contiguous share, with one worker, into the same output folder; nothing passes between them
    but each child's counts at its end. This is N processes' work with no coordination at all:
    the N-worker row differs from it by its own costs (sending chunks and results) and gains
    (balancing: a share that runs slower is not waited for), while what the machine withholds
    from N processes doing this work (disk, kernel, a shared host) slows both alike.
    """
    run_one, version = _ours("auto", 1)

    def run(files: Sequence[str], out: Path, workers: int = processes) -> Counter[str]:
        shares = [
            files[i * len(files) // workers : (i + 1) * len(files) // workers]
            for i in range(workers)
        ]
        children: list[tuple[int, int]] = []
        for share in shares:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: its counts through the pipe, then gone
                status = 1
                try:
                    os.close(read_end)
                    counts = run_one(share, out)
                    os.write(write_end, json.dumps(counts).encode())
                    status = 0
                finally:
                    os._exit(status)
            os.close(write_end)
            children.append((pid, read_end))
        total: Counter[str] = Counter()
        for pid, read_end in children:
            with os.fdopen(read_end, "rb") as replies:
                reply = replies.read()
            _, status = os.waitpid(pid, 0)
            if status != 0 or not reply:
                raise RuntimeError(f"a share's process failed (wait status {status})")
            total.update(json.loads(reply))
        return total

    return run, version


def _roundtrip() -> tuple[Runner, str]:
    import pydicom

    def run(files: Sequence[str], out: Path) -> Counter[str]:
        counts: Counter[str] = Counter()
        for index, source in enumerate(files):
            pydicom.dcmread(source).save_as(out / f"{index:06d}.dcm")
            counts["ok"] += 1
        return counts

    return run, f"pydicom {pydicom.__version__}"


def _copy() -> tuple[Runner, str]:
    def run(files: Sequence[str], out: Path) -> Counter[str]:
        for index, source in enumerate(files):
            shutil.copyfile(source, out / f"{index:06d}.dcm")
        return Counter(ok=len(files))

    return run, f"Python {sys.version.split()[0]}"


def _pymedphys() -> tuple[Runner, str]:
    """PyMedPhys's own API on each file as a Dataset, then save; its crashes count as failures.

    PyMedPhys reads its pepper from ``~/.pymedphys/config.toml``; the runner points HOME at a
    temporary folder holding a fixed config (:func:`write_pymedphys_home`).
    """
    from importlib.metadata import version

    import pydicom
    from pymedphys.experimental.pseudonymisation import pseudonymise

    def run(files: Sequence[str], out: Path) -> Counter[str]:
        counts: Counter[str] = Counter()
        for index, source in enumerate(files):
            try:
                pseudonymise(pydicom.dcmread(source)).save_as(out / f"{index:06d}.dcm")
            except Exception as exc:  # known PyMedPhys crashes, e.g. on non-ASCII names
                counts["failed"] += 1
                counts[f"error:{type(exc).__name__}"] += 1
            else:
                counts["ok"] += 1
        return counts

    return run, f"pymedphys {version('pymedphys')}"


def _dcmanon() -> tuple[Runner, str]:
    """dcmanon's default configuration: ``Anonymizer().anonymize(path)`` returns the bytes."""
    from importlib.metadata import version

    import dcmanon

    anonymizer = dcmanon.Anonymizer()

    def run(files: Sequence[str], out: Path) -> Counter[str]:
        counts: Counter[str] = Counter()
        for index, source in enumerate(files):
            try:
                data = anonymizer.anonymize(source)
            except dcmanon.AnonymizationError as exc:
                counts["failed"] += 1
                counts[f"error:{type(exc).__name__}"] += 1
                continue
            (out / f"{index:06d}.dcm").write_bytes(data)
            counts["ok"] += 1
        return counts

    return run, f"dcmanon {version('dcmanon')}"


def _runner(spec: Spec) -> tuple[Runner, str]:
    if spec.tool == "fast-1":
        return _ours("auto", 1)
    if spec.tool == "fast-n":
        return _ours("auto", spec.workers)
    if spec.tool == "fast-split":
        return _ours_split(spec.workers)
    if spec.tool == "fast-1-nosync":
        return _ours("auto", 1, durability="none")
    if spec.tool == "fast-n-nosync":
        return _ours("auto", spec.workers, durability="none")
    if spec.tool == "reference":
        return _ours("reference", 1)
    if spec.tool == "validate":
        return _validation()
    if spec.tool == "roundtrip":
        return _roundtrip()
    if spec.tool == "copy":
        return _copy()
    if spec.tool == "pymedphys":
        return _pymedphys()
    if spec.tool == "dcmanon":
        return _dcmanon()
    raise ValueError(f"unknown tool {spec.tool!r}; choose from {', '.join(TOOLS)}")


def write_pymedphys_home(home: Path) -> Path:
    """Create a HOME whose PyMedPhys config has a fixed pepper and epoch_jitter; return it."""
    config = home / ".pymedphys" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'[pseudo]\npepper = "{PYMEDPHYS_PEPPER}"\nepoch_jitter = {PYMEDPHYS_EPOCH_JITTER}\n'
    )
    return home


def _empty(directory: Path) -> Path:
    """Create ``directory``, which must not exist: every run writes into a fresh folder."""
    directory.mkdir(parents=True)
    return directory


def _read_through(files: Sequence[str]) -> None:
    """Read every file once, so the timed pass finds them all in the page cache."""
    for path in files:
        with open(path, "rb", buffering=0) as stream:
            while stream.read(1 << 20):
                pass


def _reap_workers() -> None:
    """Wait for this project's worker processes to exit (untimed), so their CPU time counts.

    A batch returns once every result is in, without waiting for its workers' exit, and only
    reaped children appear in ``getrusage``.
    """
    workers = sys.modules.get("airflow_pseudo.pseudonymisation.io.workers")
    if workers is not None:
        workers.reap_exited(wait=True)


def _cpu_seconds() -> float:
    """User and system time of this process and of its reaped children (worker processes)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _core_seconds() -> tuple[float, float] | None:
    """Idle (with waiting for the disk) and stolen time of all cores so far; None off Linux.

    Machine-wide: the time a tool leaves a core idle, and the time the hypervisor takes from
    the cores (for its own threads, those doing this guest's disk writes among them, or for
    other guests), are what a per-process CPU time cannot show.
    """
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if fields[:1] != ["cpu"] or len(fields) < 9:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    idle, iowait, steal = (int(fields[i]) for i in (4, 5, 8))
    return (idle + iowait) / ticks, steal / ticks


def measure(spec: Spec) -> Measurement:
    """Time ``spec.tool`` over the files: at least once, up to ``max_repeats`` within budget."""
    files = list(spec.files)
    result = Measurement(spec.tool, spec.corpus, len(files), sum(os.path.getsize(f) for f in files))
    try:
        run, result.version = _runner(spec)
    except ImportError as exc:
        if spec.tool not in OPTIONAL_TOOLS:
            raise
        result.skipped = f"not importable: {exc}"
        return result
    root = Path(spec.output_root)
    prepare = getattr(run, "prepare", None)
    if prepare is not None:  # validation: the outputs to check are made untimed, first
        prepare(files, _empty(root / "prepared"))
    # Untimed warm-up on a few files spread over the corpus, so lazy imports and first-call set-up
    # are not charged to the first timed run. The N-worker and split rows warm up in this process
    # too (their processes learn nothing for it): they then fork from the state the 1-worker row
    # starts its timed run in, and the ratio of the two compares like with like.
    sample = files[:: max(1, len(files) // WARM_UP_FILES)][:WARM_UP_FILES]
    if spec.tool in FORKING_TOOLS:
        run(sample, _empty(root / "warm-up"), workers=1)
    else:
        run(sample, _empty(root / "warm-up"))
    started = time.perf_counter()
    for repeat in range(max(1, spec.max_repeats)):
        out = _empty(root / f"repeat-{repeat}")
        # Flush what earlier runs (and the last one's deletion) left dirty, untimed: no tool pays
        # for another's write-back. Then read the corpus, untimed: this VM drops idle page cache
        # within minutes, and whichever tool ran first would otherwise read from the disk.
        os.sync()
        _read_through(files)
        cores0, cpu0, t0 = _core_seconds(), _cpu_seconds(), time.perf_counter()
        counts = run(files, out)
        result.seconds.append(time.perf_counter() - t0)
        cores1 = _core_seconds()
        if cores0 is not None and cores1 is not None:
            result.idle_seconds.append(cores1[0] - cores0[0])
            result.steal_seconds.append(cores1[1] - cores0[1])
        _reap_workers()
        result.cpu_seconds.append(_cpu_seconds() - cpu0)
        result.counts = dict(counts)
        if time.perf_counter() - started > spec.repeat_budget_s:
            break
    result.peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result.worker_peak_rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Read a :class:`Spec` from the first path, write the :class:`Measurement` to the second."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m benchmarks.measure SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = Spec(**json.loads(Path(args[0]).read_text()))
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    result = measure(spec)
    Path(args[1]).write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
