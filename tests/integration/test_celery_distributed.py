"""The mapped example DAG on Airflow's distributed stack, with real processes and services.

A PostgreSQL metadata database (created for the test), a Redis broker, and the Airflow services of
``docker/docker-compose.yaml`` with that file's settings: ``api-server``, ``scheduler``,
``dag-processor``, ``triggerer`` and two ``celery worker`` processes with distinct host names.
``dicom_pseudonymise_mapped`` is triggered through the REST API on a few hundred generated DICOM
files with ``workers=2`` (a process pool inside each Celery task), and the test checks the run,
where its tasks ran, the per-file XCom records, and the published files against the originals.

``docker/docker-compose.yaml`` is the single source of the Airflow settings: :func:`compose_env`
reads its ``x-airflow-common`` environment and substitutes its ``${...}`` variables the way
``docker compose`` does (with generated values for every variable of ``docker/.env.example``), and
:func:`local_overrides` changes only what must differ when the services run as local processes
instead of containers (:data:`OVERRIDDEN`: host names and ports, paths, the auth manager). Every
other setting the processes get is *added* and may not shadow a compose setting.

Mandatory in CI (``AIRFLOW_PSEUDO_REQUIRE_SERVICES=1``); skipped elsewhere when PostgreSQL or Redis
is absent (see ``conftest.py``). Timings are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker" / "docker-compose.yaml"
ENV_EXAMPLE = REPO_ROOT / "docker" / ".env.example"
VENV_BIN = Path(sys.executable).parent
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)

#: Compose settings the local processes replace, and why. Anything else is taken as is.
OVERRIDDEN = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "host, port, role and database of the local server",
    "AIRFLOW__CELERY__RESULT_BACKEND": "host, port, role and database of the local server",
    "AIRFLOW__CELERY__BROKER_URL": "host, port and database index of the local Redis",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "host and port of the local API server",
    "AIRFLOW_CONFIG": "path inside the test's AIRFLOW_HOME",
    "AIRFLOW_PSEUDO_DATA_DIR": "path inside the test's temporary folder",
    "AIRFLOW__CORE__AUTH_MANAGER": "the FAB provider is in the image but not in the locked venv",
    "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": "folder inside the test's temporary folder",
    "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": (
        "0: the records of these small batches go to files too, as those of large batches do"
    ),
}

# ---------------------------------------------------------------------------------------------
# docker-compose.yaml as the source of the settings
# ---------------------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Substitute ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$`` like
    ``docker compose`` does; a missing required variable raises ``KeyError`` with its message."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"] or ""
        current = variables.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op and op.endswith("-"):
            return arg if unset else str(current)
        if op and op.endswith("?"):
            if unset:
                raise KeyError(f"{name}: {arg or 'required variable is not set'}")
            return str(current)
        return "" if current is None else str(current)

    return _VARIABLE.sub(replace, value)


def load_compose() -> dict[str, Any]:
    """The compose file as data (anchors and merge keys resolved by PyYAML)."""
    import yaml

    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def env_example_names() -> list[str]:
    """Names of the variables ``docker/.env.example`` defines (values are not read)."""
    names = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            names.append(line.split("=", 1)[0].strip())
    return names


def compose_env(variables: Mapping[str, str]) -> dict[str, str]:
    """The ``x-airflow-common`` environment, interpolated with ``variables``."""
    environment = load_compose()["x-airflow-common"]["environment"]
    return {str(k): interpolate(str(v), variables) for k, v in environment.items()}


def _replace_netloc(url: str, netloc: str, path: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=netloc, path=parts.path if path is None else path))


def _database_url(compose_url: str, server: str, database: str) -> str:
    """Point a compose database URL (``postgresql+psycopg2://`` or ``db+postgresql://``) at the
    local server and the test's database, keeping its scheme and driver."""
    local = urlsplit(server)
    netloc = local.netloc
    return _replace_netloc(compose_url, netloc, "/" + database)


def local_overrides(
    compose: Mapping[str, str],
    *,
    database: str,
    api_port: int,
    home: Path,
    data_dir: Path,
    postgres_url: str,
    redis_url: str,
) -> dict[str, str]:
    """The settings in :data:`OVERRIDDEN`, rewritten for local processes."""
    broker = urlsplit(redis_url)
    execution = urlsplit(compose["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    overrides = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _database_url(
            compose["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], postgres_url, database
        ),
        "AIRFLOW__CELERY__RESULT_BACKEND": _database_url(
            compose["AIRFLOW__CELERY__RESULT_BACKEND"], postgres_url, database
        ),
        "AIRFLOW__CELERY__BROKER_URL": _replace_netloc(
            compose["AIRFLOW__CELERY__BROKER_URL"], broker.netloc, broker.path or "/0"
        ),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": urlunsplit(
            execution._replace(netloc=f"127.0.0.1:{api_port}")
        ),
        "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
        "AIRFLOW_PSEUDO_DATA_DIR": str(data_dir),
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{data_dir / 'xcom'}",
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": "0",
    }
    assert overrides.keys() == OVERRIDDEN.keys()
    return overrides


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Airflow processes
# ---------------------------------------------------------------------------------------------

HOSTNAME_MODULE = '''\
"""Per-process host name: local processes stand in for containers with their own names."""
import os
import socket


def hostname():
    return os.environ.get("PSEUDO_IT_HOSTNAME") or socket.getfqdn()
'''


@dataclass
class Component:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    log: Path
    started: float

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class AirflowCluster:
    """Airflow processes started from the venv with one shared environment; stops them all."""

    def __init__(self, root: Path, database: str, postgres_url: str, redis_url: str) -> None:
        self.root = root
        self.home = root / "airflow-home"
        self.data_dir = root / "pseudo-data"
        self.logs = root / "process-logs"
        self.pylib = root / "pylib"
        self.database = database
        self.postgres_url = postgres_url
        self.redis_url = redis_url
        self.api_port = free_port()
        self.queue = f"pseudo-it-{uuid.uuid4().hex[:8]}"
        self.components: list[Component] = []
        self.env: dict[str, str] = {}
        self.key = b"airflow-pseudo integration test key (not secret)"
        for folder in (self.home, self.data_dir, self.logs, self.pylib):
            folder.mkdir(parents=True, exist_ok=True)
        (self.pylib / "pseudo_it_hostname.py").write_text(HOSTNAME_MODULE)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env_file_values(self) -> dict[str, str]:
        """Values for every variable of ``docker/.env.example`` (what ``docker/.env`` holds)."""
        from cryptography.fernet import Fernet

        values = {
            "AIRFLOW_UID": str(os.getuid()),
            "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
            "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
            "_AIRFLOW_WWW_USER_USERNAME": "airflow",
            "_AIRFLOW_WWW_USER_PASSWORD": secrets.token_urlsafe(16),
            "AIRFLOW_CONN_PSEUDO_DEFAULT": json.dumps(
                {"conn_type": "pseudo", "password": self.key.decode(), "extra": {}}
            ),
        }
        missing = set(env_example_names()) - values.keys()
        assert not missing, f"docker/.env.example has variables this test does not set: {missing}"
        return values

    def build_env(self, added: Mapping[str, str]) -> dict[str, str]:
        """Compose's settings + local overrides + ``added`` (which may not shadow compose)."""
        env_file = self.env_file_values()
        compose = compose_env(env_file)
        overrides = local_overrides(
            compose,
            database=self.database,
            api_port=self.api_port,
            home=self.home,
            data_dir=self.data_dir,
            postgres_url=self.postgres_url,
            redis_url=self.redis_url,
        )
        clash = set(added) & (set(compose) | set(env_file))
        assert not clash, f"local additions would shadow compose settings: {sorted(clash)}"
        # A clean environment: nothing from the test session's own Airflow set-up leaks in.
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
        base["PATH"] = f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}"
        base["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(self.pylib), base.get("PYTHONPATH")])
        )
        self.env = {**base, **env_file, **compose, **overrides, **added}
        return self.env

    def run(self, name: str, argv: list[str], timeout: float) -> float:
        """Run a one-off command (e.g. ``airflow db migrate``); return its duration."""
        started = time.monotonic()
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            result = subprocess.run(
                argv,
                env=self.env,
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if result.returncode:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
            raise AssertionError(f"{' '.join(argv)} exited with {result.returncode}:\n{tail}")
        return time.monotonic() - started

    def start(self, name: str, argv: list[str], **extra_env: str) -> Component:
        log = self.logs / f"{name}.log"
        out = log.open("wb")
        env = {**self.env, "PSEUDO_IT_HOSTNAME": name, **extra_env}
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=self.root,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as a whole
        )
        out.close()
        component = Component(name, argv, process, log, time.monotonic())
        self.components.append(component)
        return component

    def check_alive(self) -> None:
        for component in self.components:
            code = component.process.poll()
            if code is not None:
                raise AssertionError(
                    f"{component.name} ({' '.join(component.argv)}) exited with {code}:\n"
                    f"{component.tail()}"
                )

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM every process group, wait, then SIGKILL what is left (descendants included)."""
        import psutil

        doomed: list[psutil.Process] = []
        for component in reversed(self.components):
            try:
                parent = psutil.Process(component.process.pid)
                doomed.extend([parent, *parent.children(recursive=True)])
            except psutil.NoSuchProcess:
                pass
            _signal_group(component.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for component in self.components:
            try:
                component.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(component.process.pid, signal.SIGKILL)
                component.process.wait(timeout=10)
        _, alive = psutil.wait_procs(doomed, timeout=max(0.1, deadline - time.monotonic()))
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=10)
        for component in self.components:
            _signal_group(component.process.pid, signal.SIGKILL)  # stragglers in the group

    def describe(self) -> str:
        return "\n\n".join(
            f"--- {c.name} (exit {c.process.poll()}) {c.log}\n{c.tail()}" for c in self.components
        )


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def wait_for(
    what: str, predicate: Any, timeout: float, cluster: AirflowCluster, interval: float = 1.0
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail early if a process died."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        cluster.check_alive()
        try:
            value = predicate()
        except (OSError, httpx.HTTPError) as exc:  # not ready yet (connection refused, 404, ...)
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})\n"
        f"{cluster.describe()}"
    )


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

DAG_ID = "dicom_pseudonymise_mapped"
WORKERS = ("pseudo-it-worker-a", "pseudo-it-worker-b")
# 10 patients x 3 series x 10 instances = 300 files, in 6 mapped batches of 50.
CORPUS = {
    "patients": 10,
    "studies_per_patient": 1,
    "series_per_study": 3,
    "instances_per_series": 10,
}
BATCH_SIZE = 50
TASK_WORKERS = 2
RUN_CONF = {"settle_seconds": 0, "batch_size": BATCH_SIZE, "workers": TASK_WORKERS}
# Example DAG schedules that never fire during the test (next 29 February after 2025 is in 2028),
# so the only run is the one triggered here.
NEVER = "0 0 29 2 *"

STARTUP_TIMEOUT = 180.0
RUN_TIMEOUT = 480.0


@dataclass
class DistributedRun:
    cluster: AirflowCluster
    originals: Path
    files: list[Path]
    run_id: str = ""
    state: str = ""
    task_instances: list[dict[str, Any]] = field(default_factory=list)
    xcoms: dict[str, dict[int, Any]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def tis(self, task_id: str) -> list[dict[str, Any]]:
        return [ti for ti in self.task_instances if ti["task_id"] == task_id]

    def records(self, task_id: str) -> list[dict[str, Any]]:
        return [r for index in sorted(self.xcoms[task_id]) for r in self.xcoms[task_id][index]]


class Api:
    """A small client of the public REST API (``/api/v2``) with a SimpleAuthManager token."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=30.0)

    def authenticate(self) -> None:
        # With [core] simple_auth_manager_all_admins, GET /auth/token issues an admin token.
        response = self.client.get("/auth/token")
        response.raise_for_status()
        token = response.json()["access_token"]
        self.client.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(f"/api/v2{path}", params=params)
        response.raise_for_status()
        return response.json()

    def send(self, method: str, path: str, body: Any) -> Any:
        response = self.client.request(method, f"/api/v2{path}", json=body)
        if response.is_error:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def close(self) -> None:
        self.client.close()


