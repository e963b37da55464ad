"""Static checks of the deployment files: docker/docker-compose.yaml, Dockerfile and .env.example.

Nothing here needs Docker: the compose file is parsed with PyYAML (anchors and merge keys resolved)
and the Dockerfile is read as text. The integration test runs the same compose settings as local
processes (tests/integration/test_celery_distributed.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
CONSTRAINTS = REPO_ROOT / "constraints.txt"

AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|FERNET|_KEY$|^AIRFLOW_CONN_|TOKEN", re.IGNORECASE)
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def common_env(compose: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in compose["x-airflow-common"]["environment"].items()}


def resolve_defaults(value: str, placeholder: str = "VARIABLE") -> str:
    """Replace ``${VAR:-default}`` by its default and any other ``${VAR...}`` by a placeholder."""
    return VARIABLE.sub(lambda m: m[3] if m[2] == "-" else placeholder, value)


def mounts(compose: dict[str, Any]) -> dict[str, str]:
    """Volume targets of the Airflow services, mapped to their (default) sources."""
    pairs = [resolve_defaults(v).split(":")[:2] for v in compose["x-airflow-common"]["volumes"]]
    return {target: source for source, target in pairs}


def airflow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every service built from the x-airflow-common anchor (it carries AIRFLOW__ settings)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if "AIRFLOW__CORE__EXECUTOR" in (service.get("environment") or {})
    }


def constraint_version(package: str) -> str:
    for line in CONSTRAINTS.read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in constraints.txt")


def test_stack_has_the_official_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, command in AIRFLOW_SERVICES.items():
        assert services[name]["command"] == command, name
    assert "airflow-init" in services
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")


def test_every_airflow_service_uses_the_same_image_and_settings(compose: dict[str, Any]) -> None:
    common = compose["x-airflow-common"]
    services = airflow_services(compose)
    assert set(AIRFLOW_SERVICES) | {"airflow-init"} <= set(services)
    for name, service in services.items():
        assert service["image"] == common["image"], name
        assert service.get("build") == common["build"], name
        assert service["volumes"] == common["volumes"], name
        assert service.get("env_file") == common["env_file"], name
        env = service["environment"]
        for key, value in common["environment"].items():
            assert env.get(key) == value, f"{name} changes {key}"


def test_the_image_is_built_from_the_dockerfile(compose: dict[str, Any]) -> None:
    build = compose["x-airflow-common"]["build"]
    assert (DOCKER_DIR / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert (DOCKER_DIR / build["context"] / "pyproject.toml").exists()


def test_dags_and_data_are_mounted(compose: dict[str, Any], common_env: dict[str, str]) -> None:
    targets = mounts(compose)
    assert "/opt/airflow/dags" in targets
    assert (DOCKER_DIR / targets["/opt/airflow/dags"]).resolve() == REPO_ROOT / "dags"
    data = common_env["AIRFLOW_PSEUDO_DATA_DIR"]
    for folder in ("", "/published", "/work/quarantine", "/archive"):
        assert data + folder in targets, f"{data + folder} is not mounted"
    # incoming/ and work/ (staging) share one mount: files are claimed by an atomic rename.
    assert data + "/incoming" not in targets and data + "/work" not in targets


def test_large_xcom_values_go_to_the_shared_data_volume(common_env: dict[str, str]) -> None:
    """Every worker reads and writes the batches' records in a folder all of them mount."""
    from airflow_pseudo.demo import XCOM_BACKEND, XCOM_THRESHOLD_BYTES

    assert common_env["AIRFLOW__CORE__XCOM_BACKEND"] == XCOM_BACKEND
    assert int(common_env["AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD"]) == (
        XCOM_THRESHOLD_BYTES
    )
    folder = urlsplit(common_env["AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH"])
    assert folder.scheme == "file"
    assert folder.path.startswith(common_env["AIRFLOW_PSEUDO_DATA_DIR"] + "/")


def test_celery_executor_postgres_and_redis(
    compose: dict[str, Any], common_env: dict[str, str]
) -> None:
    assert common_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    database = urlsplit(resolve_defaults(common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]))
    results = urlsplit(resolve_defaults(common_env["AIRFLOW__CELERY__RESULT_BACKEND"]))
    broker = urlsplit(resolve_defaults(common_env["AIRFLOW__CELERY__BROKER_URL"]))
    assert database.scheme.startswith("postgresql")
    assert results.scheme.startswith("db+postgresql")
    assert broker.scheme == "redis"
    # Metadata and Celery results in the same database, on the compose services.
    assert (database.hostname, database.path) == (results.hostname, results.path)
    assert database.hostname == "postgres" and broker.hostname == "redis"
    postgres = compose["services"]["postgres"]["environment"]
    assert database.username == postgres["POSTGRES_USER"]
    assert database.path == "/" + postgres["POSTGRES_DB"]
    assert database.port in (None, 5432) and broker.port in (None, 6379)
    assert "postgres" in compose["x-airflow-common"]["depends_on"]
    assert "redis" in compose["x-airflow-common"]["depends_on"]


