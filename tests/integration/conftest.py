"""Services for the integration tests: PostgreSQL and Redis, or a clear skip.

They come from the environment (defaults: the CI machine's services):

- ``AIRFLOW_PSEUDO_IT_POSTGRES_URL`` (``postgresql://postgres@127.0.0.1:5432/postgres``): a role
  that may create databases; each test module gets its own database, dropped afterwards.
- ``AIRFLOW_PSEUDO_IT_REDIS_URL`` (``redis://127.0.0.1:6379/13``): the Celery broker.

Without them the tests skip, unless ``AIRFLOW_PSEUDO_REQUIRE_SERVICES=1`` (set by ``.ci/run``),
which turns their absence into a failure.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get(
    "AIRFLOW_PSEUDO_IT_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("AIRFLOW_PSEUDO_IT_REDIS_URL", "redis://127.0.0.1:6379/13")
REQUIRE_SERVICES = os.environ.get("AIRFLOW_PSEUDO_REQUIRE_SERVICES", "").strip().lower() in {
    "1",
    "true",
    "yes",
}


def services_unavailable(reason: str) -> None:
    """Skip, or fail when the services are required (CI)."""
    if REQUIRE_SERVICES:
        pytest.fail(
            f"{reason}. AIRFLOW_PSEUDO_REQUIRE_SERVICES=1 makes the integration test mandatory.",
            pytrace=False,
        )
    pytest.skip(
        f"{reason}. The distributed integration test needs PostgreSQL and Redis "
        "(AIRFLOW_PSEUDO_IT_POSTGRES_URL, AIRFLOW_PSEUDO_IT_REDIS_URL); "
        "set AIRFLOW_PSEUDO_REQUIRE_SERVICES=1 to make their absence a failure"
    )


def _safe(url: str) -> str:
    """The URL without credentials, for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}:{parts.port or ''}{parts.path}"


def check_services() -> None:
    """Skip (or fail, in CI) unless PostgreSQL and Redis answer and Airflow is installed."""
    try:
        import psycopg2
        import redis
    except ImportError as exc:
        services_unavailable(f"the celery extra is not installed ({exc})")
    try:
        psycopg2.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg2.Error as exc:
        services_unavailable(
            f"PostgreSQL is not reachable at {_safe(POSTGRES_URL)} ({exc})".strip()
        )
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        services_unavailable(f"Redis is not reachable at {_safe(REDIS_URL)} ({exc})")
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    if not os.path.exists(airflow) and shutil.which("airflow") is None:
        services_unavailable(f"no airflow executable beside {sys.executable}")


@dataclass
class PostgresDatabase:
    """A throw-away database on the server of ``AIRFLOW_PSEUDO_IT_POSTGRES_URL``."""

    server_url: str = POSTGRES_URL
    name: str = field(default_factory=lambda: f"airflow_pseudo_it_{uuid.uuid4().hex[:12]}")

    def _admin(self) -> Any:
        import psycopg2

        conn = psycopg2.connect(self.server_url, connect_timeout=5)
        conn.autocommit = True
        return conn

    def create(self) -> None:
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            conn.close()

    def drop(self) -> None:
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            conn.close()


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[PostgresDatabase]:
    """A new PostgreSQL database for the module, dropped afterwards (also on failure)."""
    check_services()
    database = PostgresDatabase()
    database.create()
    try:
        yield database
    finally:
        database.drop()
        print(f"\n[integration] dropped database {database.name}")


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The broker URL (its database index is kept)."""
    check_services()
    return REDIS_URL
