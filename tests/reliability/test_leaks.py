"""Leak guarantee: fake PHI planted everywhere it can hide never reaches any output byte.

The corpus plants a unique value in every text attribute of PS3.15 Table E.1-1, names four
sequence levels deep, SR TEXT and PNAME content items, private tags (top level and in
sequences), overlay and curve groups, file meta SourceApplicationEntityTitle, multi-valued
OtherPatientIDs, non-ASCII names, and PHI in the input file and folder names. A scanner reads
every output byte as UTF-8, Latin-1 and the file's own character set. Then the same corpus goes
through the ``dicom_pseudonymise`` DAG and the task logs, XCom and published files are scanned,
for the planted values and for the key.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from airflow_pseudo.pseudonymisation import Settings, pseudonymise_directory
from airflow_pseudo.pseudonymisation.policy.profile import Action, resolve_profile
from airflow_pseudo.pseudonymisation.policy.tables.ps315 import ROWS
from airflow_pseudo.testing import FakePatient, make_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"}
PATIENTS = (1, 3)  # an ASCII and a non-ASCII (ISO_IR 192) patient


def _planted_value(index: int, vr: str) -> str:
    if vr == "PN":
        return f"Phifam{index:04d}^Phigiv{index:04d}"
    return f"PHIV{index:04d}Q"


def annex_e_text_rows() -> list[tuple[int, str, str]]:
    """(tag, VR, planted value) for every table row whose attribute takes text."""
    rows = []
    for index, (pattern, _name, _action, _options) in enumerate(ROWS):
        if pattern == "private":
            continue
        tag = int(pattern.replace("x", "0"), 16)
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in TEXT_VRS:
            rows.append((tag, vr, _planted_value(index, vr)))
    return rows


def _kept_by_profile(tag: int, profile: str = "default") -> bool:
    """Attributes a profile keeps on purpose: patient characteristics, and under Clean
    Descriptors the descriptions, whose planted values identify no one in the instance."""
    return resolve_profile(profile).rule_for(Tag(tag)).action in (Action.KEEP, Action.CLEAN)


def _content_item(value_type: str, **values: Any) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def plant_everywhere(
    ds: Dataset, tag_values: list[tuple[int, str, str]], prefix: str, profile: str = "default"
) -> list[str]:
    """Plant values in ``ds``; return every planted string (beyond the FakePatient ones)."""
    planted: list[str] = []
    for tag, vr, value in tag_values:
        if tag >> 16 == 0x0002:
            ds.file_meta.add_new(tag, vr, value)
        else:
            ds.add_new(tag, vr, value)
        if not _kept_by_profile(tag, profile):
            planted.append(value)

    # Names and SR content four levels deep, with private tags inside the sequences.
    deepest = _content_item("PNAME", PersonName=f"{prefix}Deepname^Levelfour")
    text = _content_item("TEXT", TextValue=f"{prefix} report text about Deepname Levelfour")
    level = Dataset()
    level.ContentSequence = [deepest, text]
    for depth in range(3):
        item = _content_item("CONTAINER")
        item.ContentSequence = [level] if depth else level.ContentSequence
        block = item.private_block(0x0029, "ACME SEQ", create=True)
        block.add_new(0x10, "LO", f"{prefix}SeqPrivate{depth}")
        planted.append(f"{prefix}SeqPrivate{depth}")
        level = item
    ds.ContentSequence = [level]
    ds.ValueType = "CONTAINER"
    planted += [f"{prefix}Deepname", "Levelfour", f"{prefix} report text"]

    top = ds.private_block(0x0019, "ACME TOP", create=True)
    top.add_new(0x01, "LO", f"{prefix}TopPrivate")
    top.add_new(0x02, "UN", f"{prefix}UnknownBytes".encode())
    planted += [f"{prefix}TopPrivate", f"{prefix}UnknownBytes"]

    ds.add_new(0x60000022, "LO", f"{prefix}OverlayDescription")
    ds.add_new(0x60001500, "LO", f"{prefix}OverlayLabel")
    ds.add_new(0x50002500, "LO", f"{prefix}CurveLabel")
    ds.add_new(0x50000000 | 0x3000, "OB", f"{prefix}CurveData".encode())
    planted += [
        f"{prefix}OverlayDescription",
        f"{prefix}OverlayLabel",
        f"{prefix}CurveLabel",
        f"{prefix}CurveData",
    ]
    return planted


def write_leak_corpus(root: Path, profile: str = "default") -> list[str]:
    """Write the corpus (PHI in folder and file names too); return every planted value."""
    rows = annex_e_text_rows()
    planted: list[str] = []
    for number in PATIENTS:
        patient = FakePatient.for_number(number)
        family = patient.name.split("^")[0]
        folder = root / f"{family}_{patient.patient_id}"
        folder.mkdir(parents=True, exist_ok=True)
        planted += [*patient.planted_values(), family, patient.patient_id]
        for series, template in enumerate(("ct", "mr", "sr"), start=1):
            ds = make_instance(template, patient=number, series=series)
            prefix = f"P{number}S{series}"
            planted += plant_everywhere(ds, rows, prefix, profile)
            ds.OtherPatientIDs = [*patient.other_patient_ids, f"{prefix}ThirdID"]
            planted.append(f"{prefix}ThirdID")
            name = f"{patient.name.replace('^', '_')}_{patient.birth_date}_{series}.dcm"
            pydicom.dcmwrite(folder / name, ds, enforce_file_format=True)
    return sorted(set(planted))


def _rows_kept() -> list[str]:
    return [hex(tag) for tag, _, _ in annex_e_text_rows() if _kept_by_profile(tag)]


def test_corpus_covers_the_table():
    """The planting reaches every text row of the table (kept-by-design rows are listed)."""
    rows = annex_e_text_rows()
    assert len(rows) > 150
    # Retained on purpose by the default profile's options (patient characteristics etc.).
    assert len(_rows_kept()) < 20, _rows_kept()


def scan_tree(rel: Any, folder: Path, planted: list[str]) -> dict[str, set[str]]:
    """Planted values found in any file's bytes or any path below ``folder``."""
    hits: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*")):
        found = rel.scan_bytes(os.fsencode(str(path.relative_to(folder))), planted)
        if path.is_file():
            found |= rel.scan_bytes(path.read_bytes(), planted, rel.python_charsets(path))
        if found:
            hits[str(path.relative_to(folder))] = found
    return hits