def test_execution_api_points_at_the_api_server(
    compose: dict[str, Any], common_env: dict[str, str]
) -> None:
    url = urlsplit(common_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert url.hostname == "airflow-apiserver"
    assert url.path.rstrip("/") == "/execution"
    ports = compose["services"]["airflow-apiserver"]["ports"]
    assert any(str(p).endswith(f":{url.port}") for p in ports)


def test_shared_secrets_and_settings(common_env: dict[str, str]) -> None:
    assert common_env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    # One JWT secret (task tokens), API secret key and Fernet key for every component.
    for key in (
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
    ):
        assert VARIABLE.fullmatch(common_env[key]), f"{key} must come from docker/.env"
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in common_env  # the provider is in the image


def test_workers_scale(compose: dict[str, Any]) -> None:
    worker = compose["services"]["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale airflow-worker=N
    assert worker["environment"]["DUMB_INIT_SETSID"] == "0"  # warm shutdown


def test_no_secret_value_is_committed(compose: dict[str, Any]) -> None:
    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if SECRET_NAME.search(str(key)) and isinstance(item, str | int):
                    # Secrets are ${VARIABLE}s, required or from docker/.env, never literals.
                    assert VARIABLE.fullmatch(str(item)), f"{path}.{key} holds a literal secret"
                walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")
        elif isinstance(value, str):
            # A password inside a URL must be a variable too.
            text = resolve_defaults(value)
            for url in re.findall(r"[a-z+]+://[^\s'\"]+", text):
                password = urlsplit(url).password
                assert password in (None, "", "VARIABLE"), f"{path}: password in {url}"

    walk(compose, "compose")
    settings = [line for line in COMPOSE_FILE.read_text().splitlines() if "#" not in line]
    assert not [line for line in settings if "AIRFLOW_CONN_" in line]  # only in docker/.env
    assert compose["x-airflow-common"]["env_file"] == [".env"]


def test_env_example_holds_no_secret_and_covers_every_required_variable() -> None:
    names = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            names[name.strip()] = value.strip().strip("'\"")
    for name, value in names.items():
        if name == "AIRFLOW_CONN_PSEUDO_DEFAULT":
            assert '"password": ""' in value, "the example connection must not hold a key"
        elif SECRET_NAME.search(name):
            assert value == "", f"{name} must be empty in .env.example"
    required = {m[0] for m in VARIABLE.findall(COMPOSE_FILE.read_text()) if m[1] == "?"}
    assert required <= names.keys(), f"required but not in .env.example: {required - names.keys()}"
    ignored = (DOCKER_DIR / ".gitignore").read_text().split()
    assert ".env" in ignored


def dockerfile_stages(text: str) -> list[tuple[str, str | None]]:
    """(base image with ARG defaults substituted, stage name) for every FROM line."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.MULTILINE))
    return [
        (re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base), name or None)
        for base, name in re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.MULTILINE)
    ]


def test_dockerfile_extends_the_pinned_airflow_image() -> None:
    text = DOCKERFILE.read_text()
    airflow = constraint_version("apache-airflow")
    stages = dockerfile_stages(text)
    assert stages, "no FROM line"
    runtime = stages[-1][0]
    # The image runs the project's Python (the version constraints.txt was resolved with).
    assert runtime == f"apache/airflow:{airflow}-python3.11", runtime
    for base, name in stages:
        if name == "wheel":
            # The wheel is compiled in the official Python image of the same Python version.
            assert base == "python:3.11-bookworm", base
        else:
            assert base == runtime, (name, base)
    # pip may not move Airflow: it is pinned to the image's version, under constraints.
    install = re.search(r"pip install[^\n]*", text.replace("\\\n", " "))
    assert install, "no pip install"
    command = install.group(0)
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in command
    assert "airflow_pseudo-*.whl" in command
    assert command.count("--constraint") >= 1
    assert "--no-cache-dir" in command


def test_dockerfile_builds_the_compiled_scanner_into_the_wheel() -> None:
    """The C extension is optional for pip; the image must have it, and check that it imports."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    assert [name for _, name in dockerfile_stages(text)].count("wheel") == 1
    wheel = re.search(r"pip wheel[^\n]*", text)
    assert wheel, "no pip wheel"
    assert "_scanner\\.cpython-" in wheel.group(0)  # the build fails without the compiled module
    assert re.search(r"COPY --from=wheel\b", text)
    assert 'python -c "import airflow_pseudo.pseudonymisation._scanner"' in text
    copied = " ".join(re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE))
    assert "setup.py" in copied  # setup.py declares the extension


def test_dockerfile_installs_as_airflow_and_bakes_no_secret() -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] == "airflow"
    assert "USER root" not in text
    for line in text.splitlines():
        if line.startswith(("ENV ", "ARG ")):
            assert not SECRET_NAME.search(line.split()[1].split("=")[0]), line
    copied = " ".join(re.findall(r"^COPY (.+)$", text, re.MULTILINE))
    assert ".env" not in copied and "dags" not in copied


def test_build_context_keeps_only_what_the_dockerfile_copies() -> None:
    lines = (DOCKER_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "**"  # everything is excluded first (.venv, .git, docker/.env, data)
    for source in ("pyproject.toml", "setup.py", "README.md", "constraints.txt", "airflow_pseudo/"):
        assert f"!{source}" in ignore, source
