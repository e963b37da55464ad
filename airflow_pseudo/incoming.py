"""Find settled files in an incoming folder and claim them for one run.

This module is the Airflow side's file handling and imports neither Airflow nor pydicom: the
provider's sensor and trigger call :func:`find_settled_files`, and the ingest operator calls
:func:`claim_files_neutral`, :func:`staged_files` and :func:`adopt_staging`.

A file is *settled* when it is non-empty and its modification time is at least ``settle_seconds``
old, so a file still being copied (its mtime keeps moving) is never picked up. Producers that can
should also write to a ``*.part`` / ``*.tmp`` name and rename when done: such names, hidden files
and files in hidden folders are always ignored.

A run's staging folder is the single record of what the run holds: the claimed files under
neutral names, ``claims.jsonl`` (neutral name -> original relative path, mode 0600) and
``run.json`` (the DAG and run that own the folder). Every task can derive its work from it, and a
later run can adopt the files of a run that ended without publishing them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")

__all__ = [
    "CLAIMS_FILE",
    "IGNORED_SUFFIXES",
    "RUN_FILE",
    "adopt_staging",
    "check_folder",
    "claim_files",
    "claim_files_neutral",
    "find_settled_files",
    "read_run_file",
    "remove_empty_staging",
    "staged_files",
    "write_run_file",
]

#: Name of the mapping file (neutral name -> original relative path) in a staging folder.
CLAIMS_FILE = "claims.jsonl"
#: Name of the file naming the DAG run that owns a staging folder (no PHI).
RUN_FILE = "run.json"
#: Suffixes kept on neutral names, so a ``.dcm`` that is not DICOM still fails (not skipped).
_KEPT_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
_NEUTRAL_NAME = re.compile(r"(\d{6,})(\.[a-z]+)?")
#: Files holding original names, or PHI-bearing inputs, are readable by their owner only.
PRIVATE_FILE_MODE = 0o600
PRIVATE_FOLDER_MODE = 0o700

#: Files claimed per journal write: their entries reach the disk with one ``fsync``.
CLAIM_CHUNK = 512

#: Suffixes of files still being written by a producer; never reported as settled.
IGNORED_SUFFIXES: tuple[str, ...] = (".part", ".tmp", ".partial", ".crdownload")


def check_folder(folder: str | os.PathLike[str], what: str = "incoming folder") -> Path:
    """
    Return ``folder`` as an absolute path if it is a directory this process can list.

    :param folder: The folder to check.
    :param what: How error messages name the folder.
    :raises FileNotFoundError: If it does not exist.
    :raises NotADirectoryError: If it is not a directory.
    :raises PermissionError: If it cannot be listed.
    """
    root = Path(folder).absolute()
    if not root.exists():
        raise FileNotFoundError(errno.ENOENT, f"the {what} does not exist", str(root))
    if not root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"the {what} is not a directory", str(root))
    if not os.access(root, os.R_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"the {what} cannot be listed", str(root))
    return root


def _is_ignored(relative: Path) -> bool:
    if any(part.startswith(".") for part in relative.parts):
        return True
    return relative.name.lower().endswith(IGNORED_SUFFIXES)


def find_settled_files(
    folder: str | os.PathLike[str],
    pattern: str = "**/*",
    *,
    settle_seconds: float,
    min_files: int = 1,
    marker: str | None = None,
    now: float | None = None,
) -> list[str]:
    """
    List the settled files under ``folder`` that match ``pattern``.

    :param folder: The incoming folder.
    :param pattern: A :meth:`pathlib.Path.glob` pattern relative to ``folder``.
        Defaults to ``**/*`` (every file at any depth).
    :param settle_seconds: Minimum age, in seconds, of a file's modification time.
    :param min_files: Return nothing until at least this many files are settled. Defaults to ``1``;
        ``0`` returns whatever is settled, possibly nothing.
    :param marker: A file name (relative to ``folder``) that must exist before any file is
        reported, e.g. ``_SUCCESS``. The marker itself is never reported.
    :param now: The current time as a POSIX timestamp; defaults to :func:`time.time`.
    :return: Absolute paths, sorted, or an empty list when the conditions are not met.
    :raises OSError: If the folder is missing or cannot be listed (see :func:`check_folder`): a
        folder that does not exist is a configuration error, not an empty folder.
    """
    root = check_folder(folder)
    if marker and not (root / marker).exists():
        return []
    current = time.time() if now is None else now
    marker_path = (root / marker) if marker else None
    settled: set[str] = set()
    for path in root.glob(pattern):
        relative = path.relative_to(root)
        if _is_ignored(relative) or path == marker_path:
            continue
        try:
            stat = path.stat()
        except OSError:  # deleted or claimed since listing
            continue
        if not path.is_file():
            continue
        if stat.st_size > 0 and current - stat.st_mtime >= settle_seconds:
            settled.add(str(path))
    if len(settled) < min_files:
        return []
    return sorted(settled)


def claim_files(
    files: Iterable[str | os.PathLike[str]],
    staging_dir: str | os.PathLike[str],
    incoming_root: str | os.PathLike[str],
) -> list[str]:
    """
    Move ``files`` into a run-scoped ``staging_dir``, keeping paths relative to ``incoming_root``.

    Each move is one atomic :func:`os.rename`, so when two runs claim the same file only one of them
    gets it: the other sees :class:`FileNotFoundError` and skips the file. Calling this again with
    the same arguments (a retry) returns the files this staging folder already holds.
    ``staging_dir`` must be on the same file system as ``incoming_root``.

    :param files: Paths under ``incoming_root``, e.g. from :func:`find_settled_files`.
    :param staging_dir: A folder used by one run only, created if missing.
    :param incoming_root: The incoming folder the files were found in.
    :return: The claimed files' new paths, in input order.
    :raises ValueError: If a file is not under ``incoming_root``.
    :raises OSError: If the staging folder is on another file system (``EXDEV``).
    """
    root = Path(incoming_root).absolute()
    staging = Path(staging_dir).absolute()
    claimed: list[str] = []
    for file in files:
        source = Path(file).absolute()
        relative = source.relative_to(root)
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(source, target)
        except FileNotFoundError:
            if target.is_file():  # claimed by an earlier try of this same run
                claimed.append(str(target))
            continue
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise OSError(
                    exc.errno,
                    f"staging folder {staging} must be on the same file system as {root}",
                ) from exc
            raise
        claimed.append(str(target))
    return claimed


def _rename_exclusive(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` (same file system), never replacing an existing file."""
    if target.exists():
        raise FileExistsError(errno.EEXIST, "already claimed", str(target))
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise OSError(
                exc.errno,
                f"staging folder {target.parent} must be on the same file system as "
                f"{source.parent}",
            ) from exc
        raise


def _make_private_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, PRIVATE_FOLDER_MODE)


class _ClaimsJournal:
    """
    The ``claims.jsonl`` of one staging folder: neutral name -> original relative path.

    Entries are appended and flushed to disk before their files are moved, so a crash in between
    never loses an original name; :meth:`compact` then drops the entries of files this folder does
    not hold (taken by another run, or moved away), so the file lists only this run's claims.
    Entries are written in chunks of :data:`CLAIM_CHUNK`, one ``fsync`` per chunk.
    """

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.path = staging / CLAIMS_FILE
        self.entries: dict[str, dict[str, Any]] = {}
        self._claimed: dict[str, str] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self._add(json.loads(line))
        self._next = 1 + max(
            (int(m[1]) for name in self.entries if (m := _NEUTRAL_NAME.fullmatch(name))),
            default=0,
        )
        self._fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE
        )
        os.fchmod(self._fd, PRIVATE_FILE_MODE)

    def __enter__(self) -> _ClaimsJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._fd)

    def _add(self, entry: dict[str, Any]) -> None:
        self.entries[entry["claimed"]] = entry
        if "adopted_from" not in entry:
            self._claimed.setdefault(entry["original"], entry["claimed"])

    def claimed_as(self, original: str) -> str | None:
        """Return the neutral name this folder gave ``original`` when claiming it from incoming."""
        name = self._claimed.get(original)
        return name if name is not None and name in self.entries else None

    def record(self, originals: Iterable[tuple[str, str]], **extra: str) -> list[str]:
        """Give each ``(original, suffix)`` a new neutral name; write the entries to disk at once.

        :return: the names, in order. They are on disk (one ``fsync``) when this returns.
        """
        names: list[str] = []
        lines: list[str] = []
        for original, suffix in originals:
            name = f"{self._next:06d}{suffix if suffix in _KEPT_SUFFIXES else ''}"
            self._next += 1
            entry = {"claimed": name, "original": original, **extra}
            self._add(entry)
            names.append(name)
            lines.append(json.dumps(entry) + "\n")
        if lines:
            os.write(self._fd, "".join(lines).encode("utf-8"))
            os.fsync(self._fd)
        return names

    def compact(self) -> list[str]:
        """Keep only the entries of files this folder holds; return their names, in claim order."""
        with os.scandir(self.staging) as listing:  # one listing, not a stat per entry
            present = {entry.name for entry in listing if entry.is_file()}
        held = [name for name in self.entries if name in present]
        temporary = self.path.with_name(f".{CLAIMS_FILE}.{os.getpid()}.tmp")
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE_MODE
        )
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)
            text = "".join(json.dumps(self.entries[name]) + "\n" for name in held)
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        self.entries = {name: self.entries[name] for name in held}
        return held


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def claim_files_neutral(
    files: Iterable[str | os.PathLike[str]],
    staging_dir: str | os.PathLike[str],
    incoming_root: str | os.PathLike[str],
) -> list[str]:
    """
    Like :func:`claim_files`, but the claimed files get neutral names (``000001.dcm``...).

    File and folder names often carry patient names or IDs; with neutral names none of them
    reaches XCom, task logs, result records, quarantine notes or manifests. The original relative
    path of each file is written to ``staging_dir/claims.jsonl`` (``{"claimed", "original"}`` per
    line, flushed to disk before the rename; mode 0600, in a 0700 folder), which stays in the
    staging folder: a PHI zone, like the incoming folder. When claiming ends the file lists only
    the files this folder holds, never one a concurrent run took. A retry reuses the mapping, so
    it returns the same names.

    Only the suffixes ``.dcm``, ``.dicom`` and ``.dic`` are kept (a suffix can carry text too).

    :return: The claimed files' new paths, in input order.
    :raises ValueError: If a file is not under ``incoming_root``.
    :raises OSError: If the staging folder is on another file system (``EXDEV``).
    """
    root = Path(incoming_root).absolute()
    staging = Path(staging_dir).absolute()
    _make_private_folder(staging)
    claimed: list[str] = []
    sources = [Path(file).absolute() for file in files]
    with _ClaimsJournal(staging) as journal:
        try:
            for chunk in _chunks(sources, CLAIM_CHUNK):
                relatives = [source.relative_to(root).as_posix() for source in chunk]
                names = [journal.claimed_as(relative) for relative in relatives]
                # Recorded before the renames: a crash in between never loses an original name.
                new = iter(
                    journal.record(
                        (relative, source.suffix.lower())
                        for source, relative, name in zip(chunk, relatives, names, strict=True)
                        if name is None
                    )
                )
                for source, name in zip(chunk, names, strict=True):
                    target = staging / (name or next(new))
                    if name is not None and target.exists():
                        claimed.append(str(target))  # a retry: never replace a claimed file
                        continue
                    try:
                        _rename_exclusive(source, target)
                    except FileNotFoundError:  # taken by another run since listing
                        continue
                    claimed.append(str(target))
        finally:
            journal.compact()
    return claimed


def staged_files(staging_dir: str | os.PathLike[str]) -> list[str]:
    """
    Return the claimed files a staging folder holds, in claim order.

    This is what a run still has to process: files already archived by ``publish``, or adopted
    by another run, are no longer listed.

    :param staging_dir: A run's staging folder; a missing folder holds nothing.
    """
    staging = Path(staging_dir).absolute()
    if not (staging / CLAIMS_FILE).is_file():
        return []
    with _ClaimsJournal(staging) as journal:
        return [str(staging / name) for name in journal.compact()]


def adopt_staging(
    orphan_dir: str | os.PathLike[str],
    staging_dir: str | os.PathLike[str],
    *,
    limit: int | None = None,
) -> list[str]:
    """
    Move the claimed files of another run's staging folder into ``staging_dir``.

    Each file gets a new neutral name in ``staging_dir`` and keeps its original relative path in
    ``claims.jsonl`` (with ``"adopted_from"``: the orphan folder's name), written before the move.
    Once the orphan folder holds no claimed file, its ``claims.jsonl`` and ``run.json`` are removed
    and so is the folder, if empty.

    :param orphan_dir: The staging folder of a run that ended without publishing its files.
    :param staging_dir: This run's staging folder.
    :param limit: Adopt at most this many files; the rest stay for a later run.
    :return: The adopted files' new paths.
    """
    orphan = Path(orphan_dir).absolute()
    staging = Path(staging_dir).absolute()
    _make_private_folder(staging)
    adopted: list[str] = []
    with _ClaimsJournal(orphan) as theirs, _ClaimsJournal(staging) as ours:
        try:
            held = theirs.compact()
            for chunk in _chunks(held if limit is None else held[:limit], CLAIM_CHUNK):
                news = ours.record(
                    ((theirs.entries[name]["original"], Path(name).suffix) for name in chunk),
                    adopted_from=orphan.name,
                )
                for name, new in zip(chunk, news, strict=True):
                    try:
                        _rename_exclusive(orphan / name, staging / new)
                    except FileNotFoundError:  # adopted by another run at the same time
                        continue
                    adopted.append(str(staging / new))
        finally:
            ours.compact()
            left = theirs.compact()
    if not left:
        remove_empty_staging(orphan)
    return adopted


def remove_empty_staging(staging_dir: str | os.PathLike[str]) -> bool:
    """
    Remove a staging folder that holds no claimed file; return whether it is gone.

    :param staging_dir: A run's staging folder. Its ``claims.jsonl`` and ``run.json`` go with it;
        a folder holding anything else is kept.
    """
    staging = Path(staging_dir)
    if staged_files(staging):
        return False
    for leftover in (CLAIMS_FILE, RUN_FILE):
        (staging / leftover).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # holds something else: keep it
        staging.rmdir()
    return not staging.exists()


def write_run_file(staging_dir: str | os.PathLike[str], *, dag_id: str, run_id: str) -> None:
    """Record, in the staging folder, the DAG run that owns it (so others can tell orphans)."""
    staging = Path(staging_dir).absolute()
    _make_private_folder(staging)
    path = staging / RUN_FILE
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.write(fd, json.dumps({"dag_id": dag_id, "run_id": run_id}).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_run_file(staging_dir: str | os.PathLike[str]) -> dict[str, str] | None:
    """Return the ``{"dag_id", "run_id"}`` owning a staging folder, or ``None`` if unrecorded."""
    path = Path(staging_dir) / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and {"dag_id", "run_id"} <= data.keys():
        return {"dag_id": str(data["dag_id"]), "run_id": str(data["run_id"])}
    return None
