"""Tests for the report link's URL: under the reports root, on the API server's base URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_pseudo.report.link import ReportLink, report_url


def test_url_of_a_report_under_the_root(tmp_path: Path):
    report = tmp_path / "manual__2026-01-01T00:00:00+00:00" / "report.html"
    assert report_url(f"file://{report}", dag_id="d", root=tmp_path) == (
        "/pseudo-reports/files/manual__2026-01-01T00%3A00%3A00%2B00%3A00/report.html?dag_id=d"
    )


def test_api_base_url_is_the_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/af/")
    url = report_url(str(tmp_path / "r" / "report.html"), dag_id="d", root=tmp_path)
    assert url == "https://airflow.example.org/af/pseudo-reports/files/r/report.html?dag_id=d"


@pytest.mark.parametrize(
    "report", ["/elsewhere/report.html", "s3://bucket/run/report.html", "{root}/../x/report.html"]
)
def test_no_link_outside_the_root(tmp_path: Path, report: str):
    assert report_url(report.format(root=tmp_path), dag_id="d", root=tmp_path) == ""


def test_link_name():
    assert ReportLink().name == "De-identification report"
    assert ReportLink().xcom_key == "_link_ReportLink"
