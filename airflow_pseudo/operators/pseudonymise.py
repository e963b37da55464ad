"""Operator that pseudonymises DICOM files and returns one result record per file."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowNotFoundException,
    AirflowSkipException,
)

from airflow_pseudo.hooks.pseudo import PseudoHook
from airflow_pseudo.operators.bulk_fields import BulkFieldsMixin

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_pseudo.pseudonymisation import Settings


def flatten_records(value: Any) -> list[dict[str, Any]]:
    """
    Flatten result records from XCom into one list of dicts.

    Accepts a list of records, a list of lists (the output of a mapped task) or ``None``.
    """
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [dict(value)]
    records: list[dict[str, Any]] = []
    for item in value:
        if item is None:
            continue
        if isinstance(item, Mapping):
            records.append(dict(item))
        else:
            records.extend(flatten_records(item))
    return records


def flatten_paths(value: Any) -> list[str]:
    """Flatten a path, a list of paths or a list of lists of paths into a list of strings."""
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        return [os.fspath(value)]
    paths: list[str] = []
    for item in value:
        paths.extend(flatten_paths(item))
    return paths


def push_before_failing(context: Context, records: list[dict[str, Any]]) -> None:
    """Push the records as this task's XCom even though it is about to fail."""
    ti = context.get("ti") if context else None
    if ti is not None:
        ti.xcom_push(key="return_value", value=records)


class _SettingsMixin:
    """Shared ``pseudo`` connection handling for the operators that need ``Settings``."""

    pseudo_conn_id: str
    strategy: str | None
    profile: str | None
    uid_root: str | None
    date_shift_days: Sequence[int] | None
    pymedphys_config: str | None
    keep_keywords: Sequence[str] | None
    allow_burned_in: bool | None
    output_layout: str | None
    durability: str | None

    def build_settings(self) -> Settings:
        """Return the connection's settings with this task's overrides (no retry on errors)."""
        from airflow_pseudo.pseudonymisation import ConfigurationError
        from airflow_pseudo.pseudonymisation.logs import printable

        overrides: dict[str, Any] = {
            "strategy": self.strategy,
            "profile": self.profile,
            "uid_root": self.uid_root,
            "pymedphys_config": self.pymedphys_config,
            "allow_burned_in": self.allow_burned_in,
            "output_layout": self.output_layout,
            "durability": self.durability,
        }
        if self.date_shift_days is not None:
            overrides["date_shift_days"] = self.date_shift_days  # parsed by build_recipe
        if self.keep_keywords:
            overrides["keep_keywords"] = tuple(self.keep_keywords)
        try:
            return PseudoHook(pseudo_conn_id=self.pseudo_conn_id).get_settings(**overrides)
        except ConfigurationError as exc:  # includes MissingKeyError
            raise AirflowFailException(f"Configuration error: {printable(str(exc))}") from exc
        except AirflowNotFoundException as exc:
            raise AirflowFailException(
                f"Connection {self.pseudo_conn_id!r} is not defined: create a 'pseudo' connection "
                f"holding the key, e.g. AIRFLOW_CONN_{self.pseudo_conn_id.upper()}="
                '\'{"conn_type": "pseudo", "password": "<key>"}\''
            ) from exc