@pytest.mark.parametrize("profile", ["basic", "default", "research"])
def test_no_planted_value_in_any_output_byte(
    tmp_path: Path, rel: Any, key_bytes: bytes, profile: str
):
    """Every shipped profile but ``pymedphys`` (the seed's keyword list, kept as it was)."""
    from airflow_pseudo.pseudonymisation import PseudonymKey

    settings = Settings(key=PseudonymKey(key_bytes), profile=profile)
    incoming = tmp_path / "incoming"
    planted = write_leak_corpus(incoming, profile)
    inputs = [p for p in incoming.rglob("*.dcm")]
    # The scanner works: it finds the values in the inputs and in their names.
    input_hits = scan_tree(rel, incoming, planted)
    assert len(input_hits) >= len(inputs)
    assert set().union(*input_hits.values()) >= {v for v in planted if "Deepname" in v}

    output = tmp_path / "out"
    results = pseudonymise_directory(incoming, output, settings=settings)
    assert [r.status for r in results] == ["ok"] * len(inputs), [r.reason for r in results]
    assert len(list(output.rglob("*.dcm"))) == len(inputs)
    assert scan_tree(rel, output, planted) == {}


def test_reference_engine_leaks_nothing_either(tmp_path: Path, rel: Any, key_bytes: bytes):
    from airflow_pseudo.pseudonymisation import PseudonymKey

    incoming = tmp_path / "incoming"
    planted = write_leak_corpus(incoming)
    settings = Settings(key=PseudonymKey(key_bytes), engine="reference")
    results = pseudonymise_directory(incoming, tmp_path / "out", settings=settings)
    assert {r.status for r in results} == {"ok"}
    assert scan_tree(rel, tmp_path / "out", planted) == {}