def _healthy(api: Api) -> bool:
    health = api.get("/monitor/health")
    components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all((health.get(c) or {}).get("status") == "healthy" for c in components)


def _worker_ready(cluster: AirflowCluster, name: str) -> bool:
    log = cluster.logs / f"{name}.log"
    return log.exists() and " ready." in log.read_text(errors="replace")


def _xcom_value(api: Api, run_id: str, task_id: str, map_index: int) -> Any:
    entry = api.get(
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
        map_index=map_index,
    )
    value = entry["value"]
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # JSON text, or a reference as it is
            value = json.loads(value)
    if isinstance(value, str) and value.startswith("file://"):
        # The object-storage XCom backend's reference: the API shows where the value is.
        return json.loads(Path(value.removeprefix("file://")).read_text())
    return value


def _task_log(api: Api, run_id: str, ti: dict[str, Any]) -> str:
    response = api.client.get(
        f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ti['task_id']}"
        f"/logs/{ti['try_number']}",
        params={"map_index": ti["map_index"], "full_content": True},
        headers={"Accept": "application/json"},
    )
    response.raise_for_status()
    return json.dumps(response.json().get("content"))


def _forget_queue(redis_url: str, queue: str) -> None:
    """Delete the broker keys of the run's private queue (kombu bindings, the queue itself)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"*{queue}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _write_corpus(originals: Path, out: list[Path], timings: dict[str, float]) -> None:
    from airflow_pseudo.testing import write_corpus

    started = time.monotonic()
    out.extend(write_corpus(originals, **CORPUS))
    timings["generate corpus"] = time.monotonic() - started


@pytest.fixture(scope="module")
def distributed_run(
    tmp_path_factory: pytest.TempPathFactory, postgres_database: Any, redis_url: str
) -> Iterator[DistributedRun]:
    started = time.monotonic()
    root = tmp_path_factory.mktemp("celery-distributed")
    cluster = AirflowCluster(root, postgres_database.name, postgres_database.server_url, redis_url)
    run = DistributedRun(cluster, root / "originals", [])
    timings = run.timings
    print(
        f"\n[integration] folder {root}, database {postgres_database.name}, queue {cluster.queue}"
    )

    cluster.build_env(
        {
            # Local processes instead of containers: own home, dags from the repository, free ports.
            "AIRFLOW_HOME": str(cluster.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[2] / "dags"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(cluster.api_port),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # Containers have their own host names; local processes get theirs from this.
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "pseudo_it_hostname.hostname",
            # Token without a password, for the test's API calls only.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # A private queue: concurrent runs on one Redis never take each other's tasks.
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": cluster.queue,
            "AIRFLOW_PSEUDO_SCHEDULE": NEVER,
            "AIRFLOW_PSEUDO_MAPPED_SCHEDULE": NEVER,
        }
    )
    api = Api(cluster.api_url)
    generator: threading.Thread | None = None
    try:
        # The Celery executor must import with the installed celery (celery 5.7 removed
        # celery.backends.database.retry, which apache-airflow-providers-celery 3.26 imports).
        try:
            cluster.run(
                "celery-import",
                [sys.executable, "-c", "import airflow.providers.celery.executors.celery_executor"],
                120,
            )
        except AssertionError as exc:
            raise AssertionError(
                "the Celery executor does not import: are celery and "
                f"apache-airflow-providers-celery compatible in constraints.txt?\n{exc}"
            ) from None
        timings["db migrate"] = cluster.run("db-migrate", ["airflow", "db", "migrate"], 300)

        phase = time.monotonic()
        cluster.start("api-server", ["airflow", "api-server", "--workers", "1"])
        cluster.start("scheduler", ["airflow", "scheduler"])
        cluster.start("dag-processor", ["airflow", "dag-processor"])
        cluster.start("triggerer", ["airflow", "triggerer"])
        for name in WORKERS:
            cluster.start(
                name,
                [
                    "airflow",
                    "celery",
                    "worker",
                    "--celery-hostname",
                    f"{name}@%h",
                    "--concurrency",
                    "2",
                    "--queues",
                    cluster.queue,
                ],
                AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            )
        # Generate the sample data while the processes start.
        generator = threading.Thread(
            target=_write_corpus, args=(run.originals, run.files, timings), daemon=True
        )
        generator.start()

        wait_for("the API server", lambda: api.get("/version"), STARTUP_TIMEOUT, cluster)
        api.authenticate()
        wait_for("healthy components", lambda: _healthy(api), STARTUP_TIMEOUT, cluster)
        for name in WORKERS:
            wait_for(f"{name} ready", lambda n=name: _worker_ready(cluster, n), 120, cluster)

        def dag_parsed() -> bool:
            errors = api.get("/importErrors")
            if errors.get("total_entries"):
                raise AssertionError(f"DAG import errors: {errors}")
            return bool(api.get(f"/dags/{DAG_ID}"))

        wait_for(f"{DAG_ID} to be parsed", dag_parsed, STARTUP_TIMEOUT, cluster)
        timings["start services"] = time.monotonic() - phase
        generator.join(timeout=120)
        assert run.files, "no sample files were generated"
        shutil.copytree(run.originals, cluster.data_dir / "incoming")

        phase = time.monotonic()
        api.send("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        dag_run = api.send(
            "POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": RUN_CONF}
        )
        run.run_id = dag_run["dag_run_id"]

        def finished() -> str | None:
            state = api.get(f"/dags/{DAG_ID}/dagRuns/{run.run_id}")["state"]
            return state if state in ("success", "failed") else None

        run.state = wait_for(f"run {run.run_id}", finished, RUN_TIMEOUT, cluster, interval=2)
        timings["dag run"] = time.monotonic() - phase

        phase = time.monotonic()
        run.task_instances = api.get(
            f"/dags/{DAG_ID}/dagRuns/{run.run_id}/taskInstances", limit=1000
        )["task_instances"]
        for task_id in ("pseudonymise", "validate"):
            run.xcoms[task_id] = {
                ti["map_index"]: _xcom_value(api, run.run_id, task_id, ti["map_index"])
                for ti in run.tis(task_id)
                if ti["state"] == "success"
            }
        for ti in run.tis("pseudonymise"):
            run.logs[f"pseudonymise[{ti['map_index']}]"] = _task_log(api, run.run_id, ti)
        timings["collect results"] = time.monotonic() - phase
        if run.state != "success":
            print(json.dumps(run.task_instances, indent=1, default=str)[:5000])
            print(cluster.describe())
        yield run
    finally:
        api.close()
        phase = time.monotonic()
        cluster.stop()
        _forget_queue(redis_url, cluster.queue)
        timings["stop services"] = time.monotonic() - phase
        timings["total (without dropping the database)"] = time.monotonic() - started
        for what, seconds in timings.items():
            print(f"[integration] {what}: {seconds:.1f} s")


def test_run_succeeds(distributed_run: DistributedRun) -> None:
    states = {
        f"{ti['task_id']}[{ti['map_index']}]": ti["state"] for ti in distributed_run.task_instances
    }
    assert distributed_run.state == "success", states
    assert set(states.values()) == {"success"}, states
    batches = -(-len(distributed_run.files) // BATCH_SIZE)
    assert len(distributed_run.tis("pseudonymise")) == batches
    assert len(distributed_run.tis("validate")) == batches


def test_tasks_ran_on_both_workers(distributed_run: DistributedRun) -> None:
    hosts = {ti["hostname"] for ti in distributed_run.task_instances}
    assert hosts <= set(WORKERS), f"tasks ran outside the Celery workers: {hosts}"
    mapped = {
        ti["hostname"] for ti in distributed_run.task_instances if ti["map_index"] is not None
    }
    assert mapped == set(WORKERS), f"mapped batches ran on {mapped} only"


def _claims(staging: Path) -> dict[str, str]:
    """ingest's mapping from neutral staging names to the original relative paths."""
    lines = (staging / "claims.jsonl").read_text().splitlines()
    return {e["claimed"]: e["original"] for e in map(json.loads, lines)}


