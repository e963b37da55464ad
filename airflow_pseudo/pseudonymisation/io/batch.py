"""Batches: many files in, exactly one result record out per file, bad files quarantined.

A bad file never stops the others: every per-file error becomes a ``failed`` record with a reason
that names no DICOM value, and a copy of the input goes to the quarantine folder with the reason
beside it. ``workers > 1`` spreads files over processes; records come back in input order and are
the same as with one worker.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation.errors import (
    BurnedInAnnotationError,
    MissingKeyError,
    PseudonymisationError,
    UnsupportedInputError,
)
from airflow_pseudo.pseudonymisation.fastpath import pseudonymise_buffer
from airflow_pseudo.pseudonymisation.io.durability import BackgroundSync
from airflow_pseudo.pseudonymisation.io.inputs import (
    DEFAULT_LIMITS,
    InputFolder,
    InputLimits,
    iter_files,
    looks_like_dicom,
    parse_dataset,
    prefetch,
    read_header,
    read_input,
)
from airflow_pseudo.pseudonymisation.io.outputs import (
    OutputFolder,
    StagedFile,
    check_not_inside,
    remove_stale_temporaries,
    stage,
    uid_parts,
)
from airflow_pseudo.pseudonymisation.io.quarantine import quarantine, quarantine_copy
from airflow_pseudo.pseudonymisation.io.workers import Job, run_in_processes, run_overlapped
from airflow_pseudo.pseudonymisation.logs import install, pydicom_messages_by_tag
from airflow_pseudo.pseudonymisation.pixels import (
    BURNED_IN_TEXT_LIKELY,
    pixel_risk,
    strip_file,
    strip_pixel_data,
)
from airflow_pseudo.pseudonymisation.policy.recipe import Settings
from airflow_pseudo.pseudonymisation.results import FileResult, ValidationResult
from airflow_pseudo.pseudonymisation.validation import validate_output
from airflow_pseudo.pseudonymisation.validation.quiet import quiet_pydicom

log = logging.getLogger(__name__)
install()  # pydicom's own log records quote values: rewritten wherever the core is imported

PathLike = str | os.PathLike[str]
Progress = Callable[[Any], None]
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
_HEAD = 132  # the preamble and the DICM prefix: enough to recognise DICOM by content
# What the pixel risk gate reads of a file the fast path rewrote, when it must read anything.
_GATE_KEYWORDS = ("SOPClassUID", "BurnedInAnnotation", "RecognizableVisualFeatures")
_RECOGNIZABLE_TAG = b"\x28\x00\x02\x03"  # (0028,0302) as written in little endian
CHUNK_SIZE = 64
"""Files per chunk: written together and made durable with one sync (``durability="batch"``)."""
_T = TypeVar("_T")
_R = TypeVar("_R")


def default_output_dir(input_dir: PathLike) -> Path:
    """The sibling folder ``<input>-pseudonymised``: never inside the input."""
    path = Path(input_dir).resolve()
    return path.with_name(path.name + "-pseudonymised")


def default_quarantine_dir(output_dir: PathLike) -> Path:
    """The sibling folder ``<output>-quarantine``: failed inputs never mix with outputs."""
    path = Path(output_dir).resolve()
    return path.with_name(path.name + "-quarantine")


def pseudonymise_directory(
    input_dir: PathLike,
    output_dir: PathLike | None = None,
    *,
    settings: Settings,
    quarantine_dir: PathLike | None = None,
    workers: int = 1,
    progress: Progress | None = None,
) -> list[FileResult]:
    """Pseudonymise every file below ``input_dir`` (recursive, sorted, DICOM by content)."""
    if not Path(input_dir).is_dir():
        raise FileNotFoundError(f"no such input folder: {input_dir}")
    output = Path(output_dir) if output_dir is not None else default_output_dir(input_dir)
    files = list(iter_files(input_dir))
    return pseudonymise_files(
        files,
        output,
        settings=settings,
        input_root=input_dir,
        quarantine_dir=quarantine_dir,
        workers=workers,
        progress=progress,
    )


def pseudonymise_files(
    files: Iterable[PathLike],
    output_dir: PathLike,
    *,
    settings: Settings,
    input_root: PathLike | None = None,
    quarantine_dir: PathLike | None = None,
    workers: int = 1,
    progress: Progress | None = None,
) -> list[FileResult]:
    """Pseudonymise ``files`` into ``output_dir``; one :class:`FileResult` per file, in order.

    :raises ConfigurationError: for unusable settings or an output inside the input folder.
    """
    settings.check()
    quarantine = Path(quarantine_dir) if quarantine_dir else default_quarantine_dir(output_dir)
    if input_root is not None:
        check_not_inside(output_dir, input_root, "output")
        check_not_inside(quarantine, input_root, "quarantine")
    if removed := remove_stale_temporaries(output_dir):
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    job = _FileJob(
        Path(output_dir).resolve(),
        quarantine.resolve(),
        Path(input_root).resolve() if input_root else None,
    )
    paths = [str(f) for f in files]
    try:
        results = list(_run(job, paths, settings, workers, progress))
    finally:
        job.inputs.close()  # the folder descriptors it kept open
    failed = sum(r.status == "failed" for r in results)
    log.info("pseudonymised %d files: %d failed", len(results), failed)
    return results


def validate_results(
    results: Iterable[FileResult | Mapping[str, Any]],
    *,
    settings: Settings,
    quarantine_dir: PathLike | None = None,
    workers: int = 1,
    progress: Progress | None = None,
) -> list[ValidationResult]:
    """Re-check every ``ok`` output against its original; quarantine the outputs that fail.

    Without a key (``MissingKeyError`` from the settings) the key-free checks run and each
    verdict's ``key_checks`` says ``skipped``.
    """
    with contextlib.suppress(MissingKeyError):
        settings.check()
    records = [_record(r) for r in results]
    job = _ValidationJob(Path(quarantine_dir).resolve() if quarantine_dir else None)
    with _heap_frozen():
        return list(_run(job, records, settings, workers, progress))


@contextlib.contextmanager
def _heap_frozen() -> Iterator[None]:
    """Leave what is alive now out of the garbage collector's passes until the block ends.

    Validation allocates many short-lived objects per file beside the caller's long-lived ones
    (records, caches), and every full collection walks all of them: on 1,000 CT files this cost
    4-10 % of validating. Reference counting still frees frozen objects; only cycles among
    them wait for the block to end.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _record(result: FileResult | Mapping[str, Any]) -> FileResult:
    """A result record, keeping the profile fields validation reads even where FileResult
    does not declare them."""
    if isinstance(result, FileResult):
        return result
    record = FileResult.from_dict(result)
    for name in ("profile_digest", "method_codes"):
        if name in result and not hasattr(record, name):
            setattr(record, name, result[name])
    return record


