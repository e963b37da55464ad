"""The example DAGs: they import cleanly, and run end to end with ``dag.test()`` on SQLite."""

from __future__ import annotations

import itertools
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from airflow_pseudo.testing import write_corpus

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


class TestImport:
    def test_no_import_errors_and_no_deprecation_warnings(self):
        """Every DAG file parses, with Airflow's deprecation warnings turned into errors."""
        from airflow.exceptions import AirflowProviderDeprecationWarning

        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", AirflowProviderDeprecationWarning)
            bag = _dagbag()
        assert bag.import_errors == {}
        assert {"dicom_pseudonymise", "dicom_pseudonymise_mapped"} <= set(bag.dag_ids)

    @pytest.mark.parametrize("dag_id", ["dicom_pseudonymise", "dicom_pseudonymise_mapped"])
    def test_scheduled_and_bounded(self, dag_id: str):
        """The example DAGs run unattended: scheduled, no catchup, bounded concurrency."""
        dag = _dagbag().dags.get(dag_id)
        assert dag is not None
        assert isinstance(dag.schedule, str)
        assert dag.schedule.count(" ") == 4  # a cron expression
        assert dag.catchup is False
        assert 1 <= dag.max_active_runs <= 4
        wait = dag.task_dict["wait"]
        assert wait.soft_fail is True
        assert wait.mode == "reschedule"

    def test_chain(self):
        """dicom_pseudonymise chains wait -> ingest -> pseudonymise -> validate -> publish."""
        dag = _dagbag().dags.get("dicom_pseudonymise")
        assert dag is not None
        order = ["wait", "ingest", "pseudonymise", "validate", "publish"]
        for upstream, downstream in itertools.pairwise(order):
            assert downstream in dag.task_dict[upstream].downstream_task_ids

    def test_parsing_imports_nothing_heavy(self):
        """Parsing the DAG files imports neither pydicom nor the pseudonymisation core."""
        import subprocess
        import sys

        code = (
            "import sys, runpy\n"
            f"for f in {[str(p) for p in sorted(DAGS.glob('*.py'))]!r}: runpy.run_path(f)\n"
            "heavy = ('pydicom', 'airflow_pseudo.pseudonymisation')\n"
            "bad = [m for m in heavy if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


# --- end to end -----------------------------------------------------------------------------


def _age(folder: Path, seconds: float = 3600) -> None:
    """Make every file under ``folder`` look settled."""
    stamp = time.time() - seconds
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (stamp, stamp))


def _bad_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x40\x00" + b"1.2")
    return path


def _folders(tmp_path: Path) -> dict[str, Any]:
    return {
        "incoming_dir": str(tmp_path / "incoming"),
        "work_dir": str(tmp_path / "work"),
        "publish_dir": str(tmp_path / "published"),
        "archive_dir": str(tmp_path / "archive"),
        "settle_seconds": 30,
    }


def _run(dag_id: str, conf: dict[str, Any], **task_overrides: dict[str, Any]):
    """Run a DAG with dag.test(); ``task_overrides`` set task attributes (e.g. retries) first."""
    dag = _dagbag().dags.get(dag_id)
    assert dag is not None
    for task_id, attrs in task_overrides.items():
        for name, value in attrs.items():
            setattr(dag.task_dict[task_id], name, value)
    return dag.test(run_conf=conf)


def _xcom(dr, task_id: str) -> Any:
    """The task's return_value XCom; a mapped task's values as a list, one per map index."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(XComModel)
            .filter_by(dag_id=dr.dag_id, run_id=dr.run_id, task_id=task_id, key="return_value")
            .order_by(XComModel.map_index)
            .all()
        )
        values = [(row.map_index, row.value) for row in rows]
    decoded = [(i, json.loads(v) if isinstance(v, str) else v) for i, v in values]
    if len(decoded) == 1 and decoded[0][0] == -1:
        return decoded[0][1]
    return [v for _, v in decoded]


def _claims(staging: Path) -> dict[str, str]:
    """The ingest task's mapping in a staging folder: neutral name -> original relative path."""
    lines = (staging / "claims.jsonl").read_text().splitlines()
    return {e["claimed"]: e["original"] for e in map(json.loads, lines)}