def test_xcom_records_complete(distributed_run: DistributedRun) -> None:
    staging = distributed_run.cluster.data_dir / "work" / "staging" / distributed_run.run_id
    expected = {p.relative_to(distributed_run.originals).as_posix() for p in distributed_run.files}
    # publish archived ingest's mapping with the inputs and removed the emptied staging folder.
    claims = _claims(distributed_run.cluster.data_dir / "archive" / distributed_run.run_id)
    for task_id in ("pseudonymise", "validate"):
        records = distributed_run.records(task_id)
        sources = [claims[Path(r["source"]).relative_to(staging).as_posix()] for r in records]
        assert len(sources) == len(expected), f"{task_id}: one record per input"
        assert set(sources) == expected, task_id
        assert {r["status"] for r in records} == {"ok"}, task_id


def test_xcom_records_travel_in_files(distributed_run: DistributedRun) -> None:
    """Each mapped task's records went to the shared XCom folder, the database kept the path."""
    run_folder = distributed_run.cluster.data_dir / "xcom" / DAG_ID / distributed_run.run_id
    for task_id in ("pseudonymise", "validate"):
        written = list((run_folder / task_id).iterdir())
        assert len(written) == len(distributed_run.xcoms[task_id]), task_id


def test_published_files_validate(distributed_run: DistributedRun) -> None:
    from airflow_pseudo.pseudonymisation import PseudonymKey, Settings
    from airflow_pseudo.pseudonymisation.validation import validate_file

    cluster = distributed_run.cluster
    destination = cluster.data_dir / "published" / distributed_run.run_id
    staging = cluster.data_dir / "work" / "staging" / distributed_run.run_id
    lines = [json.loads(line) for line in (destination / "manifest.jsonl").read_text().splitlines()]
    entries = [e for e in lines if e["record"] == "file"]
    summary = next(e for e in lines if e["record"] == "summary")
    assert summary["published"] == len(distributed_run.files) == len(entries), summary

    settings = Settings(key=PseudonymKey(cluster.key))
    archived = cluster.data_dir / "archive" / distributed_run.run_id
    published = set()
    for entry in entries:
        assert entry["status"] == "published", entry
        claimed = Path(entry["source"]).relative_to(staging).as_posix()
        original = distributed_run.originals / _claims(archived)[claimed]
        output = Path(entry["published"].removeprefix("file://"))
        assert output.is_relative_to(destination)
        problems = validate_file(original, output, settings=settings)
        assert problems == [], f"{output}: {problems}"
        published.add(output)
    assert len(published) == len(distributed_run.files)
    # The inputs left the incoming folder and were archived.
    assert not [p for p in (cluster.data_dir / "incoming").rglob("*") if p.is_file()]
    # The inputs were archived under their neutral names, with ingest's mapping beside them.
    assert len(list(archived.rglob("*.dcm"))) == len(distributed_run.files)
    assert (archived / "claims.jsonl").is_file()
    assert not staging.exists()  # nothing left for a later run to adopt


