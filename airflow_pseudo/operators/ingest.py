"""Operator that claims settled incoming files into a run's staging folder."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowNotFoundException,
    AirflowSkipException,
)

from airflow_pseudo.hooks.pseudo import PseudoHook

if TYPE_CHECKING:
    from airflow.sdk import Context

#: DAG run states in which a run may still use its staging folder.
ACTIVE_RUN_STATES = ("queued", "running")
#: XCom key of the number of settled files a run capped by ``max_files`` left for the next run.
LEFT_FOR_NEXT_RUN_KEY = "left_for_next_run"


def split_batches(files: Sequence[str], batch_size: int, max_batches: int) -> list[list[str]]:
    """
    Split ``files`` into batches of ``batch_size``, enlarged so there are at most ``max_batches``.

    :param files: The files, in order.
    :param batch_size: Files per batch, at least.
    :param max_batches: Upper bound on the number of batches.
    """
    size = max(int(batch_size), math.ceil(len(files) / max(max_batches, 1)), 1)
    return [list(files[i : i + size]) for i in range(0, len(files), size)]


def _optional_int(value: int | str | None) -> int | None:
    """Read an optional count that may arrive as a rendered template string."""
    return None if value in (None, "", "None") else int(value)


class IngestOperator(BaseOperator):
    """
    Claim the settled files of an incoming folder into this run's staging folder.

    Before any file is touched, the ``pseudo`` connection is checked (it exists and yields a valid
    key and options) and so are the folders (the incoming folder can be listed; the staging folder
    can be created on the same file system): a configuration error fails the task at once, without
    retrying, and every file stays where it was.

    Then the incoming folder is listed once, with the sensor's options. Each file is moved into
    ``staging_dir`` by one atomic rename under a neutral name (``000001.dcm``...), so two
    overlapping runs never take the same file and no original name, which may carry PHI, reaches
    XCom or logs; the original relative paths go to ``claims.jsonl`` in the staging folder (mode
    0600), which lists only this run's claims.

    The staging folder is the run's record of its work. Running the task again (a retry, or a
    clear from any point) returns what the folder already holds, topped up from the incoming
    folder to ``max_files``, so nothing claimed is ever forgotten. With ``adopt_orphans``, the
    staging folders of other runs of any DAG sharing the work folder that are no longer queued or
    running (failed, or ended without publishing some files) are adopted first: their files move
    into this run and are published by it. See ``docs/operations.md``.

    The return value (XCom) is the list of claimed paths (neutral names only), or with
    ``batch_size`` a list of batches for dynamic task mapping. The number of settled files left
    in the incoming folder by ``max_files`` (a count, never names) is pushed under the XCom key
    ``left_for_next_run``, for the run report (see
    :class:`~airflow_pseudo.operators.publish.PublishOperator`). The task is skipped when there is
    nothing to process.

    :param incoming_dir: The folder to take files from. (templated)
    :param staging_dir: This run's staging folder, e.g. ``.../staging/{{ run_id }}``; its parent
        holds the staging folders of every run. Same file system as ``incoming_dir``. (templated)
    :param pattern: Glob pattern relative to ``incoming_dir``. Defaults to ``**/*``. (templated)
    :param settle_seconds: Minimum age of a file's modification time, in seconds.
        Defaults to ``60``. (templated)
    :param min_files: Claim nothing from the incoming folder unless at least this many files are
        settled. Defaults to ``1``. (templated)
    :param max_files: Hold at most this many files; the rest wait for the next run (their count is
        logged). Defaults to ``None`` (no cap). (templated)
    :param marker: Name of a file that must exist in ``incoming_dir`` first. (templated)
    :param batch_size: Return batches of at least this many files instead of a flat list:
        enlarged so that there are at most ``max_batches`` of them. (templated)
    :param max_batches: With ``batch_size``, the most batches to return, e.g. as many as the
        mapped tasks that may run at once, so that one wave of tasks handles the run. Never more
        than ``[core] max_map_length``. Defaults to ``None`` (only that limit). (templated)
    :param pseudo_conn_id: The ``pseudo`` connection checked before claiming; ``None`` skips the
        check. Defaults to ``pseudo_default``. (templated)
    :param adopt_orphans: Adopt the files left in the staging folders of runs that are over.
        Defaults to ``True``.
    """

    template_fields: Sequence[str] = (
        "incoming_dir",
        "staging_dir",
        "pattern",
        "settle_seconds",
        "min_files",
        "max_files",
        "marker",
        "batch_size",
        "max_batches",
        "pseudo_conn_id",
    )
    ui_color = "#fcf3cf"

    def __init__(
        self,
        *,
        incoming_dir: str,
        staging_dir: str,
        pattern: str = "**/*",
        settle_seconds: float | str = 60.0,
        min_files: int | str = 1,
        max_files: int | str | None = None,
        marker: str | None = None,
        batch_size: int | str | None = None,
        max_batches: int | str | None = None,
        pseudo_conn_id: str | None = PseudoHook.default_conn_name,
        adopt_orphans: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.incoming_dir = incoming_dir
        self.staging_dir = staging_dir
        self.pattern = pattern
        self.settle_seconds = settle_seconds
        self.min_files = min_files
        self.max_files = max_files
        self.marker = marker
        self.batch_size = batch_size
        self.max_batches = max_batches
        self.pseudo_conn_id = pseudo_conn_id
        self.adopt_orphans = adopt_orphans

    def execute(self, context: Context) -> list[str] | list[list[str]]:
        """Check the connection and folders, then adopt, claim and return this run's files."""
        from airflow_pseudo.incoming import (
            claim_files_neutral,
            find_settled_files,
            remove_empty_staging,
            staged_files,
            write_run_file,
        )
        from airflow_pseudo.pseudonymisation.logs import printable

        try:
            settle_seconds = float(self.settle_seconds)
            min_files = int(self.min_files)
            max_files = _optional_int(self.max_files)
            batch_size = _optional_int(self.batch_size)
            max_batches = _optional_int(self.max_batches)
        except (TypeError, ValueError) as exc:
            raise AirflowFailException(f"Invalid ingest option: {exc}") from exc
        for name, count in (("batch_size", batch_size), ("max_batches", max_batches)):
            if count is not None and count < 1:
                raise AirflowFailException(f"Invalid ingest option: {name} must be at least 1")
        self.check_connection()
        incoming, staging = self.check_folders()

        dag_id = getattr(context.get("dag"), "dag_id", None) or "unknown"
        write_run_file(staging, dag_id=dag_id, run_id=str(context.get("run_id") or staging.name))
        held = len(staged_files(staging))
        if held:
            self.log.info("The staging folder already holds %d file(s) of this run", held)
        room = None if max_files is None else max(max_files - held, 0)
        if self.adopt_orphans:
            adopted = self.adopt(staging, room, context)
            held += adopted
            room = None if room is None else room - adopted

        settled = find_settled_files(
            incoming,
            self.pattern,
            settle_seconds=settle_seconds,
            marker=self.marker or None,
        )
        if len(settled) < min_files:
            self.log.info(
                "%d settled file(s), fewer than min_files=%d: none claimed", len(settled), min_files
            )
            settled = []
        take = settled if room is None else settled[:room]
        claimed = claim_files_neutral(take, staging, incoming)
        files = staged_files(staging)
        self.log.info(
            "Claimed %d of %d settled file(s) into %s; the run holds %d file(s)",
            len(claimed),
            len(take),
            printable(staging),
            len(files),
        )
        left = len(settled) - len(take)
        if left:
            self.log.info(
                "%d settled file(s) left in the incoming folder for the next run (max_files=%s)",
                left,
                max_files,
            )
        if (ti := context.get("ti")) is not None:
            ti.xcom_push(key=LEFT_FOR_NEXT_RUN_KEY, value=left)
        if not files:
            remove_empty_staging(staging)
            raise AirflowSkipException("No file to process: nothing settled or all taken")
        if batch_size is None:
            return files
        max_map_length = conf.getint("core", "max_map_length", fallback=1024)
        limit = max_map_length if max_batches is None else min(max_batches, max_map_length)
        batches = split_batches(files, batch_size, limit)
        self.log.info("Split into %d batch(es) of <= %d file(s)", len(batches), len(batches[0]))
        return batches

    def check_connection(self) -> None:
        """Fail (no retry) unless the ``pseudo`` connection yields a valid key and options."""
        if not self.pseudo_conn_id:
            return
        from airflow_pseudo.pseudonymisation import ConfigurationError
        from airflow_pseudo.pseudonymisation.logs import printable

        try:
            PseudoHook(pseudo_conn_id=self.pseudo_conn_id).get_settings()
        except ConfigurationError as exc:  # includes MissingKeyError
            raise AirflowFailException(
                f"Connection {self.pseudo_conn_id!r} is not usable, so no file was claimed: "
                f"{printable(str(exc))}"
            ) from None
        except AirflowNotFoundException:
            raise AirflowFailException(
                f"Connection {self.pseudo_conn_id!r} is not defined, so no file was claimed: "
                "create a 'pseudo' connection holding the key, e.g. "
                f"AIRFLOW_CONN_{self.pseudo_conn_id.upper()}="
                '\'{"conn_type": "pseudo", "password": "<key>"}\''
            ) from None

    def check_folders(self) -> tuple[Path, Path]:
        """Fail (no retry) unless the incoming folder can be listed and staging sits beside it."""
        from airflow_pseudo.incoming import check_folder
        from airflow_pseudo.pseudonymisation.logs import printable

        try:
            incoming = check_folder(self.incoming_dir)
        except OSError as exc:
            raise AirflowFailException(f"{exc.strerror}: {printable(str(exc.filename))}") from None
        staging = Path(self.staging_dir).absolute()
        try:
            staging.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(staging.parent, os.W_OK | os.X_OK):
                raise PermissionError(f"cannot write to {staging.parent}")
        except OSError as exc:
            raise AirflowFailException(
                f"Cannot create the staging folder: {printable(str(exc))}"
            ) from None
        if staging.parent.stat().st_dev != incoming.stat().st_dev:
            raise AirflowFailException(
                f"The staging folder {printable(staging.parent)} must be on the same file system "
                f"as the incoming folder {printable(incoming)} (files are claimed by renaming them)"
            )
        return incoming, staging

    def adopt(self, staging: Path, room: int | None, context: Context) -> int:
        """Adopt the files of other runs' staging folders whose runs are over; return a count."""
        from airflow_pseudo.incoming import adopt_staging, read_run_file
        from airflow_pseudo.pseudonymisation.logs import printable

        adopted = 0
        for folder in sorted(p for p in staging.parent.iterdir() if p.is_dir() and p != staging):
            if room is not None and adopted >= room:
                break
            owner = read_run_file(folder)
            if owner is None or self._run_is_active(owner, context):
                continue
            limit = None if room is None else room - adopted
            files = adopt_staging(folder, staging, limit=limit)
            if files:
                self.log.warning(
                    "Adopted %d file(s) left by run %s of %s, which is over",
                    len(files),
                    printable(str(owner["run_id"])),
                    printable(str(owner["dag_id"])),
                )
            adopted += len(files)
        return adopted

    @staticmethod
    def _run_is_active(owner: dict[str, str], context: Context) -> bool:
        """Whether the run owning a staging folder may still use it (unknown counts as active)."""
        ti = context.get("ti")
        if ti is None or not hasattr(ti, "get_dr_count"):
            return True
        count = ti.get_dr_count(
            dag_id=owner["dag_id"], run_ids=[owner["run_id"]], states=list(ACTIVE_RUN_STATES)
        )
        return bool(count)
