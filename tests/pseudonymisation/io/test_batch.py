"""Tests for batches: one record per input, inputs untouched, quarantine, parallel workers."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from airflow_pseudo.pseudonymisation import (
    ConfigurationError,
    FileResult,
    Settings,
    pseudonymise_directory,
    validate_results,
)
from airflow_pseudo.pseudonymisation.io.batch import (
    default_output_dir,
    default_quarantine_dir,
    pseudonymise_files,
)
from airflow_pseudo.testing import FakePatient, make_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

Digest = Callable[[Path], dict[str, str]]
ALL_PLANTED = [v for n in (1, 2, 3) for v in FakePatient.for_number(n).planted_values()]


def relative_outputs(results: list[FileResult], root: Path) -> list[str | None]:
    return [str(Path(r.output).relative_to(root)) if r.output else None for r in results]


def add_problem_files(folder: Path) -> dict[str, str]:
    """Add a text file, a disguised DICOM, a burned-in image and a truncated DICOM."""
    (folder / "notes.txt").write_text("Patient Testperson^Alice MRN000001\n")
    (folder / "looks-like.dcm").write_text("not really DICOM, but named so\n" * 10)
    disguised = folder / "IMG0001"
    pydicom.dcmwrite(disguised, make_instance("ct", patient=1, series=9), enforce_file_format=True)
    burned = make_instance("ct", patient=1, series=8)
    burned.BurnedInAnnotation = "YES"
    pydicom.dcmwrite(folder / "burned.dcm", burned, enforce_file_format=True)
    whole = (folder / "IMG0001").read_bytes()
    (folder / "truncated.dcm").write_bytes(whole[: len(whole) // 3])
    return {
        "notes.txt": "skipped",
        "looks-like.dcm": "failed",
        "IMG0001": "ok",
        "burned.dcm": "failed",
        "truncated.dcm": "failed",
    }


class TestDirectory:
    def test_one_ok_record_per_input_in_sorted_order(self, corpus: Path, settings: Settings):
        """Every input gets exactly one JSON-serialisable record, in sorted path order."""
        results = pseudonymise_directory(corpus, settings=settings)
        inputs = sorted(str(p) for p in corpus.rglob("*") if p.is_file())
        assert [r.source for r in results] == inputs
        assert {r.status for r in results} == {"ok"}
        json.dumps([r.to_dict() for r in results])
        assert all(Path(r.output).is_file() for r in results if r.output)

    def test_inputs_unchanged(self, corpus: Path, settings: Settings, tree_digest: Digest):
        """Every input file is byte-identical after a run, and nothing is added to the input."""
        add_problem_files(corpus)
        before = tree_digest(corpus)
        pseudonymise_directory(corpus, settings=settings)
        assert tree_digest(corpus) == before

    def test_default_output_is_a_sibling(self, corpus: Path, settings: Settings):
        """Without an output folder, outputs go to <input>-pseudonymised beside the input."""
        results = pseudonymise_directory(corpus, settings=settings)
        expected = default_output_dir(corpus)
        assert expected == corpus.parent / "in-pseudonymised"
        assert all(expected in Path(r.output).parents for r in results if r.output)

    def test_output_inside_input_refused(
        self, corpus: Path, settings: Settings, tree_digest: Digest
    ):
        """An output folder inside the input folder is refused before anything is written."""
        before = tree_digest(corpus)
        with pytest.raises(ConfigurationError, match="inside the input"):
            pseudonymise_directory(corpus, corpus / "out", settings=settings)
        with pytest.raises(ConfigurationError):
            pseudonymise_directory(corpus, corpus, settings=settings)
        assert tree_digest(corpus) == before

    def test_output_names_carry_no_phi(self, corpus: Path, settings: Settings, tmp_path: Path):
        """Output paths are pseudonymous UIDs: no planted value and no original UID in them."""
        out = tmp_path / "out"
        results = pseudonymise_directory(corpus, out, settings=settings)
        originals = {
            str(pydicom.dcmread(r.source, stop_before_pixels=True)[k].value)
            for r in results
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        }
        for name in relative_outputs(results, out):
            assert name is not None
            study, _series, instance = Path(name).parts
            assert instance.endswith(".dcm") and study.startswith("2.25.")
            assert not any(v.casefold() in name.casefold() for v in ALL_PLANTED)
            assert not any(uid in name for uid in originals)

    def test_no_temporary_files_left(self, corpus: Path, settings: Settings, tmp_path: Path):
        """After a run the output folder holds only .dcm outputs, no temporary files."""
        out = tmp_path / "out"
        pseudonymise_directory(corpus, out, settings=settings)
        names = [p.name for p in out.rglob("*") if p.is_file()]
        assert names and all(n.endswith(".dcm") and not n.startswith(".tmp") for n in names)

    def test_mirror_layout(self, corpus: Path, settings: Settings, tmp_path: Path):
        """The mirror layout keeps the inputs' relative paths."""
        import dataclasses

        mirror = dataclasses.replace(settings, output_layout="mirror")
        out = tmp_path / "out"
        results = pseudonymise_directory(corpus, out, settings=mirror)
        assert relative_outputs(results, out) == [
            str(Path(r.source).relative_to(corpus)) for r in results
        ]

    def test_missing_input_folder(self, tmp_path: Path, settings: Settings):
        """A missing input folder is a FileNotFoundError."""
        with pytest.raises(FileNotFoundError):
            pseudonymise_directory(tmp_path / "absent", settings=settings)


