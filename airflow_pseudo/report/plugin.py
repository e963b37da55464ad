"""Airflow plugin that serves run reports on the API server (listed in ``get_provider_info``)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_pseudo.report.app import URL_PREFIX, create_app


class ReportPlugin(AirflowPlugin):
    """Mount the report app at ``/pseudo-reports`` on the API server; add a view on DAG runs."""

    name = "airflow_pseudo_reports"
    fastapi_apps = [
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": "airflow-pseudo run reports"}
    ]
    external_views = [
        {
            "name": "De-identification report",
            "href": f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "pseudo-report",
        }
    ]
