"""Provider discovery: the metadata is schema-valid and Airflow's CLI lists the provider."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import distribution, entry_points
from pathlib import Path

import jsonschema
import pytest
from packaging.utils import canonicalize_name

from airflow_pseudo.get_provider_info import get_provider_info

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def _schema() -> dict:
    import airflow

    path = Path(airflow.__file__).with_name("provider_info.schema.json")
    return json.loads(path.read_text())


def test_valid_against_airflow_schema():
    """The dict validates against the schema Airflow's discovery uses."""
    jsonschema.validate(get_provider_info(), _schema())


def test_package_name_is_the_distribution_name():
    """package-name must equal the normalised distribution name, or discovery crashes."""
    dist = distribution("airflow-pseudo")
    assert get_provider_info()["package-name"] == canonicalize_name(dist.metadata["name"])


def test_entry_point_points_here():
    """The apache_airflow_provider entry point resolves to get_provider_info."""
    (ep,) = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.dist.name == "airflow-pseudo"
    ]
    assert ep.load() is get_provider_info


def _modules() -> list[str]:
    info = get_provider_info()
    return [
        m
        for kind in ("hooks", "operators", "sensors", "triggers")
        for e in info[kind]
        for m in e["python-modules"]
    ]


@pytest.mark.parametrize("module", _modules())
def test_listed_modules_import(module: str):
    """Every module the metadata lists exists."""
    importlib.import_module(module)


def test_hook_class_resolves():
    """The connection type's hook class exists and declares the same connection type."""
    (conn,) = get_provider_info()["connection-types"]
    module, _, name = conn["hook-class-name"].rpartition(".")
    hook = getattr(importlib.import_module(module), name)
    assert hook.conn_type == conn["connection-type"] == "pseudo"
    assert hook.default_conn_name == "pseudo_default"
    assert set(conn["conn-fields"]) >= {"strategy", "uid_root", "pymedphys_config"}


def test_provider_import_is_cheap():
    """get_provider_info and the provider modules import neither pydicom nor the core."""
    code = (
        "import sys, airflow_pseudo.get_provider_info, airflow_pseudo.sensors.directory, "
        "airflow_pseudo.operators.pseudonymise, airflow_pseudo.operators.validate, "
        "airflow_pseudo.operators.publish, airflow_pseudo.hooks.pseudo;"
        "bad = [m for m in ('pydicom', 'airflow_pseudo.pseudonymisation') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _airflow(*args: str) -> str:
    proc = subprocess.run(
        [AIRFLOW, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_airflow_cli_discovers_provider():
    """`airflow providers list` shows the provider and `airflow providers hooks` its conn type."""
    listing = json.loads(_airflow("providers", "list", "--output", "json"))
    assert "airflow-pseudo" in {p["package_name"] for p in listing}
    hooks = json.loads(_airflow("providers", "hooks", "--output", "json"))
    pseudo = [h for h in hooks if h.get("connection_type") == "pseudo"]
    assert pseudo, hooks
    assert pseudo[0]["class"] == "airflow_pseudo.hooks.pseudo.PseudoHook"


def test_connection_form_is_declarative():
    """The UI form comes from conn-fields / ui-field-behaviour, with no deprecation warning."""
    import warnings

    from airflow.providers_manager import ProvidersManager

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager = ProvidersManager()
        widgets = manager.connection_form_widgets
        behaviours = manager.field_behaviours
    assert {
        f"extra__pseudo__{name}"
        for name in ("strategy", "uid_root", "date_shift_min_days", "pymedphys_config")
    } <= set(widgets)
    assert "password" not in behaviours["pseudo"]["hidden_fields"]
    assert behaviours["pseudo"]["relabeling"]["password"] == "Pseudonymisation key"


#: Every extra PseudoHook reads, as the connection form must offer it.
HOOK_EXTRAS = (
    "strategy",
    "profile",
    "uid_root",
    "date_shift_min_days",
    "date_shift_max_days",
    "pymedphys_config",
)


def test_every_extra_has_a_field_with_a_default():
    """Each extra the hook reads has its own field, a default and a JSON-schema type."""
    (connection,) = get_provider_info()["connection-types"]
    fields = connection["conn-fields"]
    assert set(fields) == set(HOOK_EXTRAS)
    for name, field in fields.items():
        assert field["label"], name
        assert field["description"], name
        assert "default" in field["schema"], name
        assert "null" in field["schema"]["type"], name  # blank means "use the default"
        if "enum" in field["schema"]:
            assert field["schema"]["default"] in field["schema"]["enum"], name
    assert "extra" in connection["ui-field-behaviour"]["hidden-fields"]


def test_hook_reads_every_field():
    """A value typed in each field reaches the hook's settings."""
    from airflow.sdk import Connection

    from airflow_pseudo.hooks.pseudo import PseudoHook

    values = {
        "strategy": "keyed",
        "profile": "pymedphys",
        "uid_root": "1.2.826.0.1.1234",
        "date_shift_min_days": -20,
        "date_shift_max_days": -10,
        "pymedphys_config": "/etc/pymedphys.toml",
    }
    hook = PseudoHook()
    hook.__dict__["connection"] = Connection(
        conn_id="pseudo_default", conn_type="pseudo", extra=json.dumps(values)
    )
    extras = hook.get_extras()
    assert extras["date_shift_days"] == (-20, -10)
    assert {k: extras[k] for k in ("strategy", "profile", "uid_root", "pymedphys_config")} == {
        k: values[k] for k in ("strategy", "profile", "uid_root", "pymedphys_config")
    }


def test_documentation_url_matches_the_distribution_metadata():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    url = get_provider_info()["documentation-url"]
    assert pyproject["project"]["urls"]["Documentation"] == url
    assert url.endswith("docs/provider.md")
    assert (Path(__file__).parents[1] / "docs" / "provider.md").is_file()


@pytest.mark.usefixtures("airflow_db")
def test_ui_form_offers_every_extra_with_its_default(monkeypatch: pytest.MonkeyPatch):
    """The API behind the connection form lists each extra with its default value."""
    from fastapi.testclient import TestClient

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "provider-info-tests-" * 4)
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    client = TestClient(create_app())
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="u", role="admin"))
    response = client.get("/ui/connections/hook_meta", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    (pseudo,) = [h for h in response.json() if h["connection_type"] == "pseudo"]
    fields = pseudo["extra_fields"]
    assert set(fields) == set(HOOK_EXTRAS)
    assert fields["strategy"]["value"] == "keyed"
    assert fields["strategy"]["schema"]["enum"] == ["keyed", "pymedphys"]
    assert fields["profile"]["value"] == "default"
    assert fields["date_shift_min_days"]["value"] == -3650
    assert pseudo["standard_fields"]["password"]["title"] == "Pseudonymisation key"
