"""Find settled files in an incoming folder and claim them for one run.

This module imports nothing from Airflow (nor pydicom); the provider's sensor and trigger call
:func:`find_settled_files`, and the example DAGs' ingest step calls :func:`claim_files`.

A file is *settled* when it is non-empty and its modification time is at least ``settle_seconds``
old, so a file still being copied (its mtime keeps moving) is never picked up. Producers that can
should also write to a ``*.part`` / ``*.tmp`` name and rename when done: such names, hidden files
and files in hidden folders are always ignored.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "CLAIMS_FILE",
    "IGNORED_SUFFIXES",
    "claim_files",
    "claim_files_neutral",
    "find_settled_files",
]

#: Name of the mapping file (neutral name -> original relative path) in a staging folder.
CLAIMS_FILE = "claims.jsonl"
#: Suffixes kept on neutral names, so a ``.dcm`` that is not DICOM still fails (not skipped).
_KEPT_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})

#: Suffixes of files still being written by a producer; never reported as settled.
IGNORED_SUFFIXES: tuple[str, ...] = (".part", ".tmp", ".partial", ".crdownload")


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

    :param folder: The incoming folder. A missing folder has no files.
    :param pattern: A :meth:`pathlib.Path.glob` pattern relative to ``folder``.
        Defaults to ``**/*`` (every file at any depth).
    :param settle_seconds: Minimum age, in seconds, of a file's modification time.
    :param min_files: Return nothing until at least this many files are settled. Defaults to ``1``.
    :param marker: A file name (relative to ``folder``) that must exist before any file is
        reported, e.g. ``_SUCCESS``. The marker itself is never reported.
    :param now: The current time as a POSIX timestamp; defaults to :func:`time.time`.
    :return: Absolute paths, sorted, or an empty list when the conditions are not met.
    """
    root = Path(folder).absolute()
    if not root.is_dir():
        return []
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
    if len(settled) < max(min_files, 1):
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
    line, flushed to disk before the rename), which stays in the staging folder: a PHI zone, like
    the incoming folder. A retry reuses the mapping, so it returns the same names.

    Only the suffixes ``.dcm``, ``.dicom`` and ``.dic`` are kept (a suffix can carry text too).

    :return: The claimed files' new paths, in input order.
    :raises ValueError: If a file is not under ``incoming_root``.
    :raises OSError: If the staging folder is on another file system (``EXDEV``).
    """
    root = Path(incoming_root).absolute()
    staging = Path(staging_dir).absolute()
    staging.mkdir(parents=True, exist_ok=True)
    mapping_path = staging / CLAIMS_FILE
    known: dict[str, str] = {}
    if mapping_path.exists():
        for line in mapping_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                known[entry["original"]] = entry["claimed"]
    claimed: list[str] = []
    with open(mapping_path, "a", encoding="utf-8") as mapping:
        for file in files:
            source = Path(file).absolute()
            relative = source.relative_to(root).as_posix()
            name = known.get(relative)
            if name is None:
                suffix = source.suffix.lower() if source.suffix.lower() in _KEPT_SUFFIXES else ""
                name = f"{len(known) + 1:06d}{suffix}"
                known[relative] = name
                # Recorded before the rename: a crash in between never loses the original name.
                mapping.write(json.dumps({"claimed": name, "original": relative}) + "\n")
                mapping.flush()
                os.fsync(mapping.fileno())
            target = staging / name
            if target.exists():  # a retry: never replace a file already claimed
                claimed.append(str(target))
                continue
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
