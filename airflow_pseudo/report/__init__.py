"""The run report: what a run did, as ``report.json`` and a self-contained ``report.html``.

The report names files only by their pseudonymised output name or by an index, never by the
original name or path, so it can be shown to anyone allowed to see the run. It imports neither
pydicom nor Airflow.
"""

from __future__ import annotations

from airflow_pseudo.report.html import render_html
from airflow_pseudo.report.model import REPORT_HTML, REPORT_JSON, build_report, write_report

__all__ = ["REPORT_HTML", "REPORT_JSON", "build_report", "render_html", "write_report"]
