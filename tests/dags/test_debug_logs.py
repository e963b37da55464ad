"""DEBUG-level logs of a whole ``dag.test()`` run hold neither the key nor any planted value.

Each run is a fresh Python process (Airflow fixes its log level when first imported) with
``[logging] logging_level = DEBUG``, its own AIRFLOW_HOME and SQLite database. Everything the
run writes to stdout, stderr and the task log files under AIRFLOW_HOME is scanned.

Airflow 3.3's in-process supervisor (used by ``dag.test()`` and ``airflow dags test``, not by a
scheduler's workers) logs every message a task sends it at DEBUG level, including the value of
each ``mask_secret`` call, and Airflow masks a connection's password whenever a task reads the
connection. The provider adds no such call of its own, and with the key in
``$AIRFLOW_PSEUDO_KEY`` (the connection's password left empty) nothing reaches the logs: that is
the documented mitigation (``docs/operations.md``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_pseudo.testing import FakePatient

REPO = Path(__file__).resolve().parents[2]
KEY = "debug-level test key 0123456789abcdef"
PATIENTS = 3

RUN = """
import json, os, sys, time
from pathlib import Path

from airflow.utils import db

db.initdb()
from airflow.dag_processing.dagbag import DagBag

from airflow_pseudo.testing import FakePatient, write_corpus

data = Path(sys.argv[1])
for number in range(1, {patients} + 1):
    patient = FakePatient.for_number(number)
    folder = data / "incoming" / (patient.name.replace("^", "_") + "_" + patient.patient_id)
    write_corpus(folder, patients=1, instances_per_series=1)
stamp = time.time() - 3600
for path in (data / "incoming").rglob("*"):
    os.utime(path, (stamp, stamp))
dag = DagBag(dag_folder=sys.argv[2]).dags["dicom_pseudonymise"]
conf = {{
    "incoming_dir": str(data / "incoming"),
    "work_dir": str(data / "work"),
    "publish_dir": str(data / "published"),
    "archive_dir": str(data / "archive"),
    "settle_seconds": 30,
}}
dr = dag.test(run_conf=conf)
print("RUN STATE", dr.state, flush=True)
"""


def _planted() -> list[str]:
    values: list[str] = []
    for number in range(1, PATIENTS + 1):
        patient = FakePatient.for_number(number)
        values += [v for v in patient.planted_values() if len(v) >= 6]
        values += [patient.name.replace("^", "_")]
    return sorted(set(values))


def _run_at_debug(tmp_path: Path, password: str, environ_key: str | None) -> str:
    home = tmp_path / "airflow-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG",
            "AIRFLOW_CONN_PSEUDO_DEFAULT": json.dumps(
                {"conn_type": "pseudo", "password": password}
            ),
            "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        }
    )
    if environ_key is not None:
        env["AIRFLOW_PSEUDO_KEY"] = environ_key
    script = RUN.format(patients=PATIENTS)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data"), str(REPO / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    text = proc.stdout + proc.stderr
    assert "RUN STATE success" in text, text[-4000:]
    assert "[debug" in text  # the run really logged at DEBUG level
    for log in (home / "logs").rglob("*"):
        if log.is_file():
            text += log.read_text(errors="replace")
    return text


@pytest.mark.slow
def test_key_in_environment_never_reaches_debug_logs(tmp_path: Path):
    """With the key in $AIRFLOW_PSEUDO_KEY: no key, no planted value, at DEBUG level."""
    text = _run_at_debug(tmp_path, password="", environ_key=KEY)
    assert len(_planted()) > 10
    assert KEY not in text
    assert [value for value in _planted() if value in text] == []


@pytest.mark.slow
def test_key_in_password_reaches_only_airflows_own_debug_line(tmp_path: Path):
    """With the key as the connection's password, the only lines holding it are Airflow's
    in-process supervisor logging the mask request Airflow itself makes when a task reads the
    connection: once per task that reads it (ingest, pseudonymise, validate, and publish for the
    report's key id), never doubled."""
    text = _run_at_debug(tmp_path, password=KEY, environ_key=None)
    lines = [line for line in text.splitlines() if KEY in line]
    assert lines, "Airflow no longer logs mask requests: drop the mitigation from the docs"
    assert all("Sending request" in line and "MaskSecret(value=" in line for line in lines)
    assert len(lines) <= 4  # the hook's own mask request would double this
    assert [value for value in _planted() if value in text] == []
