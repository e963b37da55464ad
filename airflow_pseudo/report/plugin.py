"""Airflow plugin that serves run reports on the API server (listed in ``get_provider_info``).

Every Airflow process loads plugins (a task does when it first touches an ``ObjectStoragePath``),
but only the API server serves apps: elsewhere the app is not built, which spares each such
process the API server's imports (about a second). Airflow's own Edge provider does the same.
"""

from __future__ import annotations

import sys

from airflow.plugins_manager import AirflowPlugin

from airflow_pseudo.report.app import URL_PREFIX

RUNNING_ON_API_SERVER = len(sys.argv) > 1 and sys.argv[1] == "api-server"


def _fastapi_apps() -> list[dict[str, object]]:
    if not RUNNING_ON_API_SERVER:
        return []
    from airflow_pseudo.report.app import create_app

    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "airflow-pseudo run reports"}]


class ReportPlugin(AirflowPlugin):
    """Mount the report app at ``/pseudo-reports`` on the API server; add a view on DAG runs."""

    name = "airflow_pseudo_reports"
    fastapi_apps = _fastapi_apps()
    external_views = [
        {
            "name": "De-identification report",
            "href": f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "pseudo-report",
        }
    ]
