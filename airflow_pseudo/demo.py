"""End-to-end demo: ``python -m airflow_pseudo.demo`` (what ``make demo`` runs).

1. Writes sample DICOM with fake patient details into ``demo-data/incoming/<batch>``.
2. Sets up an embedded Airflow: ``AIRFLOW_HOME=.airflow-home`` with a SQLite database, large
   XCom values in files (:func:`xcom_settings`), and a ``pseudo_default`` connection whose key is
   generated once into ``.airflow-home/pseudo.key``.
3. Runs the ``dicom_pseudonymise`` example DAG end to end with ``dag.test()`` (no scheduler or
   web server to start) and prints one line per file from the tasks' XCom results, then where
   the published files, the manifest, the archived inputs and any quarantined files are.

Run it again to process a new batch of files; each run gets its own folders.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DAG_ID = "dicom_pseudonymise"
XCOM_BACKEND = "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend"
XCOM_THRESHOLD_BYTES = 64 * 1024
"""Values from this size on go to files: a batch's records (~600 bytes per file), not counts."""


def xcom_settings(folder: Path, threshold: int = XCOM_THRESHOLD_BYTES) -> dict[str, str]:
    """Airflow settings that keep large XCom values, the tasks' per-file records, in files.

    Airflow's object-storage XCom backend (common-io provider) writes a value of ``threshold``
    bytes or more as JSON under ``folder`` and keeps only its path in the metadata database;
    tasks pull the value itself. Every record otherwise passes through the Execution API and the
    database as JSON, validated element by element, once when pushed and once per pull: on
    10,000 files this took a sixth of the mapped DAG's time, and grew the database by 11 MB per
    run. ``folder`` must be shared by every worker (a shared volume, or an object store URL).
    """
    return {
        "AIRFLOW__CORE__XCOM_BACKEND": XCOM_BACKEND,
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{folder}",
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": str(threshold),
    }


def stored_xcom(value: Any) -> Any:
    """Read a value of the ``xcom`` table, following a reference to where the backend put it.

    :param value: the column's value as the database returns it: the JSON text of the value, or
        the value itself (a backend's reference, e.g. ``file://...``, among them).
    """
    from types import SimpleNamespace

    from airflow.sdk.execution_time.xcom import XCom

    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    return XCom.deserialize_value(SimpleNamespace(value=value))


def _dags_folder() -> Path:
    for candidate in (Path(__file__).resolve().parent.parent / "dags", Path.cwd() / "dags"):
        if (candidate / f"{DAG_ID}.py").is_file():
            return candidate
    raise SystemExit(f"cannot find dags/{DAG_ID}.py; run the demo from the repository root")


def _load_or_create_key(path: Path) -> str:
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def embedded_settings(
    home: Path, data_dir: Path, key: str, *, log_level: str = "WARNING"
) -> dict[str, str]:
    """The environment of an embedded Airflow: a private home, SQLite, this repo's dags, large
    XCom values in files, and the ``pseudo_default`` connection holding ``key``."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(_dags_folder()),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": log_level,
        "AIRFLOW_PSEUDO_DATA_DIR": str(data_dir),
        "AIRFLOW_CONN_PSEUDO_DEFAULT": json.dumps(
            {"conn_type": "pseudo", "password": key, "extra": {}}
        ),
        **xcom_settings(home / "xcom"),
    }


def configure_airflow(home: Path, data_dir: Path, key_file: Path) -> None:
    """Point Airflow at a private home, SQLite DB and this repo's dags; define the connection."""
    home.mkdir(parents=True, exist_ok=True)
    key = _load_or_create_key(key_file)
    log_level = os.environ.get("DEMO_LOG_LEVEL", "WARNING")
    os.environ.update(embedded_settings(home, data_dir, key, log_level=log_level))


