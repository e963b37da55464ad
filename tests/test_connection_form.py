"""The ``pseudo`` connection's edit form in Airflow's real UI, driven in headless Chromium.

Airflow's API server runs in a subprocess (SQLite, simple auth manager with every user an admin,
so the UI logs in by itself); Chromium opens *Admin → Connections*, clicks *Edit* and opens
*Extra Fields* through the DevTools protocol, then reads the form.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_pseudo.get_provider_info import get_provider_info
from tests.conftest import CHROMIUM_FLAGS, REPO_ROOT, require_tool

pytestmark = pytest.mark.slow

#: Every extra with a value, as docs/provider.md tells CLI and environment users to store them.
FULL_EXTRA = {
    "strategy": "keyed",
    "profile": "default",
    "uid_root": "1.2.826.0.1.3680043.10.999",
    "date_shift_min_days": -3650,
    "date_shift_max_days": -366,
    "pymedphys_config": None,
}


# JavaScript run in the page: find an element, give its centre for a real click, read the form.
_CENTRE = "(e => { const r = e.getBoundingClientRect(); return [r.x+r.width/2, r.y+r.height/2]; })"
_ROW = "[...document.querySelectorAll('tr')].find(r => r.innerText.includes('CONN_ID'))"
_EDIT = 'button[aria-label="Edit Connection"]'
_EXTRA_TRIGGER = (
    "[...document.querySelectorAll('[role=dialog] button')]"
    ".find(b => b.innerText.trim() === 'Extra Fields')"
)
_READ_EXTRA_FIELDS = f"""(() => {{
    const trigger = {_EXTRA_TRIGGER};
    const panel = trigger && document.getElementById(trigger.getAttribute('aria-controls'));
    if (!panel || panel.hidden) return null;
    const labels = [...panel.querySelectorAll('label')].map(l => l.innerText.trim());
    const inputs = Object.fromEntries(
        [...panel.querySelectorAll('[id^=element_]')].map(e => [e.id.slice(8), e.value])
    );
    const values = [...panel.querySelectorAll('input')].map(e => e.value);
    return labels.length ? {{labels, inputs, values}} : null;
}})()"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run Airflow's API server with two ``pseudo`` connections; yield its base URL."""
    require_tool("chromium", "chromium")  # before spending half a minute on the server
    home = tmp_path_factory.mktemp("ui-home")
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API_AUTH__JWT_SECRET": "connection-form-tests-" * 4,
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    for conn_id, extra in (("pseudo_full", FULL_EXTRA), ("pseudo_partial", {"uid_root": "1.2.3"})):
        subprocess.run(
            [airflow, "connections", "add", conn_id, "--conn-type", "pseudo",
             "--conn-password", "form test key, 16 bytes or more", "--conn-extra",
             json.dumps(extra)],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
    log = (home / "api-server.log").open("w")
    server = subprocess.Popen(
        [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/api/v2/version", 120)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


async def _edit_form(base_url: str, conn_id: str, profile: Path) -> dict[str, Any]:
    """Open the edit form of `conn_id`; return its extra fields' labels and values."""
    import websockets

    chromium = require_tool("chromium", "chromium")
    port = _free_port()
    browser = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
         f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(f"http://127.0.0.1:{port}/json/version", 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as response:
            page = next(p for p in json.load(response) if p["type"] == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=2**26) as ws:
            counter = 0

            async def call(method: str, **params: Any) -> dict[str, Any]:
                nonlocal counter
                counter += 1
                await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
                while True:
                    message = json.loads(await ws.recv())
                    if message.get("id") == counter:
                        return message.get("result", {})

            async def evaluate(expression: str) -> Any:
                result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
                return result.get("result", {}).get("value")

            async def until(expression: str, seconds: float = 30) -> Any:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    if value := await evaluate(expression):
                        return value
                    await asyncio.sleep(0.25)
                raise TimeoutError(expression)

            async def click(x: float, y: float) -> None:
                for kind in ("mousePressed", "mouseReleased"):
                    await call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                               clickCount=1)  # fmt: skip

            await call("Emulation.setDeviceMetricsOverride", width=1400, height=2400,
                       deviceScaleFactor=1, mobile=False)  # fmt: skip
            await call("Page.navigate", url=f"{base_url}/connections")
            row = _ROW.replace("CONN_ID", conn_id)
            await click(*await until(f"{_CENTRE}({row}.querySelector({_EDIT!r}))"))
            await click(*await until(f"{_CENTRE}({_EXTRA_TRIGGER})"))
            fields = await until(_READ_EXTRA_FIELDS)
            shot = await call("Page.captureScreenshot", format="png")
            fields["screenshot"] = base64.b64decode(shot["data"])
            return dict(fields)
    finally:
        browser.terminate()
        browser.wait(timeout=30)


def _labels() -> list[str]:
    (connection,) = get_provider_info()["connection-types"]
    return [field["label"] for field in connection["conn-fields"].values()]


def test_every_extra_is_shown_on_edit(api_server: str, tmp_path: Path):
    """A connection that stores every extra (created in the UI, or as the docs show) is edited
    with one widget per extra, holding its value."""
    form = asyncio.run(_edit_form(api_server, "pseudo_full", tmp_path / "profile"))
    assert form["labels"] == _labels()
    assert form["inputs"]["uid_root"] == FULL_EXTRA["uid_root"]
    assert form["inputs"]["profile"] == "default"
    assert {"-3650", "-366"} <= set(form["values"])
    assert form["screenshot"].startswith(b"\x89PNG")


def test_a_partial_extra_shows_only_its_keys(api_server: str, tmp_path: Path):
    """Airflow's form shows, on edit, only the extras a connection stores: why the docs ask CLI
    and environment users to store every key. If this starts failing, Airflow fixed it."""
    form = asyncio.run(_edit_form(api_server, "pseudo_partial", tmp_path / "profile"))
    assert form["labels"] == ["UID root"]


def test_the_api_server_mounts_the_report_app(api_server: str):
    """The report plugin builds its app in the real API server process (not only in tests)."""
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{api_server}/pseudo-reports/runs/some_dag/some_run")
    # The app's own answer (every user is an admin here), not the server's "Not Found".
    assert raised.value.code == 404
    assert json.loads(raised.value.read()) == {"detail": "This run has no report"}
