"""Tests for PseudonymiseOperator: inputs, per-file records and the failure policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_pseudo.operators.pseudonymise import PseudonymiseOperator, flatten_paths
from airflow_pseudo.testing import write_corpus


class RecordingTI:
    """Collects what a task pushes to XCom, standing in for the task instance in the context."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _bad_file(path: Path) -> Path:
    """A file named .dcm that is truncated DICOM: the core must fail it, not crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x40\x00" + b"1.2")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    return write_corpus(tmp_path / "in", patients=2, series_per_study=1, instances_per_series=2)


def _op(**kwargs: Any) -> PseudonymiseOperator:
    return PseudonymiseOperator(task_id="pseudonymise", **kwargs)


@pytest.mark.usefixtures("pseudo_conn")
class TestExecute:
    def test_folder_input(self, tmp_path: Path, corpus: list[Path]):
        """A folder is pseudonymised into output_dir; one ok record per file is returned."""
        out = tmp_path / "out"
        records = _op(input_path=str(tmp_path / "in"), output_dir=str(out)).execute({})  # type: ignore[arg-type]
        assert sorted(r["source"] for r in records) == sorted(str(p) for p in corpus)
        assert {r["status"] for r in records} == {"ok"}
        assert all(Path(r["output"]).is_file() for r in records)
        assert all(Path(r["output"]).is_relative_to(out) for r in records)
        json.dumps(records)  # JSON-native

    def test_files_input_from_xcom(self, tmp_path: Path, corpus: list[Path]):
        """A list of files (e.g. the sensor's XCom) is processed in order."""
        files = [str(p) for p in corpus[:2]]
        records = _op(
            files=files, input_root=str(tmp_path / "in"), output_dir=str(tmp_path / "out")
        ).execute({})  # type: ignore[arg-type]
        assert [r["source"] for r in records] == files

    def test_records_hold_no_key_and_no_phi(
        self, tmp_path: Path, corpus: list[Path], key_bytes: bytes
    ):
        """The XCom records never contain the key or a planted identifying value."""
        records = _op(input_path=str(tmp_path / "in"), output_dir=str(tmp_path / "out")).execute(
            {}  # type: ignore[arg-type]
        )
        text = json.dumps(records)
        assert key_bytes.decode() not in text
        import pydicom

        original = pydicom.dcmread(corpus[0])
        assert str(original.PatientName) not in text
        assert str(original.PatientID) not in text

    def test_default_output_dir_is_run_scoped(self, tmp_path: Path, corpus: list[Path]):
        """Without output_dir, outputs go to <input>-pseudonymised/<run_id> beside the input."""
        records = _op(input_path=str(tmp_path / "in")).execute({"run_id": "run_1"})  # type: ignore[arg-type]
        expected = tmp_path / "in-pseudonymised" / "run_1"
        assert all(Path(r["output"]).is_relative_to(expected) for r in records)

    def test_retry_is_idempotent(self, tmp_path: Path, corpus: list[Path]):
        """Running twice into the same output folder gives the same outputs."""
        op = _op(input_path=str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
        first = op.execute({})  # type: ignore[arg-type]
        second = op.execute({})  # type: ignore[arg-type]
        assert [r["output"] for r in first] == [r["output"] for r in second]
        assert {r["status"] for r in second} == {"ok"}

    def test_empty_file_list_skips(self, tmp_path: Path):
        """An empty batch ends the task as skipped."""
        with pytest.raises(AirflowSkipException):
            _op(files=[], output_dir=str(tmp_path / "out")).execute({})  # type: ignore[arg-type]

    def test_nested_file_lists_are_flattened(self):
        """Batches from a mapped upstream flatten into one list."""
        assert flatten_paths([["a", "b"], ["c"]]) == ["a", "b", "c"]
        assert flatten_paths("a") == ["a"]


@pytest.mark.usefixtures("pseudo_conn")
class TestFailurePolicy:
    def test_default_fails_after_processing_every_file(self, tmp_path: Path, corpus: list[Path]):
        """max_failed_files=0: all files are processed, then the task fails, without retrying."""
        bad = _bad_file(tmp_path / "in" / "bad.dcm")
        ti = RecordingTI()
        op = _op(
            input_path=str(tmp_path / "in"),
            output_dir=str(tmp_path / "out"),
            quarantine_dir=str(tmp_path / "q"),
        )
        with pytest.raises(AirflowFailException, match="1 of 5 file"):
            op.execute({"ti": ti})  # type: ignore[arg-type,typeddict-item]
        records = ti.pushed["return_value"]
        assert len(records) == 5
        (failed,) = [r for r in records if r["status"] == "failed"]
        assert failed["source"] == str(bad)
        assert failed["reason"]
        assert Path(failed["quarantine"]).is_file()
        assert Path(failed["quarantine"]).is_relative_to(tmp_path / "q")
        assert sum(r["status"] == "ok" for r in records) == 4

    def test_tolerated_failures_succeed(self, tmp_path: Path, corpus: list[Path]):
        """Failures up to max_failed_files leave the task successful (templated as a string too)."""
        _bad_file(tmp_path / "in" / "bad.dcm")
        records = _op(
            input_path=str(tmp_path / "in"),
            output_dir=str(tmp_path / "out"),
            max_failed_files="1",
        ).execute({})  # type: ignore[arg-type]
        assert [r["status"] for r in records].count("failed") == 1

    def test_non_dicom_is_skipped_not_failed(self, tmp_path: Path, corpus: list[Path]):
        """A file that is not DICOM at all is skipped and does not count as a failure."""
        (tmp_path / "in" / "notes.txt").write_text("hello")
        records = _op(input_path=str(tmp_path / "in"), output_dir=str(tmp_path / "out")).execute(
            {}  # type: ignore[arg-type]
        )
        assert [r["status"] for r in records].count("skipped") == 1


@pytest.mark.usefixtures("pseudo_conn")
def test_control_characters_in_names_are_escaped_in_logs_and_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
):
    """A newline or an ANSI escape in a file or folder name never reaches a log line raw."""
    forged = "evil\n\x1b[31mFORGED line.dcm"
    folder = tmp_path / "in\x1b[2Jcoming"
    write_corpus(folder, patients=1, series_per_study=1, instances_per_series=1)
    bad = _bad_file(folder / forged)
    op = _op(input_path=str(folder), output_dir=str(tmp_path / "out\nput"))
    with caplog.at_level("DEBUG"), pytest.raises(AirflowFailException) as failure:
        op.execute({"ti": RecordingTI()})  # type: ignore[arg-type,typeddict-item]

    captured = capfd.readouterr()
    logged = "\n".join([caplog.text, captured.out, captured.err])
    assert "Failed: " in logged  # the failed file was logged...
    assert "evil\\n\\x1b[31mFORGED line.dcm" in logged  # ...under its escaped name
    assert "in\\x1b[2Jcoming" in logged
    for text in (logged, str(failure.value)):
        assert "\x1b" not in text
        assert not any(line.startswith("[31mFORGED") for line in text.splitlines())
    assert "out\\nput" in str(failure.value)
    assert "\n" not in str(failure.value)
    assert bad.exists()  # the input itself is left alone


class TestConfigurationErrors:
    """Configuration errors fail the task without retrying."""

    def test_missing_connection(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.delenv("AIRFLOW_CONN_PSEUDO_DEFAULT", raising=False)
        with pytest.raises(AirflowFailException, match="AIRFLOW_CONN_PSEUDO_DEFAULT"):
            _op(input_path=str(tmp_path)).execute({})  # type: ignore[arg-type]

    def test_missing_key(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setenv("AIRFLOW_CONN_PSEUDO_DEFAULT", '{"conn_type": "pseudo"}')
        monkeypatch.delenv("AIRFLOW_PSEUDO_KEY", raising=False)
        with pytest.raises(AirflowFailException, match="key"):
            _op(input_path=str(tmp_path)).execute({})  # type: ignore[arg-type]

    @pytest.mark.usefixtures("pseudo_conn")
    def test_bad_strategy(self, tmp_path: Path):
        with pytest.raises(AirflowFailException, match="strategy"):
            _op(input_path=str(tmp_path), strategy="rot13").execute({})  # type: ignore[arg-type]

    @pytest.mark.usefixtures("pseudo_conn")
    def test_bad_profile_file_fails_without_retry(self, tmp_path: Path, corpus: list[Path]):
        """A profile file with a mistake fails the task before any file, naming line and key."""
        profile = tmp_path / "project.yaml"
        profile.write_text("overrides:\n  PatientNme: remove\n", encoding="utf-8")
        output = tmp_path / "out"
        op = _op(input_path=str(tmp_path / "in"), output_dir=str(output), profile=str(profile))
        with pytest.raises(AirflowFailException, match=r"project\.yaml:2: PatientNme"):
            op.execute({})  # type: ignore[arg-type]
        assert not output.exists()

    @pytest.mark.usefixtures("pseudo_conn")
    def test_research_profile_is_recorded(self, tmp_path: Path, corpus: list[Path]):
        """Records name the profile, its digest and the method codes written."""
        op = _op(input_path=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
                 profile="research")  # fmt: skip
        records = op.execute({})  # type: ignore[arg-type]
        assert {r["profile"] for r in records} == {"research"}
        assert all(len(r["profile_digest"]) == 16 for r in records)
        assert records[0]["method_codes"] == ["113100", "113105", "113107", "113108", "113111"]

    @pytest.mark.usefixtures("pseudo_conn")
    def test_output_inside_input(self, tmp_path: Path, corpus: list[Path]):
        with pytest.raises(AirflowFailException):
            _op(input_path=str(tmp_path / "in"), output_dir=str(tmp_path / "in" / "out")).execute(
                {}  # type: ignore[arg-type]
            )

    def test_no_input(self):
        with pytest.raises(AirflowFailException, match="input_path"):
            _op().execute({})  # type: ignore[arg-type]

    def test_bad_policy_value(self, tmp_path: Path):
        with pytest.raises(AirflowFailException, match="integers"):
            _op(input_path=str(tmp_path), max_failed_files="many").execute({})  # type: ignore[arg-type]


class TestDefinition:
    def test_init_stores_arguments_unchanged(self):
        """__init__ only stores its arguments (templated values are converted in execute)."""
        op = _op(files="{{ ti.xcom_pull('wait') }}", workers="{{ params.workers }}")
        assert op.files == "{{ ti.xcom_pull('wait') }}"
        assert op.workers == "{{ params.workers }}"

    def test_template_fields(self):
        for name in ("input_path", "files", "output_dir", "quarantine_dir", "max_failed_files"):
            assert name in PseudonymiseOperator.template_fields


def _execute_in_daemon(op: PseudonymiseOperator, queue: Any) -> None:
    import multiprocessing

    from billiard.process import AuthenticationString  # what a Celery pool process holds

    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    config["authkey"] = AuthenticationString(bytes(config["authkey"]))
    try:
        records = op.execute({})  # type: ignore[arg-type]
        queue.put(("ok", [r["status"] for r in records]))
    except BaseException as exc:
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.usefixtures("pseudo_conn")
def test_process_pool_inside_a_daemonic_process(tmp_path: Path, corpus: list[Path]):
    """Regression: under Celery the task process inherits a daemon flag and a billiard authkey
    from the prefork pool; workers=2 failed with "daemonic processes are not allowed to have
    children" and "Pickling an AuthenticationString object is disallowed"."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    op = _op(input_path=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), workers=2)
    process = context.Process(target=_execute_in_daemon, args=(op, queue), daemon=True)
    process.start()
    outcome = queue.get(timeout=120)
    process.join(timeout=30)
    assert outcome == ("ok", ["ok"] * len(corpus))


def test_io_failures_are_transient_and_bad_data_is_not():
    """Only per-file failures caused by I/O errors leave the task's retries to apply."""
    from airflow_pseudo.operators.pseudonymise import is_transient_failure

    def failed(reason: str) -> dict[str, str]:
        return {"status": "failed", "reason": reason}

    assert is_transient_failure(failed("cannot read or write the file (Input/output error)"))
    assert is_transient_failure(failed("cannot write the output (No space left on device)"))
    assert not is_transient_failure(failed("truncated DICOM (unexpected end of file)"))
    assert not is_transient_failure(failed("cannot read or write the file (Permission denied)"))
    assert not is_transient_failure({"status": "ok", "reason": "Input/output error"})
