"""Crash safety and idempotency of the command line tool.

A run of ``airflow-pseudo pseudonymise`` on 200 files is killed with SIGKILL once some outputs
exist, then run again: the outputs are complete and byte-identical to an uninterrupted run into
another folder, with no duplicates and no temporary file left. Running a finished run again
changes nothing (same bytes, same mtimes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_pseudo.testing import write_ct_copies

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CLI = str(Path(sys.executable).with_name("airflow-pseudo"))
FILES = 200


def _cli(incoming: Path, output: Path, key: Path, *extra: str) -> list[str]:
    return [CLI, "pseudonymise", str(incoming), "-o", str(output), "--key-file", str(key), *extra]


def _outputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if not p.name.startswith(".tmp-"))


def _state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("crash")
    write_ct_copies(root / "incoming", FILES)
    key = root / "project.key"
    key.write_bytes(b"crash test key, thirty-two bytes!")
    return root / "incoming", key


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted_run(
    tmp_path: Path, corpus: tuple[Path, Path], rel: Any
):
    incoming, key = corpus
    before = rel.digest_tree(incoming)

    reference = tmp_path / "reference"
    done = subprocess.run(_cli(incoming, reference, key), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = {str(p.relative_to(reference)): p.read_bytes() for p in _outputs(reference)}
    assert len(expected) == FILES

    output = tmp_path / "output"
    proc = subprocess.Popen(
        _cli(incoming, output, key), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(_outputs(output)) < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = _outputs(output)
    assert 20 <= len(partial) < FILES
    # Whatever exists after the kill is complete: identical to the uninterrupted run's file.
    for path in partial:
        assert path.read_bytes() == expected[str(path.relative_to(output))]

    again = subprocess.run(_cli(incoming, output, key), capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    got = {str(p.relative_to(output)): p.read_bytes() for p in _outputs(output)}
    assert got == expected  # complete, identical, no duplicates (same names, same count)
    leftovers = [p for p in output.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    assert not (tmp_path / "output-quarantine").exists()
    assert rel.digest_tree(incoming) == before

    # A finished run, run again, changes nothing: same bytes and same mtimes.
    state = _state(output)
    third = subprocess.run(_cli(incoming, output, key), capture_output=True, text=True)
    assert third.returncode == 0
    assert _state(output) == state


def test_stale_temporary_of_a_dead_writer_is_removed(tmp_path: Path, rel: Any):
    """Only temporaries of dead writers on this host go; live ones and foreign ones stay."""
    import re

    from airflow_pseudo.pseudonymisation.io.outputs import (
        _temporary_prefix,
        remove_stale_temporaries,
    )

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    match = re.fullmatch(r"\.tmp-(.+)-(\d+)-", _temporary_prefix())
    assert match and int(match[2]) == os.getpid()
    host = match[1]
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    stale = sub / f".tmp-{host}-{dead.pid}-x1.dcm"
    live = sub / f"{_temporary_prefix()}x2.dcm"
    foreign = sub / f".tmp-otherhost-{dead.pid}-x3.dcm"
    for path in (stale, live, foreign):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and live.exists() and foreign.exists()
