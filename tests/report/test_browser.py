"""The report in a real browser: a real DAG run, its extra link, the app on localhost, Chromium."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_pseudo.testing import FakePatient, write_corpus
from tests.conftest import CHROMIUM_FLAGS, require_tool


def _inputs_named_after_patients(incoming: Path) -> list[Path]:
    """Write a corpus whose folder and file names carry the patients' names and IDs."""
    paths = []
    for path in write_corpus(incoming / "tmp", patients=2, series_per_study=1):
        patient = FakePatient.for_number(int(path.name[2:5]))
        folder = incoming / patient.name
        folder.mkdir(exist_ok=True)
        named = folder / f"{patient.patient_id} {patient.name} {path.name}"
        path.rename(named)
        paths.append(named)
    (incoming / "tmp").rmdir()
    broken = incoming / "Doe^John" / "Doe^John MRN999999.dcm"
    broken.parent.mkdir()
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    return [*paths, broken]


def _serialize(dag: Any) -> None:
    """Store a DAG defined in a test in the metadata DB, as the dag-processor would."""
    import os

    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull, bundle_name="dags-folder")
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


@pytest.fixture
def finished_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: None, pseudo_conn: str
) -> dict[str, Any]:
    """Run pseudonymise -> validate -> publish with dag.test(); return the run's facts."""
    from airflow.sdk import DAG, Asset

    from airflow_pseudo.operators.pseudonymise import PseudonymiseOperator
    from airflow_pseudo.operators.publish import PublishOperator
    from airflow_pseudo.operators.validate import ValidateOperator

    inputs = _inputs_named_after_patients(tmp_path / "incoming")
    monkeypatch.setenv("AIRFLOW__PSEUDO__REPORTS_ROOT", str(tmp_path / "published"))
    with DAG(
        dag_id="report_in_browser", schedule=None, start_date=datetime(2025, 1, 1, tzinfo=UTC)
    ) as dag:
        pseudonymise = PseudonymiseOperator(
            task_id="pseudonymise",
            input_path=str(tmp_path / "incoming"),
            output_dir=str(tmp_path / "out"),
            quarantine_dir=str(tmp_path / "quarantine"),
            max_failed_files=1,
        )
        validate = ValidateOperator(task_id="validate", results=pseudonymise.output)
        PublishOperator(
            task_id="publish",
            results=validate.output,
            pseudonymise_results=pseudonymise.output,
            destination=str(tmp_path / "published") + "/{{ run_id }}",
            output_root=str(tmp_path / "out"),
            outlets=[Asset(name="report_in_browser")],
        )
    _serialize(dag)
    dag_run = dag.test()
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        link = (
            session.query(XComModel.value)
            .filter_by(dag_id=dag.dag_id, run_id=dag_run.run_id, task_id="publish")
            .filter_by(key="_link_ReportLink")
            .scalar()
        )
    return {
        "state": dag_run.state,
        "run_id": dag_run.run_id,
        "link": json.loads(link) if isinstance(link, str) and link.startswith('"') else link,
        "inputs": inputs,
        "root": tmp_path / "published",
    }


@pytest.fixture
def server(finished_run: dict[str, Any]) -> Iterator[str]:
    """Serve the report app under its API-server prefix on localhost; yield the base URL."""
    import uvicorn
    from fastapi import FastAPI

    from airflow_pseudo.report.app import URL_PREFIX, create_app

    api = FastAPI()
    api.mount(URL_PREFIX, create_app(finished_run["root"], require_login=False))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


def _chromium(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    chromium = require_tool("chromium", "chromium")
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.slow
def test_report_link_opens_in_a_browser(finished_run: dict[str, Any], server: str, tmp_path: Path):
    """The publish task's link resolves; Chromium renders the rows; no original name shows."""
    assert finished_run["state"] == "success"
    link = finished_run["link"]
    assert link == (
        f"/pseudo-reports/files/{finished_run['run_id'].replace(':', '%3A').replace('+', '%2B')}"
        "/report.html?dag_id=report_in_browser"
    )

    dom = _chromium(server + link, tmp_path, "--dump-dom").stdout
    rows = re.findall(r'<tr class="file" data-status="(\w+)"', dom)
    assert sorted(rows) == ["published"] * 4 + ["quarantined"]
    assert "De-identification report" in dom
    assert "Files per second per task" in dom

    forbidden = {"Doe^John", "MRN999999", str(finished_run["root"].parent)}
    for path in finished_run["inputs"]:
        forbidden |= {path.name, path.stem, path.parent.name}
    for number in (1, 2):
        forbidden |= set(FakePatient.for_number(number).planted_values())
    report_json = (Path(finished_run["root"]) / finished_run["run_id"] / "report.json").read_text()
    for text in (dom, report_json):
        assert sorted(value for value in forbidden if value in text) == []

    screenshot = tmp_path / "report.png"
    _chromium(server + link, tmp_path, f"--screenshot={screenshot}", "--window-size=1280,1600")
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


@pytest.mark.slow
def test_report_has_step_durations(finished_run: dict[str, Any]):
    """The run's tasks, their durations and files per second come from Airflow itself."""
    report = json.loads((finished_run["root"] / finished_run["run_id"] / "report.json").read_text())
    steps = {s["task_id"]: s for s in report["steps"]}
    assert {"pseudonymise", "validate", "publish"} <= set(steps)
    assert steps["pseudonymise"]["files"] == 5
    assert steps["pseudonymise"]["seconds"] > 0
    assert steps["pseudonymise"]["files_per_second"] > 0
    assert report["run"] == {"dag_id": "report_in_browser", "run_id": finished_run["run_id"]}


@pytest.mark.slow
def test_dag_run_view_redirects_to_the_report(finished_run: dict[str, Any]):
    """The plugin's view on a DAG run finds the run's report through the publish task's link."""
    from fastapi.testclient import TestClient

    from airflow_pseudo.report.app import create_app
    from airflow_pseudo.report.plugin import ReportPlugin

    (view,) = ReportPlugin.external_views
    assert view["destination"] == "dag_run"
    href = view["href"].replace("{DAG_ID}", "report_in_browser")
    href = href.replace("{RUN_ID}", finished_run["run_id"]).removeprefix("/pseudo-reports")
    client = TestClient(create_app(finished_run["root"], require_login=False))
    response = client.get(href, follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == finished_run["link"]
    assert client.get("/runs/report_in_browser/no-such-run").status_code == 404
