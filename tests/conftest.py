"""Session-wide test set-up.

Airflow reads its configuration when first imported, so the environment is fixed here, before any
test module can import it: a private AIRFLOW_HOME and SQLite database per test session, no examples,
and this repository's ``dags/`` folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-pseudo-tests-"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
)
os.environ.pop("AIRFLOW_PSEUDO_KEY", None)

import shutil  # noqa: E402

import pytest  # noqa: E402

REQUIRE_TOOLS = os.environ.get("AIRFLOW_PSEUDO_REQUIRE_TOOLS", "").strip().lower() in {
    "1",
    "true",
    "yes",
}


def require_tool(name: str, package: str) -> str:
    """Return the path of an external program, or skip (fail in CI) when it is missing.

    :param name: the program, e.g. ``dciodvfy``.
    :param package: the Debian package that provides it, named in the message.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package {package})"
        if REQUIRE_TOOLS:
            pytest.fail(message + "; AIRFLOW_PSEUDO_REQUIRE_TOOLS=1 requires it", pytrace=False)
        pytest.skip(message + "; set AIRFLOW_PSEUDO_REQUIRE_TOOLS=1 to make this a failure")
    return path


#: Headless Chromium as root on a machine without a network: no sandbox, no background traffic.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


TEST_KEY = b"airflow-pseudo test key, never use in production"


@pytest.fixture
def key_bytes() -> bytes:
    """A fixed project key, so pseudonyms are reproducible across test runs."""
    return TEST_KEY


# ---------------------------------------------------------------------------------------------
# Airflow provider fixtures (owned by the provider work: hooks, sensors, operators, example DAGs)
# ---------------------------------------------------------------------------------------------
import json  # noqa: E402


def pseudo_conn_json(key: bytes, **extra: object) -> str:
    """A ``pseudo`` connection as the JSON Airflow reads from ``AIRFLOW_CONN_<ID>``."""
    return json.dumps({"conn_type": "pseudo", "password": key.decode(), "extra": extra})


@pytest.fixture
def pseudo_conn(monkeypatch: pytest.MonkeyPatch, key_bytes: bytes) -> str:
    """Define the ``pseudo_default`` connection (holding the test key) through the environment."""
    monkeypatch.setenv("AIRFLOW_CONN_PSEUDO_DEFAULT", pseudo_conn_json(key_bytes))
    return "pseudo_default"


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Migrate the session's SQLite metadata DB once; every ``dag.test()`` run shares it."""
    from airflow.utils import db

    db.initdb()
