"""Tests for the report app: reports from the reports root only, behind Airflow's login."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from airflow_pseudo.report import build_report, write_report
from airflow_pseudo.report.app import URL_PREFIX, create_app, reports_root, resolve_report


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A reports root with one run's report, and a secret file beside the root."""
    run = tmp_path / "published" / "manual__1"
    run.mkdir(parents=True)
    write_report(build_report([], counts={"published": 0}), run)
    (run / "manifest.jsonl").write_text("{}\n")
    (tmp_path / "secret.html").write_text("secret")
    return tmp_path / "published"


def test_serves_the_report(root: Path):
    client = TestClient(create_app(root, require_login=False))
    response = client.get("/files/manual__1/report.html")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "De-identification report" in response.text
    assert client.get("/files/manual__1/report.json").json()["counts"]["published"] == 0


@pytest.mark.parametrize(
    "path",
    [
        "manual__1/manifest.jsonl",  # not a report
        "../secret.html",
        "manual__1/../../secret.html",
        "manual__2/report.html",  # missing
        "link/report.html",  # a symbolic link out of the root
    ],
)
def test_refuses_anything_else(root: Path, path: str):
    outside = root.parent / "outside"
    outside.mkdir()
    write_report(build_report([], counts={}), outside)
    (root / "link").symlink_to(outside)
    client = TestClient(create_app(root, require_login=False))
    assert client.get(f"/files/{path}").status_code == 404
    assert resolve_report(root, path) is None


def test_absolute_path_is_refused(root: Path):
    assert resolve_report(root, str(root / "manual__1" / "report.html")) is None
    assert (
        resolve_report(root, "manual__1/report.html")
        == (root / "manual__1" / "report.html").resolve()
    )


def test_root_comes_from_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("AIRFLOW__PSEUDO__REPORTS_ROOT", str(tmp_path))
    assert reports_root() == tmp_path
    monkeypatch.delenv("AIRFLOW__PSEUDO__REPORTS_ROOT")
    monkeypatch.setenv("AIRFLOW_PSEUDO_DATA_DIR", str(tmp_path / "data"))
    assert reports_root() == tmp_path / "data" / "published"


@pytest.mark.usefixtures("airflow_db")
def test_api_server_mounts_it_behind_login(monkeypatch: pytest.MonkeyPatch, root: Path):
    """Airflow's own API app loads the provider's plugin; without a login nothing is served."""
    monkeypatch.setenv("AIRFLOW__PSEUDO__REPORTS_ROOT", str(root))
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "report-tests-" * 8)
    from airflow import plugins_manager, settings
    from airflow.api_fastapi.app import create_app as create_api_app

    # Load plugins the way every component does once providers are discovered eagerly (the
    # package's ``airflow.plugins`` entry point loads it without that, once installed), as the
    # API server: other processes build no app.
    monkeypatch.setattr(settings, "LAZY_LOAD_PROVIDERS", False)
    monkeypatch.setattr(sys, "argv", ["airflow", "api-server"])
    monkeypatch.delitem(sys.modules, "airflow_pseudo.report.plugin", raising=False)
    for cached in (plugins_manager._get_plugins, plugins_manager.get_fastapi_plugins):
        cached.cache_clear()
    try:
        names = [app["name"] for app in plugins_manager.get_fastapi_plugins()[0]]
        assert "airflow-pseudo run reports" in names
        client = TestClient(create_api_app())
    finally:
        for cached in (plugins_manager._get_plugins, plugins_manager.get_fastapi_plugins):
            cached.cache_clear()
    response = client.get(f"{URL_PREFIX}/files/manual__1/report.html")
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    assert os.fspath(root) not in response.text

    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="u", role="viewer"))
    response = client.get(
        f"{URL_PREFIX}/files/manual__1/report.html?dag_id=d",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    assert "De-identification report" in response.text


def test_other_processes_build_no_app():
    """A task process loads the plugin without the API server's imports (about a second)."""
    code = (
        "import sys; from airflow_pseudo.report.plugin import ReportPlugin; "
        "assert ReportPlugin.fastapi_apps == [], ReportPlugin.fastapi_apps; "
        "assert ReportPlugin.external_views; "
        "print(sorted(m for m in sys.modules if m.startswith(('fastapi', 'airflow.api_fastapi'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"