def stored_return_values(dag_run: Any, task_id: str) -> list[Any]:
    """The task's ``return_value`` XCom as the database holds it, one value per map index."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(XComModel)
            .filter_by(
                dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, key="return_value"
            )
            .order_by(XComModel.map_index)
            .all()
        )
        return [row.value for row in rows]


def _xcom(dag_run: Any, task_id: str) -> Any:
    values = stored_return_values(dag_run, task_id)
    return stored_xcom(values[0]) if values else None


def _relative(path: str | None, root: Path) -> str:
    if not path:
        return "-"
    text = path.removeprefix("file://")
    try:
        return str(Path(text).relative_to(root))
    except ValueError:
        return text


def _original_names(staging: Path) -> dict[str, str]:
    """Map the neutral names ingest gave claimed files back to their incoming names.

    The mapping lives in the staging folder (a PHI zone, like the incoming folder); the terminal
    of the person running the demo is one too, so showing the original names here is fine.
    """
    from airflow_pseudo.incoming import CLAIMS_FILE

    claims = staging / CLAIMS_FILE
    if not claims.exists():
        return {}
    entries = (json.loads(line) for line in claims.read_text().splitlines() if line.strip())
    return {entry["claimed"]: entry["original"] for entry in entries}


def _input_label(source: str, staging: Path, originals: dict[str, str]) -> str:
    claimed = _relative(source, staging)
    original = originals.get(claimed)
    return f"{original} (as {claimed})" if original else claimed


def print_report(dag_run: Any, data_dir: Path) -> None:
    """Print the per-file table from XCom and where everything went."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140, soft_wrap=False)
    run_id = dag_run.run_id
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    pseudo = _xcom(dag_run, "pseudonymise") or []
    checks = {r["source"]: r for r in (_xcom(dag_run, "validate") or [])}
    published = _xcom(dag_run, "publish") or {}
    staging = data_dir / "work" / "staging" / run_id
    destination = data_dir / "published" / run_id
    # publish archives the mapping with the inputs; a failed run still has it in staging.
    originals = _original_names(staging) or _original_names(data_dir / "archive" / run_id)

    console.print()
    console.print(f"[bold]Run[/] {run_id}: [bold]{dag_run.state}[/]")
    console.print(
        "Tasks: " + ", ".join(f"{task} [italic]{state}[/]" for task, state in states.items())
    )
    if not pseudo:
        console.print("No files were processed (the incoming folder had no settled files).")
        return

    table = Table(title="Per-file results (from the pseudonymise and validate tasks' XCom)")
    table.add_column("#", justify="right")
    table.add_column("Input file", no_wrap=True)
    table.add_column("Pseudonymise")
    table.add_column("Validate")
    table.add_column("Changes made")
    table.add_column("Outcome", overflow="fold")
    for number, record in enumerate(pseudo, 1):
        check = checks.get(record["source"], {})
        if record["status"] == "ok" and check.get("status") == "ok":
            outcome = "[green]published[/]"
        elif record.get("quarantine") or check.get("quarantine"):
            reason = record.get("reason") or "; ".join(check.get("problems") or [])
            outcome = f"[red]quarantined[/]: {reason}"
        else:
            outcome = record.get("reason") or "; ".join(check.get("problems") or []) or "-"
        changes = record.get("changes") or {}
        table.add_row(
            str(number),
            _input_label(record["source"], staging, originals),
            record["status"],
            check.get("status", "-"),
            ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in changes.items() if n),
            outcome,
        )
    console.print(table)

    here = Path.cwd()
    console.print("Where things are (each run has its own folders):")
    console.print(f"  published files  {_relative(str(destination), here)}/")
    console.print(f"  manifest         {_relative(str(destination / 'manifest.jsonl'), here)}")
    console.print(
        "                   (one JSON line per input with its published name, then a summary)"
    )
    console.print(f"  run report       {_relative(str(destination / 'report.html'), here)}")
    console.print(f"  archived inputs  {_relative(str(data_dir / 'archive' / run_id), here)}/")
    quarantine = data_dir / "work" / "quarantine" / run_id
    if quarantine.exists():
        console.print(f"  quarantine       {_relative(str(quarantine), here)}/  (copies + reasons)")
    if dag_run.state != "success":
        failed = [task for task, state in states.items() if state == "failed"]
        console.print(
            f"[bold red]The run failed[/] in {', '.join(failed) or 'a task'}: nothing was "
            f"published; the inputs stay claimed in {_relative(str(staging), here)}/"
        )
    if published:
        console.print(
            f"Counts: {published.get('published', 0)} published, "
            f"{published.get('unchanged', 0)} unchanged, "
            f"{published.get('quarantined', 0)} quarantined, {published.get('failed', 0)} failed, "
            f"{published.get('skipped', 0)} skipped"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Generate sample data, run the example DAG on an embedded Airflow, print the results."""
    parser = argparse.ArgumentParser(prog="python -m airflow_pseudo.demo", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("demo-data"))
    parser.add_argument("--airflow-home", type=Path, default=Path(".airflow-home"))
    parser.add_argument("--patients", type=int, default=3, help="fake patients to generate")
    parser.add_argument(
        "--with-bad-file",
        action="store_true",
        help="add a truncated DICOM file, to see it quarantined while the others are published",
    )
    args = parser.parse_args(argv)

    data_dir = args.data_dir.resolve()
    home = args.airflow_home.resolve()
    configure_airflow(home, data_dir, home / "pseudo.key")

    from airflow_pseudo.testing import write_corpus

    batch = datetime.now(UTC).strftime("batch-%Y%m%dT%H%M%S")
    files = write_corpus(data_dir / "incoming" / batch, patients=args.patients)
    if args.with_bad_file:
        broken = data_dir / "incoming" / batch / "broken.dcm"
        broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI")
        files.append(broken)
    print(f"Wrote {len(files)} sample DICOM files with fake patient details to")
    print(f"  {data_dir / 'incoming' / batch}")
    print(f"Starting an embedded Airflow in {home} (SQLite) and running DAG {DAG_ID!r}...")

    started = time.monotonic()
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    logging.getLogger("alembic").setLevel(logging.WARNING)
    db.initdb()
    bag = DagBag(dag_folder=str(_dags_folder() / f"{DAG_ID}.py"))
    if bag.import_errors:
        print(json.dumps(bag.import_errors, indent=2), file=sys.stderr)
        return 1
    dag = bag.dags[DAG_ID]
    conf = {
        "incoming_dir": str(data_dir / "incoming"),
        "work_dir": str(data_dir / "work"),
        "publish_dir": str(data_dir / "published"),
        "archive_dir": str(data_dir / "archive"),
        # The demo wrote its files a moment ago, completely: no need to wait for them to settle.
        "settle_seconds": 0,
        # Tolerate the deliberately broken file: publish the others, quarantine it.
        "max_failed_files": 1 if args.with_bad_file else 0,
    }
    dag_run = dag.test(run_conf=conf)
    print(f"Finished in {time.monotonic() - started:.0f} s.")
    print_report(dag_run, data_dir)
    return 0 if dag_run.state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