class TestFailures:
    def test_statuses_and_quarantine(
        self, corpus: Path, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ):
        """Non-DICOM is skipped, DICOM found by content; failures quarantined with a reason."""
        expected = add_problem_files(corpus)
        caplog.set_level(logging.DEBUG)
        out = tmp_path / "out"
        results = pseudonymise_directory(corpus, out, settings=settings)
        by_name = {Path(r.source).name: r for r in results}
        assert {name: by_name[name].status for name in expected} == expected
        assert "BurnedInAnnotation" in (by_name["burned.dcm"].reason or "")
        quarantine = default_quarantine_dir(out)
        for name, status in expected.items():
            record = by_name[name]
            if status != "failed":
                assert record.quarantine is None
                continue
            assert record.reason
            assert record.quarantine and Path(record.quarantine).parent == quarantine
            copied = Path(record.quarantine)
            assert copied.read_bytes() == (corpus / name).read_bytes()
            beside = json.loads(copied.with_suffix(".json").read_text())
            assert beside["reason"] == record.reason
            assert name not in copied.name
        texts = [r.reason or "" for r in results] + [caplog.text]
        texts += [p.read_text() for p in quarantine.glob("*.json")]
        for text in texts:
            for value in ALL_PLANTED:
                assert value.casefold() not in text.casefold(), value

    def test_duplicate_sop_instance_not_overwritten(self, tmp_path: Path, settings: Settings):
        """Two different files with one SOPInstanceUID: the second fails, the first is kept."""
        folder = tmp_path / "in"
        folder.mkdir()
        first = make_instance("ct")
        second = make_instance("ct")
        second.ImageComments = "different content"
        pydicom.dcmwrite(folder / "a.dcm", first, enforce_file_format=True)
        pydicom.dcmwrite(folder / "b.dcm", second, enforce_file_format=True)
        results = pseudonymise_directory(folder, tmp_path / "out", settings=settings)
        assert [r.status for r in results] == ["ok", "failed"]
        assert "duplicate" in (results[1].reason or "")

    def test_unreadable_file_does_not_stop_others(self, corpus: Path, settings: Settings):
        """A file that cannot be read fails alone; every other file is still processed."""
        bad = corpus / "0-unreadable.dcm"
        shutil.copyfile(next(corpus.glob("*.dcm")), bad)
        bad.chmod(0)
        try:
            if os.access(bad, os.R_OK):
                pytest.skip("running as a user who can read anything")
            results = pseudonymise_directory(corpus, settings=settings)
        finally:
            bad.chmod(0o644)
        assert results[0].status == "failed" and "cannot read" in (results[0].reason or "")
        assert {r.status for r in results[1:]} == {"ok"}