class _FileJob:
    """Pseudonymise one file; picklable so worker processes can run it."""

    def __init__(self, output_dir: Path, quarantine_dir: Path, input_root: Path | None) -> None:
        self.output_dir = output_dir
        self.quarantine_dir = quarantine_dir
        self.input_root = input_root
        self.inputs = InputFolder(input_root)
        self.outputs = OutputFolder(output_dir)

    def run(self, sources: Sequence[str], settings: Settings) -> list[FileResult]:
        """Pseudonymise a chunk of files; see :meth:`begin`."""
        return self.begin(sources, settings).finish()

    def begin(self, sources: Sequence[str], settings: Settings) -> _StagedChunk:
        """Write a chunk's outputs, unnamed; with ``durability="batch"``, start syncing them.

        The caller may begin the next chunk before finishing this one: that chunk is written
        while the disk makes this one durable. The chunk's inputs are prefetched first, so each
        is read from the disk while the ones before it are pseudonymised.
        """
        prefetch(sources)
        staged: list[tuple[FileResult, StagedFile | None]] = []
        try:
            with pydicom_messages_by_tag():  # once per chunk: a series repeats its problems
                for source in sources:
                    staged.append(self._stage(source, settings))
        except BaseException:
            _StagedChunk(self, staged).abandon()
            raise
        return _StagedChunk(self, staged, durability=settings.durability)

    def _stage(self, source: str, settings: Settings) -> tuple[FileResult, StagedFile | None]:
        """Pseudonymise one file into an unnamed output; its record carries the time it took."""
        started = time.perf_counter()
        result, file = self._stage_timed(source, settings)
        result.seconds = round(time.perf_counter() - started, 3)
        return result, file

    def _stage_timed(self, source: str, settings: Settings) -> tuple[FileResult, StagedFile | None]:
        try:
            fd = self.inputs.open(source)
        except Exception as exc:  # not opened: nothing that could be copied safely
            return self._failed(source, exc), None
        try:
            return self._stage_open(source, fd, settings)
        except Exception as exc:
            return self._failed(source, exc, copy_from=fd), None
        finally:
            os.close(fd)

    def _stage_open(
        self, source: str, fd: int, settings: Settings
    ) -> tuple[FileResult, StagedFile | None]:
        data = read_input(fd, _limits(settings))
        if not _named_as_dicom(source) and not looks_like_dicom(data[:_HEAD]):
            return FileResult(source, status="skipped", reason="not a DICOM file"), None
        return self._pseudonymise(source, data, settings)

    def commit(self, result: FileResult, file: StagedFile | None, *, durable: bool) -> FileResult:
        """Name an output (``durable``: synced, its pages are released); a failure is the file's."""
        if file is None:
            return result
        try:
            file.commit(release_pages=durable)
        except Exception as exc:
            failed = self._failed_reopened(result.source, exc)
            failed.seconds = result.seconds
            return failed
        return result

    def not_durable(self, result: FileResult, exc: OSError) -> FileResult:
        """The record of an output never named: the sync meant to make it durable failed."""
        reason = OSError(exc.errno, f"the output could not be synced: {exc.strerror}")
        failed = self._failed_reopened(result.source, reason)
        failed.seconds = result.seconds
        return failed

    def _failed(self, source: str, exc: Exception, *, copy_from: int | None = None) -> FileResult:
        """A failed record; a copy of the open input (if any) goes to the quarantine."""
        reason = failure_reason(exc)
        result = FileResult(source, status="failed", reason=reason)
        if copy_from is not None:
            result.quarantine = quarantine_copy(copy_from, source, reason, self.quarantine_dir)
        return result

    def _failed_reopened(self, source: str, exc: Exception) -> FileResult:
        """A failed record for an input no longer open: opened again (safely) to be copied."""
        try:
            fd = self.inputs.open(source)
        except Exception:
            return self._failed(source, exc)
        try:
            return self._failed(source, exc, copy_from=fd)
        finally:
            os.close(fd)

    def _pseudonymise(
        self, source: str, data: bytes, settings: Settings
    ) -> tuple[FileResult, StagedFile]:
        durable = settings.durability == "file"
        # Frames with segments to strip are stripped first; where only the reference engine can
        # find them, it takes the file and strips them.
        fast_input = strip_file(data) if settings.engine == "auto" else None
        if fast_input is not None:
            try:
                fast = pseudonymise_buffer(memoryview(fast_input), settings.pseudonymiser)
            except (PseudonymisationError, OSError):
                raise
            except Exception as exc:  # FastPathUnsupported, or anything the fast parser met
                log.debug("reference engine used: %s", failure_reason(exc))
            else:
                if _fast_output_passes_the_gate(data, fast.uids.get("SOPClassUID"), settings):
                    target = self._target(source, fast.uids, settings)
                    file = stage(fast.chunks, target, durable=durable)
                    result = FileResult(
                        source,
                        target,
                        engine="fast",
                        changes=fast.counts.to_dict(),
                        **settings.pseudonymiser.record_fields(),
                    )
                    return result, file
        dataset = parse_dataset(
            data, named_as_dicom=_named_as_dicom(source), limits=_limits(settings)
        )
        _check_pixel_risk(dataset, settings)
        counts = settings.pseudonymiser.pseudonymise_in_place(dataset)
        strip_pixel_data(dataset)
        target = self._target(source, dataset, settings)
        file = stage(dataset, target, durable=durable)
        result = FileResult(
            source,
            target,
            engine="reference",
            changes=counts.to_dict(),
            **settings.pseudonymiser.record_fields(),
        )
        return result, file

    def crashed(self, source: str) -> FileResult:
        """The record of a file whose worker process died while pseudonymising it."""
        return self._failed_reopened(
            source, UnsupportedInputError("the worker process died while pseudonymising this file")
        )

    def _target(self, source: str, dataset: Dataset | Mapping[str, str], settings: Settings) -> str:
        """Where the output goes: named by pseudonymised UIDs unless the layout says otherwise."""
        if settings.output_layout == "mirror" and self.input_root is not None:
            relpath = PurePath(os.path.relpath(Path(source).resolve(), self.input_root))
            return str(self.outputs.join(relpath))
        if settings.output_layout == "mirror":
            return self.outputs.join_parts((), os.path.basename(source))
        study, series, name = uid_parts(dataset)
        if settings.output_layout == "flat":
            return self.outputs.join_parts((), name)
        return self.outputs.join_parts((study, series), name)