class PseudonymiseOperator(BulkFieldsMixin, _SettingsMixin, BaseOperator):
    """
    Pseudonymise DICOM files and return one JSON-native result record per file.

    Give either ``input_path`` (a folder, pseudonymised recursively) or ``files`` (a list of
    paths, such as the XCom of a :class:`~airflow_pseudo.sensors.directory.DirectorySensor`).
    Every file is processed: a file that cannot be pseudonymised is recorded as ``failed`` with its
    reason and a copy is put in ``quarantine_dir``; files that are not DICOM are ``skipped``.
    Then the failure policy applies: if more than ``max_failed_files`` files failed, the task fails
    after pushing the records to XCom; bad data fails without retrying, and only failures caused
    by I/O errors leave ``retries`` to apply.

    The return value (XCom ``return_value``) is the list of the core's ``FileResult.to_dict()``
    records: source and output paths, status, reason, quarantine path and change counts. It never
    holds a DICOM value or the key. The key and default options come from the ``pseudo``
    connection (see :class:`~airflow_pseudo.hooks.pseudo.PseudoHook`); the options given here
    override them. A configuration error (no key, bad strategy, output inside the input folder)
    fails the task without retrying.

    :param input_path: A folder to pseudonymise. (templated)
    :param files: Paths to pseudonymise; a list of lists is flattened. (templated)
    :param output_dir: Where outputs go. Defaults to ``<input>-pseudonymised/<run_id>`` beside the
        input folder. Must not be inside the input folder. (templated)
    :param quarantine_dir: Where copies of failed inputs go, with their reasons. Defaults to
        ``<output_dir>-quarantine``. (templated)
    :param input_root: Folder that ``files`` are relative to (for the ``mirror`` layout and
        quarantine names). Defaults to ``input_path``. (templated)
    :param strategy: ``keyed`` or ``pymedphys``; overrides the connection. (templated)
    :param profile: ``basic``, ``default``, ``research``, ``pymedphys`` or the path of a
        project profile file; overrides the connection. (templated)
    :param uid_root: UID root for new UIDs; overrides the connection. (templated)
    :param date_shift_days: ``(min, max)`` days of the per-patient date shift.
    :param pymedphys_config: Path to a PyMedPhys ``config.toml``. (templated)
    :param keep_keywords: DICOM keywords to keep unchanged.
    :param allow_burned_in: Pseudonymise files flagged with burned-in annotations.
    :param output_layout: ``uids`` (default) or ``mirror``.
    :param durability: ``batch`` (default: one file-system sync per chunk of outputs, before
        they are linked into place), ``file`` (an fsync per output) or ``none``. (templated)
    :param pseudo_conn_id: The ``pseudo`` connection. Defaults to ``pseudo_default``.
    :param workers: Worker processes. Defaults to ``1``. (templated)
    :param max_failed_files: Failed files tolerated before the task fails. Defaults to ``0``.
        (templated)

    .. seealso:: ``docs/provider.md`` and ``dags/dicom_pseudonymise.py``.
    """

    bulk_fields = ("files",)
    template_fields: Sequence[str] = (
        "input_path",
        "files",
        "output_dir",
        "quarantine_dir",
        "input_root",
        "strategy",
        "profile",
        "uid_root",
        "pymedphys_config",
        "pseudo_conn_id",
        "workers",
        "max_failed_files",
        "durability",
    )
    ui_color = "#d5f5e3"

    def __init__(
        self,
        *,
        input_path: str | None = None,
        files: Sequence[str] | str | None = None,
        output_dir: str | None = None,
        quarantine_dir: str | None = None,
        input_root: str | None = None,
        strategy: str | None = None,
        profile: str | None = None,
        uid_root: str | None = None,
        date_shift_days: Sequence[int] | None = None,
        pymedphys_config: str | None = None,
        keep_keywords: Sequence[str] | None = None,
        allow_burned_in: bool | None = None,
        output_layout: str | None = None,
        durability: str | None = None,
        pseudo_conn_id: str = PseudoHook.default_conn_name,
        workers: int | str = 1,
        max_failed_files: int | str = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_path = input_path
        self.files = files
        self.output_dir = output_dir
        self.quarantine_dir = quarantine_dir
        self.input_root = input_root
        self.strategy = strategy
        self.profile = profile
        self.uid_root = uid_root
        self.date_shift_days = date_shift_days
        self.pymedphys_config = pymedphys_config
        self.keep_keywords = keep_keywords
        self.allow_burned_in = allow_burned_in
        self.output_layout = output_layout
        self.durability = durability
        self.pseudo_conn_id = pseudo_conn_id
        self.workers = workers
        self.max_failed_files = max_failed_files

    def _default_output_dir(self, context: Context, anchor: str) -> str:
        run_id = str(context.get("run_id") or "manual")
        base = Path(anchor)
        return str(base.parent / f"{base.name}-pseudonymised" / run_id)

    def execute(self, context: Context) -> list[dict[str, Any]]:
        """Pseudonymise every input, push per-file records, then apply the failure policy."""
        from airflow_pseudo.pseudonymisation import (
            ConfigurationError,
            pseudonymise_directory,
            pseudonymise_files,
        )
        from airflow_pseudo.pseudonymisation.logs import printable

        try:
            workers = int(self.workers)
            max_failed = int(self.max_failed_files)
        except (TypeError, ValueError) as exc:
            raise AirflowFailException(
                f"workers and max_failed_files must be integers: {exc}"
            ) from exc
        if workers < 1 or max_failed < 0:
            raise AirflowFailException("workers must be >= 1 and max_failed_files >= 0")
        if self.input_path is None and self.files is None:
            raise AirflowFailException("give input_path (a folder) or files (a list of paths)")

        files = None if self.files is None else flatten_paths(self.files)
        if files is not None and not files:
            raise AirflowSkipException("No files to pseudonymise")
        input_root = self.input_root or self.input_path
        anchor = input_root or os.path.commonpath([os.path.dirname(f) for f in files or []])
        output_dir = self.output_dir or self._default_output_dir(context, anchor)
        quarantine_dir = self.quarantine_dir or f"{output_dir.rstrip('/')}-quarantine"

        self._lineage_folders = ([anchor], [output_dir, quarantine_dir])
        settings = self.build_settings()
        self.log.info(
            "Pseudonymising %s into %s (strategy %s, profile %s, %d worker(s))",
            f"{len(files)} file(s)" if files is not None else printable(self.input_path or ""),
            printable(output_dir),
            settings.strategy,
            settings.profile,
            workers,
        )
        try:
            if files is not None:
                results = pseudonymise_files(
                    files,
                    output_dir,
                    settings=settings,
                    input_root=input_root,
                    quarantine_dir=quarantine_dir,
                    workers=workers,
                )
            else:
                assert self.input_path is not None
                results = pseudonymise_directory(
                    self.input_path,
                    output_dir,
                    settings=settings,
                    quarantine_dir=quarantine_dir,
                    workers=workers,
                )
        except ConfigurationError as exc:
            raise AirflowFailException(f"Configuration error: {printable(str(exc))}") from exc

        records = [r.to_dict() for r in results]
        counts = count_statuses(records)
        self.log.info(
            "Pseudonymised %d file(s): %d ok, %d skipped, %d failed",
            len(records),
            counts["ok"],
            counts["skipped"],
            counts["failed"],
        )
        for record in records:
            if record["status"] == "failed":
                self.log.warning(
                    "Failed: %s (%s); quarantined at %s",
                    printable(record["source"]),
                    printable(str(record["reason"])),
                    printable(str(record["quarantine"])),
                )
        if counts["failed"] > max_failed:
            push_before_failing(context, records)
            message = (
                f"{counts['failed']} of {len(records)} file(s) failed, more than "
                f"max_failed_files={max_failed}; see quarantine {printable(quarantine_dir)}"
            )
            if any(is_transient_failure(r) for r in records):
                raise AirflowException(message + " (I/O errors: retrying may help)")
            # Bad data fails the same way every time: no retry.
            raise AirflowFailException(message)
        return records

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Report the input folder and the output and quarantine folders to OpenLineage."""
        from airflow_pseudo.lineage import folder_lineage

        inputs, outputs = getattr(self, "_lineage_folders", ([], []))
        return folder_lineage(inputs, outputs)


#: OS errors a retry may cure: the storage, not the data, was at fault.
TRANSIENT_ERRNOS = (
    errno.EIO,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EAGAIN,
    errno.EBUSY,
    errno.ESTALE,
    errno.ETIMEDOUT,
    errno.ENFILE,
    errno.EMFILE,
    errno.ENOMEM,
)
_TRANSIENT_MESSAGES = tuple(os.strerror(code) for code in TRANSIENT_ERRNOS)


def is_transient_failure(record: Mapping[str, Any]) -> bool:
    """Whether a failed record's reason names a transient OS error (the core quotes strerror)."""
    reason = str(record.get("reason") or "")
    return record.get("status") == "failed" and any(m in reason for m in _TRANSIENT_MESSAGES)


def count_statuses(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Count records per status (``ok``, ``skipped``, ``failed`` always present)."""
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    for record in records:
        status = str(record.get("status"))
        counts[status] = counts.get(status, 0) + 1
    return counts
