"""Operator that re-checks pseudonymised outputs against their originals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_pseudo.hooks.pseudo import PseudoHook
from airflow_pseudo.operators.bulk_fields import BulkFieldsMixin
from airflow_pseudo.operators.pseudonymise import (
    _SettingsMixin,
    count_statuses,
    flatten_records,
    push_before_failing,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


class ValidateOperator(BulkFieldsMixin, _SettingsMixin, BaseOperator):
    """
    Validate every pseudonymised output against its original and quarantine the ones that fail.

    ``results`` are the per-file records returned by
    :class:`~airflow_pseudo.operators.pseudonymise.PseudonymiseOperator` (pass its ``.output``;
    a list of lists from a mapped task is flattened). Each ``ok`` output is re-read and checked with
    the core's validation: no identifier of the original in any byte outside pixel data, the
    anchors' pseudonyms exactly those the key gives, valid values and UIDs, markers naming the
    profile used; an output that fails is moved to ``quarantine_dir`` with its problems beside it.
    Records of files that were not pseudonymised are passed through as ``skipped``.

    The return value is one ``ValidationResult.to_dict()`` record per file: source, output,
    status, problems (attribute names or tags and kinds of identifier, never values), quarantine
    path and ``key_checks`` (``passed``, ``failed`` or ``skipped``). If any
    output fails, the records are pushed to XCom and then the task fails: nothing with a residual
    identifying value may be published (no retry: validation is deterministic).

    :param results: The pseudonymise task's records. (templated)
    :param quarantine_dir: Where failing outputs are moved. (templated)
    :param pseudo_conn_id: The ``pseudo`` connection. Defaults to ``pseudo_default``.
    :param workers: Worker processes. Defaults to ``1``. (templated)
    :param strategy: Must match the pseudonymise task's; overrides the connection. (templated)
    :param profile: Must match the pseudonymise task's; overrides the connection. (templated)
    :param uid_root: Must match the pseudonymise task's. (templated)
    :param date_shift_days: Must match the pseudonymise task's.
    :param pymedphys_config: Must match the pseudonymise task's. (templated)
    :param keep_keywords: Must match the pseudonymise task's.
    """

    bulk_fields = ("results",)
    template_fields: Sequence[str] = (
        "results",
        "quarantine_dir",
        "pseudo_conn_id",
        "workers",
        "strategy",
        "profile",
        "uid_root",
        "pymedphys_config",
    )
    ui_color = "#fdebd0"

    def __init__(
        self,
        *,
        results: Any,
        quarantine_dir: str | None = None,
        pseudo_conn_id: str = PseudoHook.default_conn_name,
        workers: int | str = 1,
        strategy: str | None = None,
        profile: str | None = None,
        uid_root: str | None = None,
        date_shift_days: Sequence[int] | None = None,
        pymedphys_config: str | None = None,
        keep_keywords: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.results = results
        self.quarantine_dir = quarantine_dir
        self.pseudo_conn_id = pseudo_conn_id
        self.workers = workers
        self.strategy = strategy
        self.profile = profile
        self.uid_root = uid_root
        self.date_shift_days = date_shift_days
        self.pymedphys_config = pymedphys_config
        self.keep_keywords = keep_keywords
        self.allow_burned_in = None
        self.output_layout = None
        self.durability = None

    def execute(self, context: Context) -> list[dict[str, Any]]:
        """Validate the outputs, quarantine failures, push records, fail on any failure."""
        from airflow_pseudo.pseudonymisation import ConfigurationError, validate_results
        from airflow_pseudo.pseudonymisation.logs import printable

        try:
            workers = int(self.workers)
        except (TypeError, ValueError) as exc:
            raise AirflowFailException(f"workers must be an integer: {exc}") from exc
        records = flatten_records(self.results)
        settings = self.build_settings()
        try:
            validations = validate_results(
                records, settings=settings, quarantine_dir=self.quarantine_dir, workers=workers
            )
        except ConfigurationError as exc:
            raise AirflowFailException(f"Configuration error: {printable(str(exc))}") from exc
        out = [v.to_dict() for v in validations]
        counts = count_statuses(out)
        self.log.info(
            "Validated %d file(s): %d ok, %d skipped, %d failed",
            len(out),
            counts["ok"],
            counts["skipped"],
            counts["failed"],
        )
        skipped_keys = sum(
            r.get("key_checks") == "skipped" for r in out if r["status"] != "skipped"
        )
        if skipped_keys:
            self.log.warning("Key checks skipped for %d output(s): no key available", skipped_keys)
        for record in out:
            if record["status"] == "failed":
                self.log.error(
                    "Validation failed for %s: %s; moved to %s",
                    printable(str(record["output"])),
                    printable("; ".join(record["problems"])),
                    printable(str(record["quarantine"])),
                )
        if counts["failed"]:
            push_before_failing(context, out)
            # Not retried: validation is deterministic and the failing outputs are quarantined.
            raise AirflowFailException(
                f"{counts['failed']} of {len(out)} output(s) failed validation and were "
                f"quarantined in {printable(str(self.quarantine_dir))}"
            )
        return out
