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