# --- the DAG: logs, XCom, published files ---------------------------------------------------


def _xcom_texts(dr: Any) -> list[str]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=dr.dag_id, run_id=dr.run_id).all()
        return [f"{row.task_id}/{row.key}: {json.dumps(row.value)}" for row in rows]


def _log_files(dr: Any) -> list[Path]:
    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    return [p for p in logs.rglob("*") if p.is_file() and dr.run_id in str(p)]


@pytest.mark.slow
@pytest.mark.usefixtures("airflow_db", "pseudo_conn")
def test_dag_run_leaks_nothing_to_logs_xcom_or_published(
    tmp_path: Path,
    rel: Any,
    key_bytes: bytes,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
):
    """dag.test() runs the tasks in-process: their logs are this process's output and log
    records (plus any task log files under AIRFLOW_HOME/logs), all scanned."""
    import logging

    caplog.set_level(logging.DEBUG)
    from airflow.dag_processing.dagbag import DagBag

    incoming = tmp_path / "incoming"
    planted = write_leak_corpus(incoming)
    count = len(list(incoming.rglob("*.dcm")))
    stamp = time.time() - 3600
    for path in incoming.rglob("*.dcm"):
        os.utime(path, (stamp, stamp))
    conf = {
        "incoming_dir": str(incoming),
        "work_dir": str(tmp_path / "work"),
        "publish_dir": str(tmp_path / "published"),
        "archive_dir": str(tmp_path / "archive"),
        "settle_seconds": 30,
    }
    dag = DagBag(dag_folder=str(Path(__file__).parents[2] / "dags")).dags["dicom_pseudonymise"]
    dr = dag.test(run_conf=conf)
    assert dr.state == "success"

    xcoms = _xcom_texts(dr)
    assert any(x.startswith("pseudonymise/") for x in xcoms)
    captured = capfd.readouterr()
    log_text = captured.out + captured.err + caplog.text
    assert "Pseudonymised 6 file(s)" in log_text  # the task logs were captured
    secrets = [key_bytes.decode()]
    assert rel.scan_bytes(log_text.encode(), planted + secrets) == set()
    for text in xcoms:
        assert rel.scan_bytes(text.encode(), planted + secrets) == set(), text[:300]
    for log in _log_files(dr):
        assert rel.scan_bytes(log.read_bytes(), planted + secrets) == set(), log
    published = tmp_path / "published" / dr.run_id
    assert len(list(published.rglob("*.dcm"))) == count
    assert scan_tree(rel, published, planted + secrets) == {}
    # The original names live only in ingest's mapping (a PHI zone), archived with the inputs.
    claims = tmp_path / "archive" / dr.run_id / "claims.jsonl"
    assert len(claims.read_text().splitlines()) == count
    assert rel.scan_bytes(claims.read_bytes(), planted)  # the scanner sees names when present


def test_sensor_and_trigger_can_withhold_file_names(tmp_path: Path):
    """With return_files=False neither XCom nor the trigger event (stored in the DB) holds names."""
    import asyncio

    from airflow_pseudo.sensors.directory import DirectorySensor
    from airflow_pseudo.triggers.directory import DirectoryTrigger

    incoming = tmp_path / "Testperson_Alice_MRN000001"
    incoming.mkdir()
    for i in range(3):
        (incoming / f"Testperson^Alice_{i}.dcm").write_bytes(b"x")
    sensor = DirectorySensor(
        task_id="w", folder=str(incoming), settle_seconds=0, return_files=False, max_files=2
    )
    assert sensor.poke({}).xcom_value == 2  # type: ignore[arg-type]
    assert sensor.execute_complete({}, {"status": "success", "count": 3}) == 2  # type: ignore[arg-type]
    trigger = DirectoryTrigger(folder=str(incoming), settle_seconds=0, return_files=False)

    async def first_event() -> Any:
        async for event in trigger.run():
            return event.payload

    assert asyncio.run(first_event()) == {"status": "success", "count": 3}
