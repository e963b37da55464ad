"""The publish task's extra link to its run report, served by the report app."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

from airflow_pseudo.report.app import URL_PREFIX, reports_root

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def report_url(report: str, *, dag_id: str, root: Path | None = None) -> str:
    """Return the URL of `report` on the API server, or ``""`` if it is outside the reports root.

    :param report: the report's path or ``file://`` URI, as publish returns it.
    :param dag_id: the DAG the report belongs to; the app checks the reader may see its runs.
    :param root: the reports root; defaults to ``[pseudo] reports_root``.
    """
    from airflow.sdk import conf

    if "://" in report and not report.startswith("file://"):
        return ""  # on an object store: the API server serves local reports only
    path = Path(report.removeprefix("file://")).resolve()
    base = (root or reports_root()).resolve()
    if not path.is_relative_to(base):
        return ""
    relative = quote(path.relative_to(base).as_posix())
    api = conf.get("api", "base_url", fallback="/").rstrip("/")
    return f"{api}{URL_PREFIX}/files/{relative}?{urlencode({'dag_id': dag_id})}"


class ReportLink(BaseOperatorLink):
    """Link from a publish task to the ``report.html`` it wrote."""

    name = "De-identification report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """Return the report's URL, read from the task's return value; ``""`` without one."""
        from airflow.sdk.execution_time.xcom import XCom

        value: Any = XCom.get_value(ti_key=ti_key, key="return_value")
        report = value.get("report") if isinstance(value, dict) else None
        return report_url(report, dag_id=ti_key.dag_id) if report else ""
