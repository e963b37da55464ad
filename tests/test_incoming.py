"""Tests for finding settled incoming files and claiming them for one run."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from airflow_pseudo.incoming import (
    CLAIM_CHUNK,
    CLAIMS_FILE,
    adopt_staging,
    claim_files,
    claim_files_neutral,
    find_settled_files,
    read_run_file,
    staged_files,
    write_run_file,
)

NOW = 1_800_000_000.0


def _write(path: Path, data: bytes = b"DICM", *, age: float = 3600.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (NOW - age, NOW - age))
    return path


class TestFindSettledFiles:
    def test_lists_old_non_empty_files_sorted(self, tmp_path: Path):
        """Settled files at any depth are returned as sorted absolute paths."""
        b = _write(tmp_path / "b.dcm")
        a = _write(tmp_path / "study" / "a.dcm")
        assert find_settled_files(tmp_path, settle_seconds=60, now=NOW) == sorted([str(a), str(b)])

    def test_file_still_being_written_is_not_settled(self, tmp_path: Path):
        """A file modified within settle_seconds is left alone."""
        old = _write(tmp_path / "old.dcm")
        _write(tmp_path / "new.dcm", age=5)
        assert find_settled_files(tmp_path, settle_seconds=60, now=NOW) == [str(old)]

    def test_empty_files_are_not_settled(self, tmp_path: Path):
        """A zero-byte file (just created) is never reported."""
        _write(tmp_path / "empty.dcm", b"")
        assert find_settled_files(tmp_path, settle_seconds=0, now=NOW) == []

    def test_hidden_and_partial_files_are_ignored(self, tmp_path: Path):
        """Hidden files, hidden folders and *.part / *.tmp names are producer work in progress."""
        keep = _write(tmp_path / "x.dcm")
        _write(tmp_path / ".hidden.dcm")
        _write(tmp_path / ".staging" / "run" / "y.dcm")
        _write(tmp_path / "z.dcm.part")
        _write(tmp_path / "z.TMP")
        assert find_settled_files(tmp_path, settle_seconds=1, now=NOW) == [str(keep)]

    def test_pattern_filters(self, tmp_path: Path):
        """Only files matching the glob pattern are returned."""
        dcm = _write(tmp_path / "s" / "a.dcm")
        _write(tmp_path / "s" / "notes.txt")
        assert find_settled_files(tmp_path, "**/*.dcm", settle_seconds=1, now=NOW) == [str(dcm)]

    def test_min_files(self, tmp_path: Path):
        """Nothing is returned until min_files files are settled."""
        _write(tmp_path / "a.dcm")
        assert find_settled_files(tmp_path, settle_seconds=1, min_files=2, now=NOW) == []
        _write(tmp_path / "b.dcm")
        assert len(find_settled_files(tmp_path, settle_seconds=1, min_files=2, now=NOW)) == 2

    def test_marker_must_exist_and_is_not_reported(self, tmp_path: Path):
        """With a marker, files are reported once the marker exists, never the marker itself."""
        a = _write(tmp_path / "a.dcm")
        assert find_settled_files(tmp_path, settle_seconds=1, marker="_SUCCESS", now=NOW) == []
        _write(tmp_path / "_SUCCESS")
        assert find_settled_files(tmp_path, settle_seconds=1, marker="_SUCCESS", now=NOW) == [
            str(a)
        ]

    def test_missing_folder_is_an_error(self, tmp_path: Path):
        """A folder that does not exist is a configuration error, not an empty folder."""
        with pytest.raises(FileNotFoundError, match="does not exist"):
            find_settled_files(tmp_path / "nope", settle_seconds=0)
        (tmp_path / "file").write_bytes(b"x")
        with pytest.raises(NotADirectoryError):
            find_settled_files(tmp_path / "file", settle_seconds=0)

    def test_default_now_is_current_time(self, tmp_path: Path):
        """Without ``now`` the wall clock is used."""
        path = tmp_path / "fresh.dcm"
        path.write_bytes(b"x")
        assert find_settled_files(tmp_path, settle_seconds=3600) == []
        assert find_settled_files(tmp_path, settle_seconds=0) == [str(path)]


class TestClaimFiles:
    def test_moves_files_keeping_relative_paths(self, tmp_path: Path):
        """Claimed files move into staging under their path relative to the incoming root."""
        incoming = tmp_path / "incoming"
        files = [_write(incoming / "p1" / "a.dcm"), _write(incoming / "b.dcm")]
        staging = tmp_path / "staging" / "run1"
        claimed = claim_files(files, staging, incoming)
        assert claimed == [str(staging / "p1" / "a.dcm"), str(staging / "b.dcm")]
        assert all(Path(c).read_bytes() == b"DICM" for c in claimed)
        assert not any(f.exists() for f in files)

    def test_file_taken_by_another_run_is_skipped(self, tmp_path: Path):
        """A file another run already moved away is skipped, not an error."""
        incoming = tmp_path / "incoming"
        a, b = _write(incoming / "a.dcm"), _write(incoming / "b.dcm")
        first = claim_files([a], tmp_path / "run1", incoming)
        second = claim_files([a, b], tmp_path / "run2", incoming)
        assert first == [str(tmp_path / "run1" / "a.dcm")]
        assert second == [str(tmp_path / "run2" / "b.dcm")]

    def test_retry_returns_already_claimed_files(self, tmp_path: Path):
        """Claiming again into the same staging folder (a retry) returns what it already holds."""
        incoming = tmp_path / "incoming"
        a = _write(incoming / "a.dcm")
        staging = tmp_path / "run1"
        assert claim_files([a], staging, incoming) == claim_files([a], staging, incoming)

    def test_file_outside_root_is_refused(self, tmp_path: Path):
        """A path outside the incoming root is a programming error."""
        other = _write(tmp_path / "elsewhere" / "a.dcm")
        with pytest.raises(ValueError, match="is not in the subpath"):
            claim_files([other], tmp_path / "run", tmp_path / "incoming")

    def test_overlapping_runs_never_take_the_same_file(self, tmp_path: Path):
        """Two concurrent claims of the same files split them, with no file taken twice or lost."""
        incoming = tmp_path / "incoming"
        files = [_write(incoming / f"{i:03}.dcm") for i in range(200)]
        results: dict[str, list[str]] = {}
        barrier = threading.Barrier(2)

        def run(name: str) -> None:
            barrier.wait()
            results[name] = claim_files(files, tmp_path / name, incoming)

        threads = [threading.Thread(target=run, args=(n,)) for n in ("r1", "r2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        names = [Path(p).name for p in results["r1"] + results["r2"]]
        assert sorted(names) == sorted(f.name for f in files)


class TestClaimFilesNeutral:
    def test_claims_file_is_private_and_lists_only_this_runs_claims(self, tmp_path: Path):
        """claims.jsonl is 0600 in a 0700 folder, and names only the files this run holds."""
        incoming = tmp_path / "incoming"
        files = [_write(incoming / "Doe^Jane" / f"{i}.dcm") for i in range(4)]
        # Another run takes two of the listed files first.
        taken = claim_files_neutral(files[:2], tmp_path / "other", incoming)
        claimed = claim_files_neutral(files, tmp_path / "staging", incoming)
        assert len(taken) == len(claimed) == 2
        staging = tmp_path / "staging"
        assert stat.S_IMODE((staging / CLAIMS_FILE).stat().st_mode) == 0o600
        assert stat.S_IMODE(staging.stat().st_mode) == 0o700
        entries = [json.loads(x) for x in (staging / CLAIMS_FILE).read_text().splitlines()]
        assert sorted(e["original"] for e in entries) == ["Doe^Jane/2.dcm", "Doe^Jane/3.dcm"]
        assert sorted(staging / e["claimed"] for e in entries) == sorted(map(Path, claimed))

    def test_staged_files_is_what_the_folder_holds(self, tmp_path: Path):
        """staged_files lists the claimed files still in staging, in claim order."""
        incoming = tmp_path / "incoming"
        files = [_write(incoming / f"{i}.dcm") for i in range(3)]
        claimed = claim_files_neutral(files, tmp_path / "staging", incoming)
        assert staged_files(tmp_path / "staging") == claimed
        Path(claimed[1]).unlink()  # e.g. archived by publish
        assert staged_files(tmp_path / "staging") == [claimed[0], claimed[2]]
        assert staged_files(tmp_path / "missing") == []

    def test_new_names_never_reuse_a_compacted_one(self, tmp_path: Path):
        """After entries are dropped, new neutral names still never collide with held files."""
        incoming = tmp_path / "incoming"
        staging = tmp_path / "staging"
        first = claim_files_neutral(
            [_write(incoming / f"{i}.dcm") for i in range(3)], staging, incoming
        )
        Path(first[0]).unlink()
        staged_files(staging)
        second = claim_files_neutral([_write(incoming / "later.dcm", b"later")], staging, incoming)
        assert second[0] not in first
        assert [Path(p).read_bytes() for p in first[1:]] == [b"DICM", b"DICM"]

    def test_many_files_each_keep_their_own_original_name(self, tmp_path: Path):
        """Across journal chunks, every claimed file maps to its own original, in order."""
        incoming = tmp_path / "incoming"
        count = 2 * CLAIM_CHUNK + 3
        files = [_write(incoming / f"{i:05}.dcm", str(i).encode()) for i in range(count)]
        staging = tmp_path / "staging"
        claimed = claim_files_neutral(files, staging, incoming)
        entries = [json.loads(x) for x in (staging / CLAIMS_FILE).read_text().splitlines()]
        assert [staging / e["claimed"] for e in entries] == list(map(Path, claimed))
        for entry in entries:
            number = int(entry["original"].removesuffix(".dcm"))
            assert (staging / entry["claimed"]).read_bytes() == str(number).encode()

    def test_retry_after_a_crash_between_journal_and_renames(self, tmp_path: Path):
        """Entries written before a crash are reused by the retry: same names, nothing lost."""
        incoming = tmp_path / "incoming"
        files = [_write(incoming / f"{i}.dcm", str(i).encode()) for i in range(CLAIM_CHUNK + 5)]
        staging = tmp_path / "staging"
        first = claim_files_neutral(files, staging, incoming)
        # Undo the renames of the second chunk, as if the run died after journaling it.
        journal = (staging / CLAIMS_FILE).read_text()
        for claimed, original in zip(first[CLAIM_CHUNK:], files[CLAIM_CHUNK:], strict=True):
            os.rename(claimed, original)
        (staging / CLAIMS_FILE).write_text(journal)
        again = claim_files_neutral(files, staging, incoming)
        assert again == first
        assert not any(f.exists() for f in files)
        assert [Path(p).read_bytes() for p in again] == [str(i).encode() for i in range(len(files))]


class TestAdoptStaging:
    def test_adopted_files_keep_their_original_names_in_claims(self, tmp_path: Path):
        """A failed run's files move to the adopting run, which records where they came from."""
        incoming = tmp_path / "incoming"
        files = [_write(incoming / "pt" / f"{i}.dcm", f"data {i}".encode()) for i in range(3)]
        orphan = tmp_path / "staging" / "failed-run"
        claim_files_neutral(files, orphan, incoming)
        write_run_file(orphan, dag_id="d", run_id="failed-run")
        mine = tmp_path / "staging" / "new-run"
        adopted = adopt_staging(orphan, mine)
        assert len(adopted) == 3
        assert not orphan.exists()  # claims, run file and folder are gone
        entries = [json.loads(x) for x in (mine / CLAIMS_FILE).read_text().splitlines()]
        assert {e["adopted_from"] for e in entries} == {"failed-run"}
        for entry in entries:
            number = entry["original"].removeprefix("pt/").removesuffix(".dcm")
            assert (mine / entry["claimed"]).read_bytes() == f"data {number}".encode()

    def test_limit_leaves_the_rest_for_later(self, tmp_path: Path):
        """With a limit, the orphan keeps the rest (and its claims and run file)."""
        incoming = tmp_path / "incoming"
        orphan = tmp_path / "failed"
        claim_files_neutral([_write(incoming / f"{i}.dcm") for i in range(3)], orphan, incoming)
        write_run_file(orphan, dag_id="d", run_id="failed")
        assert len(adopt_staging(orphan, tmp_path / "mine", limit=2)) == 2
        assert len(staged_files(orphan)) == 1
        assert read_run_file(orphan) == {"dag_id": "d", "run_id": "failed"}
        assert len(staged_files(tmp_path / "mine")) == 2
