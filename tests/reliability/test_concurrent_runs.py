"""Concurrent runs: the ingest step claims each file exactly once, whoever else is claiming.

``dag.test()`` cannot run two DAG runs at once in one process, so the claim step the DAG's ingest
task uses (:func:`claim_files_neutral`) runs in several processes at once on the same incoming
folder; then two ``dag.test()`` runs one after the other show the second finds nothing left.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_pseudo.incoming import (
    CLAIMS_FILE,
    claim_files_neutral,
    find_settled_files,
)
from airflow_pseudo.testing import write_corpus

FILES = 300
RUNS = 4


def _claim(args: tuple[str, str, str, Any]) -> list[str]:
    incoming, staging, _, barrier = args
    files = find_settled_files(incoming, settle_seconds=0)
    barrier.wait()  # everyone has listed every file; now all claim at once
    return claim_files_neutral(files, staging, incoming)


def test_parallel_claims_take_each_file_exactly_once(tmp_path: Path):
    incoming = tmp_path / "incoming"
    contents = {}
    for i in range(FILES):
        path = incoming / f"pt{i % 7}" / f"file{i:04d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"content {i}".encode())
        contents[path.relative_to(incoming).as_posix()] = path.read_bytes()
    with multiprocessing.Manager() as manager:
        barrier = manager.Barrier(RUNS)
        jobs = [(str(incoming), str(tmp_path / f"staging-{n}"), "", barrier) for n in range(RUNS)]
        with multiprocessing.get_context("spawn").Pool(RUNS) as pool:
            claimed = pool.map(_claim, jobs)

    everything = [path for run in claimed for path in run]
    assert len(everything) == FILES  # each file once: no duplicates, none lost
    assert not [p for p in incoming.rglob("*") if p.is_file()]
    seen = {}
    for n, run in enumerate(claimed):
        staging = tmp_path / f"staging-{n}"
        mapping = {
            e["claimed"]: e["original"]
            for e in map(json.loads, (staging / CLAIMS_FILE).read_text().splitlines())
        }
        for path in run:
            original = mapping[Path(path).name]
            assert original not in seen
            seen[original] = path
            assert Path(path).read_bytes() == contents[original]
    assert set(seen) == set(contents)


def test_retry_returns_the_same_claims(tmp_path: Path):
    incoming = tmp_path / "incoming"
    for i in range(5):
        (incoming / "a").mkdir(parents=True, exist_ok=True)
        (incoming / "a" / f"{i}.dcm").write_bytes(b"x")
    files = find_settled_files(incoming, settle_seconds=0)
    first = claim_files_neutral(files, tmp_path / "staging", incoming)
    # A new file arriving under an already-claimed name is never written over the claimed one.
    (incoming / "a" / "0.dcm").write_bytes(b"newer")
    second = claim_files_neutral(files, tmp_path / "staging", incoming)
    assert first == second
    assert Path(first[0]).read_bytes() == b"x"
    assert (incoming / "a" / "0.dcm").read_bytes() == b"newer"


@pytest.mark.slow
@pytest.mark.usefixtures("airflow_db", "pseudo_conn")
def test_second_dag_run_on_the_same_folder_finds_nothing(tmp_path: Path):
    from airflow.dag_processing.dagbag import DagBag

    incoming = tmp_path / "incoming"
    inputs = write_corpus(incoming, patients=1, instances_per_series=2)
    stamp = time.time() - 3600
    for path in inputs:
        os.utime(path, (stamp, stamp))
    conf = {
        "incoming_dir": str(incoming),
        "work_dir": str(tmp_path / "work"),
        "publish_dir": str(tmp_path / "published"),
        "archive_dir": str(tmp_path / "archive"),
        "settle_seconds": 30,
    }
    dag = DagBag(dag_folder=str(Path(__file__).parents[2] / "dags")).dags["dicom_pseudonymise"]
    dag.task_dict["wait"].timeout = 0
    first = dag.test(run_conf=conf)
    second = dag.test(run_conf=conf)
    assert first.state == second.state == "success"
    assert {ti.state for ti in first.get_task_instances()} == {"success"}
    assert {ti.state for ti in second.get_task_instances()} == {"skipped"}
    archived = list((tmp_path / "archive" / first.run_id).rglob("*.dcm"))
    assert len(archived) == len(inputs)
    assert not (tmp_path / "archive" / second.run_id).exists()
