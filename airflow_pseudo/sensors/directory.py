"""Sensor that waits for settled files in a directory."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_pseudo.triggers.directory import DirectoryTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class DirectorySensor(BaseSensorOperator):
    """
    Wait until a folder holds settled files matching a glob pattern, and return how many.

    A file counts once it is non-empty and its modification time is at least ``settle_seconds``
    old, so files still being copied are never picked up. Hidden files and ``*.part`` / ``*.tmp``
    names are ignored. With ``marker``, nothing is reported until that file exists in the folder
    (e.g. a ``_SUCCESS`` file the producer writes last). The sensor succeeds once at least
    ``min_files`` files are settled. Its XCom ``return_value`` is their number (capped at
    ``max_files``): file and folder names may carry patient names, and XCom is stored in the
    metadata database and shown in the UI, so the next task lists the folder itself. With
    ``return_files=True`` it is the sorted list of their absolute paths instead, ready to feed a
    :class:`~airflow_pseudo.operators.pseudonymise.PseudonymiseOperator` or a mapped task.

    A folder that does not exist or cannot be listed is a configuration error, not an empty
    folder: the task fails at once with a message naming it (even with ``soft_fail``), rather
    than polling until ``timeout``.

    ``poke`` has no side effects, so the sensor works in ``poke`` and ``reschedule`` mode, and with
    ``deferrable=True`` it waits on the triggerer with a
    :class:`~airflow_pseudo.triggers.directory.DirectoryTrigger`. Use ``soft_fail=True`` to end as
    *skipped* rather than failed when nothing arrives within ``timeout``.

    :param folder: The folder to watch. (templated)
    :param pattern: Glob pattern relative to ``folder``. Defaults to ``**/*``. (templated)
    :param settle_seconds: Minimum age of a file's modification time, in seconds.
        Defaults to ``60``. (templated)
    :param min_files: Minimum number of settled files. Defaults to ``1``; ``0`` does not wait
        (e.g. for a run that only adopts the files of a failed run). (templated)
    :param marker: Name of a file that must exist in ``folder`` first. Defaults to ``None``.
        (templated)
    :param max_files: Return at most this many files (the oldest names first, sorted); the rest
        wait for the next run. Defaults to ``None`` (no cap). (templated)
    :param return_files: Push the list of paths to XCom instead of their count. Defaults to
        ``False``: names may carry patient names; ask for them only where names are neutral.
    :param deferrable: Wait on the triggerer instead of a worker. Defaults to
        ``[operators] default_deferrable``.
    """

    template_fields: Sequence[str] = (
        "folder",
        "pattern",
        "marker",
        "settle_seconds",
        "min_files",
        "max_files",
    )
    ui_color = "#cfe8fc"

    def __init__(
        self,
        *,
        folder: str,
        pattern: str = "**/*",
        settle_seconds: float | str = 60.0,
        min_files: int | str = 1,
        marker: str | None = None,
        max_files: int | str | None = None,
        return_files: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.folder = folder
        self.pattern = pattern
        self.settle_seconds = settle_seconds
        self.min_files = min_files
        self.marker = marker
        self.max_files = max_files
        self.return_files = return_files
        self.deferrable = deferrable

    def _cap(self, files: list[str]) -> list[str] | int:
        capped = files[: int(self.max_files)] if self.max_files else files
        return capped if self.return_files else len(capped)

    def _listing_args(self) -> dict[str, Any]:
        """Return the rendered listing options, converted from template strings."""
        return {
            "folder": self.folder,
            "pattern": self.pattern,
            "settle_seconds": float(self.settle_seconds),
            "min_files": int(self.min_files),
            "marker": self.marker or None,
        }

    def poke(self, context: Context) -> PokeReturnValue:
        """Return whether enough settled files exist, with their count (or paths) as XCom."""
        from airflow_pseudo.incoming import find_settled_files

        args = self._listing_args()
        files = find_settled_files(args.pop("folder"), args.pop("pattern"), **args)
        self.log.info("%d settled file(s) in %s", len(files), self.folder)
        done = bool(files) or int(self.min_files) == 0  # 0: do not wait
        return PokeReturnValue(is_done=done, xcom_value=self._cap(files))

    def check_folder(self) -> None:
        """Fail without retrying if the folder is missing or cannot be listed."""
        from airflow_pseudo.incoming import check_folder

        try:
            check_folder(self.folder)
        except OSError as exc:
            raise AirflowFailException(
                f"{exc.strerror}: {exc.filename}; create it or correct the folder to watch"
            ) from None

    def execute(self, context: Context) -> Any:
        """Check the folder, then poke, or check once and defer to the triggerer."""
        # Outside poke(): BaseSensorOperator turns a failure in poke into a skip with soft_fail.
        self.check_folder()
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        self.defer(
            trigger=DirectoryTrigger(
                **self._listing_args(),
                poke_interval=self.poke_interval,
                return_files=self.return_files,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None
    ) -> list[str] | int:
        """Return the files found by the trigger."""
        if not event or event.get("status") != "success":
            message = (event or {}).get("message", "no event")
            raise AirflowException(f"DirectoryTrigger failed: {message}")
        if "count" in event:  # the trigger was told not to return names
            count = int(event["count"])
            self.log.info("%d settled file(s) in %s", count, self.folder)
            return min(count, int(self.max_files)) if self.max_files else count
        files: list[str] = list(event.get("files", []))
        self.log.info("%d settled file(s) in %s", len(files), self.folder)
        return self._cap(files)
