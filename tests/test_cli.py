"""The ``airflow-pseudo`` command: exit codes, one-line errors, results files."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_pseudo.cli import EXIT_FILES_FAILED, EXIT_OK, EXIT_USAGE, main
from airflow_pseudo.testing import FakePatient, write_corpus


@pytest.fixture
def key_file(tmp_path: Path, key_bytes: bytes) -> Path:
    path = tmp_path / "project.key"
    path.write_bytes(key_bytes + b"\n")
    return path


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    folder = tmp_path / "incoming"
    write_corpus(folder, patients=2, series_per_study=1, instances_per_series=2)
    return folder


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdout=out), out.getvalue()


def test_pseudonymise_then_validate_exit_zero(tmp_path: Path, incoming: Path, key_file: Path):
    """A clean folder pseudonymises and validates with exit 0 and one record per file."""
    results = tmp_path / "results.jsonl"
    output = tmp_path / "out"
    code, text = run(
        "pseudonymise",
        str(incoming),
        "-o",
        str(output),
        "--key-file",
        str(key_file),
        "--results",
        str(results),
    )
    assert code == EXIT_OK, text
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == len(list(incoming.iterdir()))
    assert {r["status"] for r in records} == {"ok"}
    assert all(Path(r["output"]).is_relative_to(output) for r in records)
    code, text = run("validate", str(results), "--key-file", str(key_file))
    assert code == EXIT_OK, text
    assert f"{len(records)} ok, 0 failed" in text
    assert "key checks skipped" not in text


def test_validate_without_a_key_runs_the_key_free_checks(
    tmp_path: Path, incoming: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
):
    """No key: validation still runs, says the key checks were skipped; another key fails."""
    results, report = tmp_path / "results.jsonl", tmp_path / "report.jsonl"
    run("pseudonymise", str(incoming), "-o", str(tmp_path / "out"), "--key-file", str(key_file))
    run(
        "pseudonymise",
        str(incoming),
        "-o",
        str(tmp_path / "out2"),
        "--key-file",
        str(key_file),
        "--results",
        str(results),
    )
    monkeypatch.delenv("AIRFLOW_PSEUDO_KEY", raising=False)
    code, text = run("validate", str(results), "--report", str(report))
    assert code == EXIT_OK, text
    assert "key checks skipped" in text
    verdicts = [json.loads(line) for line in report.read_text().splitlines()]
    assert {v["key_checks"] for v in verdicts} == {"skipped"}
    other = tmp_path / "other.key"
    other.write_text("another project key, long enough\n")
    code, text = run("validate", str(results), "--key-file", str(other))
    assert code == EXIT_FILES_FAILED
    assert "is not the pseudonym the key gives" in text


def test_failed_file_gives_exit_one_and_others_still_processed(
    tmp_path: Path, incoming: Path, key_file: Path
):
    """A broken .dcm among good files fails alone: exit 1, the good files are written."""
    (incoming / "broken.dcm").write_bytes(b"\x00" * 200)
    code, text = run(
        "pseudonymise", str(incoming), "-o", str(tmp_path / "out"), "--key-file", str(key_file)
    )
    assert code == EXIT_FILES_FAILED
    assert "failed: " in text and "broken.dcm" in text
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 4
    assert len(list((tmp_path / "out-quarantine").glob("*.dcm"))) == 1


def test_missing_key_is_a_one_line_usage_error(
    incoming: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """Without a key the command exits 2 with one line saying how to provide one."""
    monkeypatch.delenv("AIRFLOW_PSEUDO_KEY", raising=False)
    code, _ = run("pseudonymise", str(incoming))
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and "AIRFLOW_PSEUDO_KEY" in err and "Traceback" not in err


def test_bad_arguments_exit_two(capsys: pytest.CaptureFixture[str]):
    """Unknown options are usage errors: exit 2, one line."""
    code, _ = run("pseudonymise")
    assert code == EXIT_USAGE
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("durability", ["file", "none"])
def test_durability_option(tmp_path: Path, incoming: Path, key_file: Path, durability: str):
    """Each durability mode writes every output; an unknown mode is a usage error."""
    output = tmp_path / durability
    args = ["pseudonymise", str(incoming), "-o", str(output), "--key-file", str(key_file)]
    code, text = run(*args, "--durability", durability)
    assert code == EXIT_OK, text
    assert len(list(output.rglob("*.dcm"))) == len(list(incoming.iterdir()))
    assert run(*args, "--durability", "sometimes")[0] == EXIT_USAGE


def test_output_inside_input_is_refused(incoming: Path, key_file: Path, capsys):
    """Writing outputs into the input folder is refused before any file is touched."""
    code, _ = run(
        "pseudonymise", str(incoming), "-o", str(incoming / "out"), "--key-file", str(key_file)
    )
    assert code == EXIT_USAGE
    assert "inside the input" in capsys.readouterr().err
    assert not (incoming / "out").exists()


def test_nothing_identifying_on_the_terminal(
    tmp_path: Path, incoming: Path, key_file: Path, capsys
):
    """What the command prints holds no planted PHI and never the key."""
    (incoming / "broken.dcm").write_bytes(b"DICM" * 10)
    run("pseudonymise", str(incoming), "-o", str(tmp_path / "o"), "--key-file", str(key_file))
    printed = capsys.readouterr()
    text = printed.out + printed.err
    for value in FakePatient.for_number(1).planted_values():
        assert value not in text
    assert key_file.read_text().strip() not in text


def test_explain_lists_every_table_row():
    """``explain`` describes the profile, one line per rule, naming its source."""
    code, text = run("explain")
    assert code == EXIT_OK
    assert "PatientName: replace (seed identifying keyword)" in text
    assert "PatientSex: keep" in text
    assert len(text.splitlines()) > 600


def test_generate_key_refuses_to_overwrite(tmp_path: Path, capsys):
    """A key file is created private and never overwritten."""
    path = tmp_path / "k"
    assert run("generate-key", str(path))[0] == EXIT_OK
    assert path.stat().st_mode & 0o077 == 0
    assert len(path.read_text().strip()) >= 32
    assert run("generate-key", str(path))[0] == EXIT_USAGE


def test_console_script_runs(tmp_path: Path):
    """The installed console script answers --version (the entry point is wired)."""
    script = Path(sys.executable).parent / "airflow-pseudo"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.startswith("airflow-pseudo ")
