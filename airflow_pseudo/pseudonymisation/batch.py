"""Batches: many files in, exactly one result record out per file, bad files quarantined.

A bad file never stops the others: every per-file error becomes a ``failed`` record with a reason
that names no DICOM value, and a copy of the input goes to the quarantine folder with the reason
beside it. ``workers > 1`` spreads files over processes; records come back in input order and are
the same as with one worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation.durability import BackgroundSync
from airflow_pseudo.pseudonymisation.errors import MissingKeyError, PseudonymisationError
from airflow_pseudo.pseudonymisation.fastpath import file_view, pseudonymise_buffer
from airflow_pseudo.pseudonymisation.files import (
    InputFolder,
    InputOutsideRootError,
    OutputFolder,
    StagedFile,
    check_not_inside,
    iter_files,
    read_dataset,
    remove_stale_temporaries,
    sniff_dicom,
    stage,
    uid_parts,
)
from airflow_pseudo.pseudonymisation.policy.recipe import Settings
from airflow_pseudo.pseudonymisation.results import FileResult, ValidationResult
from airflow_pseudo.pseudonymisation.validation import validate_output
from airflow_pseudo.pseudonymisation.workers import Job, run_in_processes, run_overlapped

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Progress = Callable[[Any], None]
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
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
    results = list(_run(job, paths, settings, workers, progress))
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
    return list(_run(job, records, settings, workers, progress))


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
        while the disk makes this one durable.
        """
        staged: list[tuple[FileResult, StagedFile | None]] = []
        try:
            for source in sources:
                staged.append(self._stage(source, settings))
        except BaseException:
            _StagedChunk(self, staged).abandon()
            raise
        return _StagedChunk(self, staged, durability=settings.durability)

    def _stage(self, source: str, settings: Settings) -> tuple[FileResult, StagedFile | None]:
        try:
            self.inputs.check(source)
            if not _named_as_dicom(source) and not sniff_dicom(source):
                return FileResult(source, status="skipped", reason="not a DICOM file"), None
            return self._pseudonymise(source, settings)
        except Exception as exc:
            # A link leading outside the input folder is quarantined as the link itself: its
            # target is exactly what must not be read.
            outside = isinstance(exc, InputOutsideRootError)
            return self._failed(source, exc, follow_symlinks=not outside), None

    def commit(self, result: FileResult, file: StagedFile | None, *, durable: bool) -> FileResult:
        """Name an output (``durable``: synced, its pages are released); a failure is the file's."""
        if file is None:
            return result
        try:
            file.commit(release_pages=durable)
        except Exception as exc:
            return self._failed(result.source, exc)
        return result

    def _failed(self, source: str, exc: Exception, *, follow_symlinks: bool = True) -> FileResult:
        reason = failure_reason(exc)
        result = FileResult(source, status="failed", reason=reason)
        result.quarantine = quarantine(
            source, reason, self.quarantine_dir, follow_symlinks=follow_symlinks
        )
        return result

    def _pseudonymise(self, source: str, settings: Settings) -> tuple[FileResult, StagedFile]:
        durable = settings.durability == "file"
        if settings.engine == "auto":
            try:
                with file_view(source) as buffer:
                    fast = pseudonymise_buffer(buffer, settings.pseudonymiser)
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
            except (PseudonymisationError, OSError):
                raise
            except Exception as exc:  # FastPathUnsupported, or anything the fast parser met
                log.debug("reference engine used: %s", failure_reason(exc))
        dataset = read_dataset(source, named_as_dicom=_named_as_dicom(source))
        counts = settings.pseudonymiser.pseudonymise_in_place(dataset)
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
        reason = "the worker process died while pseudonymising this file"
        return FileResult(
            source,
            status="failed",
            reason=reason,
            quarantine=quarantine(source, reason, self.quarantine_dir),
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
                self._sync.wait()
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
        return [self._validate(record, settings) for record in records]

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
    if isinstance(exc, EOFError):
        return "truncated DICOM (unexpected end of file)"
    if isinstance(exc, OSError):
        return f"cannot read or write the file ({exc.strerror or type(exc).__name__})"
    return f"pseudonymisation failed ({type(exc).__name__})"


def quarantine(
    source: PathLike,
    reason: str,
    folder: Path,
    *,
    move: bool = False,
    follow_symlinks: bool = True,
) -> str | None:
    """Put a copy of ``source`` (moved, for rejected outputs) in ``folder`` with its reason.

    With ``follow_symlinks=False`` a symbolic link is copied as a link, its target never read.

    The quarantined name is a digest of the source path, so it carries no identifying text.
    """
    token = hashlib.sha256(os.fsencode(os.path.abspath(source))).hexdigest()[:20]
    target = folder / f"{token}.dcm"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{token}.json").write_text(
            json.dumps({"source": str(source), "reason": reason}, indent=2) + "\n"
        )
        if move:
            shutil.move(source, target)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)  # a link copied by an earlier run would be followed
            shutil.copyfile(source, target, follow_symlinks=follow_symlinks)
    except OSError as exc:
        log.warning("could not quarantine a file: %s", exc.strerror or type(exc).__name__)
        return None
    return str(target)


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