class TestWorkers:
    def test_two_workers_same_as_one(self, corpus: Path, settings: Settings, tmp_path: Path):
        """workers=2 (spawned processes) gives identical records and identical output bytes."""
        add_problem_files(corpus)
        out1, out2 = tmp_path / "one", tmp_path / "two"
        one = pseudonymise_directory(
            corpus, out1, settings=settings, quarantine_dir=tmp_path / "q1"
        )
        two = pseudonymise_directory(
            corpus, out2, settings=settings, workers=2, quarantine_dir=tmp_path / "q2"
        )

        def comparable(results: list[FileResult], root: Path) -> list[tuple[object, ...]]:
            return [
                (r.source, r.status, r.reason, r.changes, rel)
                for r, rel in zip(results, relative_outputs(results, root), strict=True)
            ]

        assert comparable(one, out1) == comparable(two, out2)
        files1 = sorted(p.relative_to(out1) for p in out1.rglob("*.dcm"))
        assert files1 == sorted(p.relative_to(out2) for p in out2.rglob("*.dcm"))
        for rel in files1:
            assert (out1 / rel).read_bytes() == (out2 / rel).read_bytes()

    @pytest.mark.parametrize(
        ("engine", "workers"), [("auto", 1), ("reference", 1), ("auto", 2), ("reference", 2)]
    )
    def test_each_record_carries_the_time_spent_on_its_file(
        self, corpus: Path, settings: Settings, tmp_path: Path, engine: str, workers: int
    ):
        """Every record, ok or failed, in either engine and in workers, holds its seconds."""
        add_problem_files(corpus)
        chosen = dataclasses.replace(settings, engine=engine)
        results = pseudonymise_directory(corpus, tmp_path / "out", settings=chosen, workers=workers)
        assert {r.engine for r in results if r.status == "ok"} == {
            "fast" if engine == "auto" else "reference"
        }
        assert {r.status for r in results} == {"ok", "skipped", "failed"}
        for result in results:
            assert isinstance(result.seconds, float)
            assert 0 <= result.seconds < 60
            assert result.seconds == round(result.seconds, 3)  # to the millisecond
        # Parsing and writing a file takes time: not every record can round to zero.
        assert any(r.seconds for r in results if r.status == "ok")
        assert json.loads(json.dumps(results[0].to_dict()))["seconds"] == results[0].seconds

    @pytest.mark.parametrize("durability", ["batch", "file", "none"])
    def test_durability_modes_write_the_same_outputs(
        self, corpus: Path, settings: Settings, tmp_path: Path, durability: str
    ):
        """How outputs reach the disk never changes what they are."""
        expected = pseudonymise_directory(corpus, tmp_path / "reference", settings=settings)
        chosen = dataclasses.replace(settings, durability=durability)
        results = pseudonymise_directory(corpus, tmp_path / durability, settings=chosen)
        assert relative_outputs(results, tmp_path / durability) == relative_outputs(
            expected, tmp_path / "reference"
        )
        for ours, theirs in zip(results, expected, strict=True):
            assert Path(str(ours.output)).read_bytes() == Path(str(theirs.output)).read_bytes()

    @pytest.mark.parametrize(("durability", "workers"), [("batch", 1), ("batch", 2), ("file", 1)])
    def test_durable_outputs_leave_the_page_cache(
        self,
        corpus: Path,
        settings: Settings,
        tmp_path: Path,
        pages_in_cache: Callable[[Path], int],
        durability: str,
        workers: int,
    ):
        """Once synced and named, an output's pages are released, so the cache does not fill."""
        chosen = dataclasses.replace(settings, durability=durability)
        results = pseudonymise_directory(corpus, tmp_path / "out", settings=chosen, workers=workers)
        outputs = [Path(str(r.output)) for r in results if r.status == "ok"]
        assert outputs
        assert [pages_in_cache(output) for output in outputs] == [0] * len(outputs)

    def test_batch_durability_names_only_synced_outputs(
        self, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ):
        """Every output is linked only after a sync that started once it was fully written."""
        from airflow_pseudo.pseudonymisation.io import batch, durability
        from airflow_pseudo.pseudonymisation.io import outputs as files
        from airflow_pseudo.testing import write_ct_copies

        sources = write_ct_copies(tmp_path / "in", batch.CHUNK_SIZE * 2 + 3)
        written: list[files.StagedFile] = []
        covered = [0]  # outputs written before the latest completed sync started
        committed: list[bool] = []
        real_stage, real_sync, real_commit = batch.stage, durability.sync_filesystem, None

        def recording_stage(*args: Any, **kwargs: Any) -> files.StagedFile:
            staged = real_stage(*args, **kwargs)
            written.append(staged)
            return staged

        def recording_sync(folder: Path) -> None:
            before = len(written)
            real_sync(folder)
            covered[0] = max(covered[0], before)

        def checked_commit(staged: files.StagedFile, **kwargs: Any) -> None:
            committed.append(any(w is staged for w in written[: covered[0]]))
            real_commit(staged, **kwargs)

        real_commit = files.StagedFile.commit
        monkeypatch.setattr(batch, "stage", recording_stage)
        monkeypatch.setattr(durability, "sync_filesystem", recording_sync)
        monkeypatch.setattr(files.StagedFile, "commit", checked_commit)
        results = batch.pseudonymise_files(sources, tmp_path / "out", settings=settings)
        assert [r.status for r in results] == ["ok"] * len(sources)
        assert committed == [True] * len(sources)

    def test_unknown_durability_is_a_configuration_error(self, corpus: Path, settings: Settings):
        with pytest.raises(ConfigurationError, match="durability"):
            pseudonymise_directory(corpus, settings=dataclasses.replace(settings, durability="x"))

    def test_invalid_worker_count(self, corpus: Path, settings: Settings):
        """workers below 1 is refused."""
        with pytest.raises(ValueError, match="workers"):
            pseudonymise_directory(corpus, settings=settings, workers=0)


