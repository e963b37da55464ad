"""OpenLineage: the operators report folders in and out, seen through the file transport."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_pseudo.lineage import folder_dataset, folder_lineage
from tests.conftest import REPO_ROOT, TEST_KEY, pseudo_conn_json

pytest.importorskip("airflow.providers.openlineage")


def test_local_folder_and_object_store_uri():
    assert (folder_dataset("/data/out").namespace, folder_dataset("/data/out").name) == (
        "file",
        "/data/out",
    )
    assert folder_dataset("file:///data/out").name == "/data/out"
    s3 = folder_dataset("s3://bucket/published/run1")
    assert (s3.namespace, s3.name) == ("s3://bucket", "published/run1")


def test_lineage_leaves_out_unset_and_repeated_folders():
    lineage = folder_lineage(["/in", "/in"], ["/out", None])
    assert [d.name for d in lineage.inputs] == ["/in"]
    assert [d.name for d in lineage.outputs] == ["/out"]


_RUN_DAG = textwrap.dedent(
    """
    import os, sys
    from datetime import UTC, datetime
    from pathlib import Path

    from airflow.utils import db
    db.initdb()
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.sdk import DAG, Asset

    from airflow_pseudo.operators.pseudonymise import PseudonymiseOperator
    from airflow_pseudo.operators.publish import PublishOperator
    from airflow_pseudo.operators.validate import ValidateOperator
    from airflow_pseudo.testing import write_corpus

    work = Path(sys.argv[1])
    write_corpus(work / "incoming", patients=1, series_per_study=1)
    with DAG(dag_id="lineage", schedule=None, start_date=datetime(2025, 1, 1, tzinfo=UTC)) as dag:
        pseudonymise = PseudonymiseOperator(
            task_id="pseudonymise",
            input_path=str(work / "incoming"),
            output_dir=str(work / "out"),
            quarantine_dir=str(work / "quarantine"),
        )
        validate = ValidateOperator(task_id="validate", results=pseudonymise.output)
        PublishOperator(
            task_id="publish",
            results=validate.output,
            pseudonymise_results=pseudonymise.output,
            destination=str(work / "published"),
            output_root=str(work / "out"),
            outlets=[Asset(name="lineage_test")],
        )
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull, bundle_name="dags-folder")
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    print("STATE", dag.test().state)
    """
)


@pytest.mark.slow
def test_operators_report_their_folders(tmp_path: Path):
    """A real dag.test() run with OpenLineage's file transport records the folders in and out."""
    events_file = tmp_path / "events.jsonl"
    home = tmp_path / "home"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "no-dags"),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "airflow-pseudo-test",
        "AIRFLOW_CONN_PSEUDO_DEFAULT": pseudo_conn_json(TEST_KEY),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_DAG, str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert "STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]

    events = [json.loads(line) for line in events_file.read_text().splitlines() if line]
    complete = {
        e["job"]["name"]: e
        for e in events
        if e["eventType"] == "COMPLETE" and e["job"]["name"].startswith("lineage.")
    }
    work = tmp_path / "work"

    def names(event: dict, side: str) -> list[tuple[str, str]]:
        return [(d["namespace"], d["name"]) for d in event[side]]

    pseudonymise = complete["lineage.pseudonymise"]
    assert names(pseudonymise, "inputs") == [("file", str(work / "incoming"))]
    assert names(pseudonymise, "outputs") == [
        ("file", str(work / "out")),
        ("file", str(work / "quarantine")),
    ]
    publish = complete["lineage.publish"]
    assert names(publish, "inputs") == [("file", str(work / "out"))]
    assert names(publish, "outputs") == [("file", str(work / "published"))]
    # Folders only: no file name of the run reaches the lineage backend.
    assert ".dcm" not in events_file.read_text()
