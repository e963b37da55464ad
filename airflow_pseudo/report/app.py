"""Serve run reports on Airflow's API server, from the configured reports folder only.

:class:`~airflow_pseudo.report.plugin.ReportPlugin` mounts this app at
:data:`URL_PREFIX`. ``/runs/<dag_id>/<run_id>`` redirects to a run's report (the UI's view on a
DAG run). ``/files/<path>`` names a report by its path relative to the reports root
(``[pseudo] reports_root``); only files called ``report.html`` or ``report.json`` that resolve
inside that root are served, so neither ``..`` nor a symbolic link reaches any other file. On the
API server the caller must be logged in to Airflow and allowed to read DAG runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow_pseudo.report.model import REPORT_HTML, REPORT_JSON

#: Where the plugin mounts the app on the API server.
URL_PREFIX = "/pseudo-reports"
_SERVED_NAMES = {REPORT_HTML: "text/html; charset=utf-8", REPORT_JSON: "application/json"}


def reports_root() -> Path:
    """Return the folder reports are served from: ``[pseudo] reports_root``.

    Unset, it is the example DAGs' publish folder: ``$AIRFLOW_PSEUDO_DATA_DIR/published``, or
    ``$AIRFLOW_HOME/pseudo-data/published``.
    """
    from airflow.sdk import conf

    configured = conf.get("pseudo", "reports_root", fallback=None)
    if configured:
        return Path(configured)
    data = os.environ.get("AIRFLOW_PSEUDO_DATA_DIR") or os.path.join(
        os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow"), "pseudo-data"
    )
    return Path(data) / "published"


def resolve_report(root: Path, relative: str) -> Path | None:
    """Return the report file `relative` names inside `root`, or ``None`` if it may not be served.

    :param root: the reports root.
    :param relative: the path from the URL, relative to `root`.
    """
    if not relative or "\0" in relative or os.path.isabs(relative):
        return None
    base = root.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base) or candidate.name not in _SERVED_NAMES:
        return None
    return candidate if candidate.is_file() else None


def find_run_report_link(dag_id: str, run_id: str) -> str | None:
    """Return the report link the run's publish task stored, or ``None`` (API server only).

    :param dag_id: the DAG.
    :param run_id: the DAG run.
    """
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_pseudo.report.link import ReportLink

    query = select(XComModel).where(
        XComModel.dag_id == dag_id,
        XComModel.run_id == run_id,
        XComModel.key == ReportLink().xcom_key,
    )
    with create_session() as session:
        for row in session.scalars(query):
            link = XComModel.deserialize_value(row)
            if isinstance(link, str) and link:
                return link
    return None


def create_app(root: str | os.PathLike[str] | None = None, *, require_login: bool = True) -> Any:
    """Return the FastAPI app that serves reports.

    :param root: the reports root; defaults to :func:`reports_root`, read per request.
    :param require_login: require an Airflow user allowed to read DAG runs (the API server's
        authentication). ``False`` only where nothing else can reach the app, as in tests.
    """
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import FileResponse, RedirectResponse

    dependencies = []
    if require_login:
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
        from airflow.api_fastapi.core_api.security import requires_access_dag

        dependencies.append(Depends(requires_access_dag("GET", DagAccessEntity.RUN)))

    app = FastAPI(title="airflow-pseudo run reports", docs_url=None, redoc_url=None)

    @app.get("/files/{relative:path}", dependencies=dependencies)
    def report_file(relative: str) -> FileResponse:
        """Return one report file from under the reports root."""
        found = resolve_report(Path(root) if root is not None else reports_root(), relative)
        if found is None:
            raise HTTPException(status_code=404, detail="No such report")
        return FileResponse(
            found,
            media_type=_SERVED_NAMES[found.name],
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @app.get("/runs/{dag_id}/{run_id}", dependencies=dependencies)
    def run_report(dag_id: str, run_id: str) -> RedirectResponse:
        """Redirect to the report of a DAG run: the UI's view on the run."""
        link = find_run_report_link(dag_id, run_id)
        if link is None:
            raise HTTPException(status_code=404, detail="This run has no report")
        return RedirectResponse(link, status_code=307)

    return app