def test_process_pool_inside_celery_tasks(distributed_run: DistributedRun) -> None:
    """``workers=2`` spreads each batch over a process pool inside the Celery task."""
    assert distributed_run.logs
    for name, log in distributed_run.logs.items():
        assert f"{TASK_WORKERS} worker(s)" in log, f"{name} did not run with {TASK_WORKERS} workers"


# ---------------------------------------------------------------------------------------------
# The same process-pool situation in seconds, without services
# ---------------------------------------------------------------------------------------------

PREFORK_TASK = '''\
"""An Airflow task under the Celery executor, in miniature: a Celery prefork (billiard) pool
process forks the task process, whose environment forbids database access and whose __main__
is a script that cannot be imported there (the `airflow` command)."""
import os
import sys

if os.environ.get("PSEUDO_IT_IN_TASK"):
    raise SystemExit("the parent's __main__ was re-run in a worker process")


def task(root):
    pid = os.fork()  # as Airflow's supervisor does for every task
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    try:
        from contextlib import nullcontext
        from pathlib import Path

        from airflow_pseudo.pseudonymisation import PseudonymKey, Settings, pseudonymise_files
        from airflow_pseudo.testing import write_corpus

        try:
            from airflow_pseudo.operators.pseudonymise import worker_processes_allowed
        except ImportError:
            worker_processes_allowed = lambda workers: nullcontext()  # noqa: E731

        # What Airflow's supervisor sets in the task's environment, once Airflow is imported.
        os.environ["PSEUDO_IT_IN_TASK"] = "1"
        os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "airflow-db-not-allowed:///"
        files = write_corpus(Path(root) / "in", patients=2, instances_per_series=3)
        settings = Settings(key=PseudonymKey(b"airflow-pseudo prefork test key"))
        with worker_processes_allowed(2):
            results = pseudonymise_files(files, Path(root) / "out", settings=settings, workers=2)
        statuses = sorted({r.status for r in results})
        print(f"RESULT {len(results)} {statuses}", flush=True)
        os._exit(0 if statuses == ["ok"] and len(results) == len(files) else 3)
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)


if __name__ == "__main__":
    import billiard

    with billiard.Pool(1) as pool:
        sys.exit(pool.apply(task, (sys.argv[1],)))
'''


def test_process_pool_in_a_celery_prefork_task(tmp_path: Path) -> None:
    """``workers=2`` from a task process forked by a Celery prefork pool process (fast check of
    what ``test_process_pool_inside_celery_tasks`` sees on the real stack)."""
    pytest.importorskip("billiard", reason="the celery extra is not installed")
    script = tmp_path / "prefork_task.py"
    script.write_text(PREFORK_TASK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "RESULT" in output