def _states(dr) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dr.get_task_instances()}


def _manifest(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.usefixtures("airflow_db", "pseudo_conn")
class TestDicomPseudonymise:
    def test_end_to_end(self, tmp_path: Path):
        """A scheduled-style run pseudonymises, validates, publishes and archives every file."""
        conf = _folders(tmp_path)
        inputs = write_corpus(tmp_path / "incoming", patients=2, instances_per_series=1)
        (tmp_path / "incoming" / "late.dcm.part").write_bytes(b"still copying")
        _age(tmp_path / "incoming")
        dr = _run("dicom_pseudonymise", conf)

        assert dr.state == "success", _states(dr)
        pseudo = _xcom(dr, "pseudonymise")
        valid = _xcom(dr, "validate")
        staging = tmp_path / "work" / "staging" / dr.run_id
        claims = _claims(tmp_path / "archive" / dr.run_id)  # moved there with the inputs
        assert not staging.exists()  # nothing left behind for a later run to adopt
        assert sorted(claims.values()) == sorted(
            p.relative_to(tmp_path / "incoming").as_posix() for p in inputs
        )
        assert sorted(r["source"] for r in pseudo) == sorted(str(staging / n) for n in claims)
        assert {r["status"] for r in pseudo} == {"ok"}
        assert [r["source"] for r in valid] == [r["source"] for r in pseudo]
        assert {r["status"] for r in valid} == {"ok"}

        published = tmp_path / "published" / dr.run_id
        lines = _manifest(published / "manifest.jsonl")
        assert lines[-1]["record"] == "summary"
        assert lines[-1]["published"] == len(inputs)
        for entry in lines[:-1]:
            assert entry["status"] == "published"
            assert Path(entry["published"].removeprefix("file://")).is_file()
        assert len([p for p in published.rglob("*.dcm")]) == len(inputs)

        archived = sorted((tmp_path / "archive" / dr.run_id).rglob("*.dcm"))
        assert len(archived) == len(inputs)
        assert not any(p.exists() for p in inputs)
        # The half-copied file is left for a later run.
        assert (tmp_path / "incoming" / "late.dcm.part").exists()

        from airflow.models.asset import AssetEvent
        from airflow.utils.session import create_session

        with create_session() as session:
            event = (
                session.query(AssetEvent)
                .filter_by(source_run_id=dr.run_id, source_task_id="publish")
                .one()
            )
            assert event.extra["published"] == len(inputs)

    def test_bad_file_among_good_ones_tolerated(self, tmp_path: Path):
        """With max_failed_files=1 the good files are published and the bad one quarantined."""
        conf = {**_folders(tmp_path), "max_failed_files": 1}
        good = write_corpus(tmp_path / "incoming", patients=1, instances_per_series=2)
        _bad_file(tmp_path / "incoming" / "broken.dcm")
        _age(tmp_path / "incoming")
        dr = _run("dicom_pseudonymise", conf)

        assert dr.state == "success", _states(dr)
        pseudo = _xcom(dr, "pseudonymise")
        (bad,) = [r for r in pseudo if r["status"] == "failed"]
        assert _claims(tmp_path / "archive" / dr.run_id)[Path(bad["source"]).name] == "broken.dcm"
        assert bad["reason"]
        assert Path(bad["quarantine"]).is_file()
        assert Path(bad["quarantine"]).is_relative_to(tmp_path / "work" / "quarantine")
        reason = json.loads(Path(bad["quarantine"]).with_suffix(".json").read_text())
        assert reason["reason"] == bad["reason"]

        lines = _manifest(tmp_path / "published" / dr.run_id / "manifest.jsonl")
        assert lines[-1]["published"] == len(good)
        assert lines[-1]["quarantined"] == 1
        assert {e["status"] for e in lines[:-1]} == {"published", "quarantined"}

    def test_bad_file_fails_by_default(self, tmp_path: Path):
        """With the default policy the task fails after processing every file; nothing is lost."""
        conf = _folders(tmp_path)
        good = write_corpus(tmp_path / "incoming", patients=1, instances_per_series=2)
        _bad_file(tmp_path / "incoming" / "broken.dcm")
        _age(tmp_path / "incoming")
        dr = _run("dicom_pseudonymise", conf)  # retries=2 from default_args

        states = _states(dr)
        assert dr.state == "failed"
        assert states["pseudonymise"] == "failed"
        # Bad data is not retried: one try, although the task allows retries.
        (ti,) = [ti for ti in dr.get_task_instances() if ti.task_id == "pseudonymise"]
        assert ti.try_number == 1 and ti.max_tries == 2
        assert states["publish"] == "upstream_failed"
        records = _xcom(dr, "pseudonymise")
        assert [r["status"] for r in records].count("ok") == len(good)
        assert [r["status"] for r in records].count("failed") == 1
        # Inputs stay claimed in staging (not archived, not published).
        staging = tmp_path / "work" / "staging" / dr.run_id
        assert len(list(staging.rglob("*.dcm"))) == len(good) + 1
        assert not (tmp_path / "published" / dr.run_id).exists()

    def test_empty_incoming_is_skipped(self, tmp_path: Path):
        """No settled file within the sensor's timeout ends the run skipped, not failed."""
        conf = _folders(tmp_path)
        (tmp_path / "incoming").mkdir()
        (tmp_path / "incoming" / "fresh.dcm").write_bytes(b"DICM")  # not settled yet
        dr = _run("dicom_pseudonymise", conf, wait={"timeout": 0})
        states = _states(dr)
        assert dr.state == "success"
        assert set(states.values()) == {"skipped"}

    def test_second_run_takes_only_new_files(self, tmp_path: Path):
        """A later run processes the new files and leaves the earlier run's results alone."""
        conf = _folders(tmp_path)
        write_corpus(tmp_path / "incoming" / "batch1", patients=1, instances_per_series=1)
        _age(tmp_path / "incoming")
        first = _run("dicom_pseudonymise", conf)
        write_corpus(tmp_path / "incoming" / "batch2", patients=1, instances_per_series=1)
        _age(tmp_path / "incoming")
        second = _run("dicom_pseudonymise", conf)
        assert first.state == second.state == "success"
        assert first.run_id != second.run_id
        sources = [r["source"] for r in _xcom(second, "pseudonymise")]
        assert sources
        claims = _claims(tmp_path / "archive" / second.run_id)
        assert all(claims[Path(s).name].startswith("batch2/") for s in sources)


@pytest.mark.slow
@pytest.mark.usefixtures("airflow_db", "pseudo_conn")
class TestDicomPseudonymiseMapped:
    def test_end_to_end_in_batches(self, tmp_path: Path, capfd: pytest.CaptureFixture[str]):
        """Files are split into batches; pseudonymise and validate map over them; one publish."""
        conf = {**_folders(tmp_path), "batch_size": 2, "max_failed_files": 1}
        good = write_corpus(tmp_path / "incoming", patients=2, instances_per_series=1)
        _bad_file(tmp_path / "incoming" / "broken.dcm")
        _age(tmp_path / "incoming")
        dr = _run("dicom_pseudonymise_mapped", conf)

        assert dr.state == "success", _states(dr)
        batches = _xcom(dr, "ingest")
        assert all(len(b) <= 2 for b in batches)
        assert sum(len(b) for b in batches) == len(good) + 1
        pseudo = _xcom(dr, "pseudonymise")
        valid = _xcom(dr, "validate")
        assert len(pseudo) == len(valid) == len(batches)
        flat = [r for batch in pseudo for r in batch]
        assert [r["status"] for r in flat].count("ok") == len(good)
        assert [r["status"] for r in flat].count("failed") == 1
        assert [r["status"] for b in valid for r in b].count("ok") == len(good)

        lines = _manifest(tmp_path / "published" / dr.run_id / "manifest.jsonl")
        assert lines[-1]["published"] == len(good)
        assert lines[-1]["quarantined"] == 1
        assert len(list((tmp_path / "archive" / dr.run_id).rglob("*.dcm"))) == len(good) + 1
        assert not list((tmp_path / "incoming").rglob("*.dcm"))
        # publish pulls each mapped task's XCom in one request, never probing past its end
        assert "XCom not found" not in "".join(capfd.readouterr())

    def test_batches_are_rendered_as_counts(self, tmp_path: Path):
        """A mapped batch's paths and records are stored in the rendered view as a count only."""
        from airflow.models.renderedtifields import RenderedTaskInstanceFields
        from airflow.utils.session import create_session

        conf = {**_folders(tmp_path), "batch_size": 1000}
        good = write_corpus(tmp_path / "incoming", patients=1, series_per_study=1,
                            instances_per_series=24, templates=("ct",))  # fmt: skip
        _age(tmp_path / "incoming")
        dr = _run("dicom_pseudonymise_mapped", conf)
        assert dr.state == "success", _states(dr)
        with create_session() as session:
            rendered = {
                row.task_id: row.rendered_fields
                for row in session.query(RenderedTaskInstanceFields).filter_by(
                    dag_id=dr.dag_id, run_id=dr.run_id
                )
            }
        count = f"{len(good)} items (in full in the upstream task's XCom)"
        assert rendered["pseudonymise"]["files"] == count
        assert rendered["validate"]["results"] == count


@pytest.mark.slow
@pytest.mark.usefixtures("airflow_db", "pseudo_conn")
@pytest.mark.parametrize("dag_id", ["dicom_pseudonymise", "dicom_pseudonymise_mapped"])
def test_capped_run_reports_the_files_left_for_the_next_run(tmp_path: Path, dag_id: str):
    """A run capped by max_files publishes max_files and its report counts the rest, by number."""
    conf = {**_folders(tmp_path), "max_files": 2}
    inputs = write_corpus(tmp_path / "incoming", patients=1, instances_per_series=5)
    _age(tmp_path / "incoming")
    dr = _run(dag_id, conf)

    assert dr.state == "success", _states(dr)
    published = tmp_path / "published" / dr.run_id
    assert _manifest(published / "manifest.jsonl")[-1]["published"] == 2
    left = len(inputs) - 2
    assert len(list((tmp_path / "incoming").rglob("*.dcm"))) == left
    report = json.loads((published / "report.json").read_text())
    assert report["left_for_next_run"] == left
    page = (published / "report.html").read_text()
    assert f"{left} settled file(s) left for the next run (max_files)" in page


def test_mapped_batches_stay_under_max_map_length():
    """Batches are enlarged when batch_size would exceed [core] max_map_length."""
    from airflow_pseudo.operators.ingest import split_batches

    files = [f"{i:06d}.dcm" for i in range(10)]
    batches = split_batches(files, 2, 3)
    assert len(batches) == 3
    assert [f for b in batches for f in b] == files
    assert split_batches(files, 4, 1024) == [files[:4], files[4:8], files[8:]]


def test_the_mapped_dag_sizes_its_batches_for_one_wave_of_tasks():
    """By default 10,000 files make as many batches as may run at once, not two waves."""
    from airflow_pseudo.operators.ingest import split_batches

    dag = _dagbag().dags["dicom_pseudonymise_mapped"]
    defaults = {name: dag.params[name] for name in ("batch_size", "max_batches")}
    assert defaults == {"batch_size": 1000, "max_batches": 8}
    assert dag.get_task("pseudonymise").max_active_tis_per_dagrun == 8
    files = [f"{i:06d}.dcm" for i in range(10_000)]
    assert [len(b) for b in split_batches(files, **defaults)] == [1250] * 8