class TestValidateResults:
    def test_real_outputs_pass(self, corpus: Path, settings: Settings):
        """Every ok output of a run passes validation against its original."""
        results = pseudonymise_directory(corpus, settings=settings)
        verdicts = validate_results([r.to_dict() for r in results], settings=settings)
        assert [v.status for v in verdicts] == ["ok"] * len(results)

    def test_failed_output_quarantined(self, corpus: Path, settings: Settings, tmp_path: Path):
        """An output that fails validation is moved to quarantine with its problems."""
        out = tmp_path / "out"
        results = pseudonymise_directory(corpus, out, settings=settings)
        target = Path(results[0].output or "")
        ds = pydicom.dcmread(target)
        ds.PatientName = pydicom.dcmread(results[0].source).PatientName
        ds.save_as(target)
        verdicts = validate_results(results, settings=settings, quarantine_dir=tmp_path / "q")
        assert verdicts[0].status == "failed"
        assert any("PatientName" in p for p in verdicts[0].problems)
        assert not target.exists() and verdicts[0].quarantine
        assert {v.status for v in verdicts[1:]} == {"ok"}


class TestPydicomTestFiles:
    def test_every_bundled_file(self, pydicom_test_files: Path, tmp_path: Path, settings: Settings):
        """Each pydicom test file gets one record, nothing raises, every ok output validates.

        Secondary captures and ultrasound are allowed here (the pixel risk gate would refuse
        them), so that their compressed frames go through segment stripping and validation.
        """
        inputs = sorted(str(p) for p in pydicom_test_files.rglob("*") if p.is_file())
        settings = dataclasses.replace(settings, allow_burned_in=True)
        results = pseudonymise_directory(pydicom_test_files, tmp_path / "out", settings=settings)
        assert [r.source for r in results] == inputs
        statuses = [r.status for r in results]
        assert statuses.count("ok") >= 100, statuses
        for record in results:
            if record.status == "failed":
                assert record.reason and record.quarantine
        verdicts = validate_results(results, settings=settings)
        failed = [(Path(v.source).name, v.problems) for v in verdicts if v.status == "failed"]
        assert failed == []
        assert sum(v.status == "ok" for v in verdicts) == statuses.count("ok")


def test_a_batch_leaves_no_descriptor_open(tmp_path: Path, settings: Settings):
    """The input folders' descriptors kept open during a run are closed at its end."""
    for number in range(3):
        path = tmp_path / "in" / f"sub{number}" / "a.dcm"
        path.parent.mkdir(parents=True)
        pydicom.dcmwrite(path, make_instance("ct", series=number + 1), enforce_file_format=True)
    before = len(os.listdir("/proc/self/fd"))
    pseudonymise_directory(tmp_path / "in", tmp_path / "out", settings=settings)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_problem_repeated_across_a_chunk_is_logged_once_without_values(
    tmp_path: Path, settings: Settings, caplog: pytest.LogCaptureFixture
):
    """pydicom's warnings are gathered per chunk: a series that repeats an invalid value gives
    one line, and no line holds the value."""
    import warnings

    (tmp_path / "in").mkdir()
    invalid = [f"1.2.03.42424{i}" for i in range(3)]
    for i, uid in enumerate(invalid):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            instance = make_instance("ct", patient=1)
            instance.SOPInstanceUID = uid
            instance.file_meta.MediaStorageSOPInstanceUID = uid
            pydicom.dcmwrite(tmp_path / "in" / f"{i}.dcm", instance, enforce_file_format=True)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = pseudonymise_files(
            sorted((tmp_path / "in").iterdir()),
            tmp_path / "out",
            settings=dataclasses.replace(settings, engine="reference"),  # pydicom reads them
        )
    assert [r.status for r in results] == ["ok"] * 3
    texts = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not any(uid in text for uid in invalid for text in texts), texts
    problems = [t for t in texts if t.startswith("pydicom: ")]
    assert len(problems) == len(set(problems)) >= 1, texts