class _StagedChunk:
    """A chunk's outputs, written but not yet named, and the sync that makes them durable."""

    def __init__(
        self,
        job: _FileJob,
        staged: list[tuple[FileResult, StagedFile | None]],
        *,
        durability: str = "none",
    ) -> None:
        self._job = job
        self._staged = staged
        self._durable = durability != "none"
        written = durability == "batch" and any(file for _, file in staged)
        self._sync = BackgroundSync(job.output_dir) if written else None

    def finish(self) -> list[FileResult]:
        """Name each output once the sync is done, so no name ever points at unsynced data."""
        try:
            if self._sync is not None:
                try:
                    self._sync.wait()
                except OSError as exc:  # nothing written since the last sync is known durable
                    self._sync = None
                    return [
                        result if file is None else self._job.not_durable(result, exc)
                        for result, file in self._staged
                    ]
            return [
                self._job.commit(result, file, durable=self._durable)
                for result, file in self._staged
            ]
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Drop what was not named (the sync, if any, runs to its end: it cannot be stopped)."""
        if self._sync is not None:
            with contextlib.suppress(OSError):
                self._sync.wait()
            self._sync = None
        for _, file in self._staged:
            if file is not None:
                file.discard()


class _ValidationJob:
    """Validate one pseudonymisation record; picklable."""

    def __init__(self, quarantine_dir: Path | None) -> None:
        self.quarantine_dir = quarantine_dir

    def crashed(self, record: FileResult) -> ValidationResult:
        """The verdict on an output whose worker process died while validating it."""
        problem = "validation could not run: the worker process died"
        return ValidationResult(record.source, record.output, "failed", [problem])

    def run(self, records: Sequence[FileResult], settings: Settings) -> list[ValidationResult]:
        with quiet_pydicom("originals and outputs"):
            return [self._validate(record, settings) for record in records]

    def begin(self, records: Sequence[FileResult], settings: Settings) -> _ValidationChunk:
        """Start the disk reading the chunk's originals and outputs; validate at ``finish``.

        The runners begin a chunk before finishing the one before it, so these files are read
        from the disk while that chunk is validated (outputs have left the page cache once
        durable, and inputs read long ago have too).
        """
        prefetch(path for record in records for path in (record.source, record.output) if path)
        return _ValidationChunk(self, records, settings)

    def _validate(self, record: FileResult, settings: Settings) -> ValidationResult:
        if record.status != "ok" or not record.output:
            return ValidationResult(
                record.source, record.output, "skipped", [f"not validated: {record.status}"]
            )
        key_checks = "skipped"
        try:
            verdict = validate_output(
                record.source,
                record.output,
                settings=settings,
                method_codes=getattr(record, "method_codes", None),
                profile_digest=getattr(record, "profile_digest", None),
            )
            problems, key_checks = verdict.problems, verdict.key_checks
        except Exception as exc:
            problems = [f"validation could not run: {failure_reason(exc)}"]
        if not problems:
            return ValidationResult(record.source, record.output, "ok", key_checks=key_checks)
        result = ValidationResult(
            record.source, record.output, "failed", problems, key_checks=key_checks
        )
        if self.quarantine_dir is not None and _exists(record.output):
            result.quarantine = quarantine(
                record.output, "; ".join(problems), self.quarantine_dir, move=True
            )
        return result


@dataclass
class _ValidationChunk:
    """A chunk of records whose files are being read ahead; see :meth:`_ValidationJob.begin`."""

    job: _ValidationJob
    records: Sequence[FileResult]
    settings: Settings

    def finish(self) -> list[ValidationResult]:
        return self.job.run(self.records, self.settings)

    def abandon(self) -> None:
        """Nothing to release: prefetching holds nothing."""


def failure_reason(exc: BaseException) -> str:
    """A one-line reason for a failure that names no DICOM value (messages are ours or OS's)."""
    if isinstance(exc, PseudonymisationError):
        return str(exc)
    if isinstance(exc, FileExistsError):
        return "duplicate: " + (
            str(exc.args[0]) if exc.args else "output exists with other content"
        )
    if isinstance(exc, FileNotFoundError):
        return "the file disappeared before it could be read"
    if isinstance(exc, MemoryError):
        return "not enough memory to process the file"
    if isinstance(exc, EOFError):
        return "truncated DICOM (unexpected end of file)"
    if isinstance(exc, OSError):
        return f"cannot read or write the file ({exc.strerror or type(exc).__name__})"
    return f"pseudonymisation failed ({type(exc).__name__})"


def _fast_output_passes_the_gate(data: bytes, sop_class: object, settings: Settings) -> bool:
    """Apply the pixel risk gate to a file the fast path rewrote; False: let the reference decide.

    Most files are of no listed class and hold no RecognizableVisualFeatures element (its tag's
    bytes are absent): passed without parsing anything. The others have their header read.

    :raises BurnedInAnnotationError: the image is refused.
    """
    if settings.allow_burned_in:
        return True
    if sop_class not in BURNED_IN_TEXT_LIKELY and _RECOGNIZABLE_TAG not in data:
        return True
    header = read_header(data, _GATE_KEYWORDS)
    if header is None:
        return False
    _check_pixel_risk(header, settings)
    return True


def _check_pixel_risk(dataset: Dataset, settings: Settings) -> None:
    """Refuse an image whose pixels likely identify the patient (see :mod:`.pixels`)."""
    if settings.allow_burned_in:
        return
    risk = pixel_risk(
        dataset.get("SOPClassUID"),
        dataset.get("BurnedInAnnotation"),
        dataset.get("RecognizableVisualFeatures"),
    )
    if risk:
        raise BurnedInAnnotationError(risk)


def _limits(settings: Settings) -> InputLimits:
    """The settings' input limits (a Settings pickled by an older version has none)."""
    return getattr(settings, "input_limits", DEFAULT_LIMITS)


def _named_as_dicom(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in DICOM_SUFFIXES


def _exists(path: str) -> bool:
    return os.path.lexists(path)


# --- running jobs, in this process or in worker processes ---------------------------------


def _run(
    job: Job[_T, _R],
    items: Sequence[_T],
    settings: Settings,
    workers: int,
    progress: Progress | None,
) -> Iterator[_R]:
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1 or len(items) < 2:
        chunks = (items[start : start + CHUNK_SIZE] for start in range(0, len(items), CHUNK_SIZE))
        results: Iterator[_R] = run_overlapped(job, chunks, settings)
    else:
        results = run_in_processes(job, items, settings, workers, CHUNK_SIZE)
    for result in results:
        if progress:
            progress(result)
        yield result
