"""Tests for writing outputs: atomic writes and safe output names."""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable
from pathlib import Path, PurePath
from unittest import mock

import pydicom
import pytest

from airflow_pseudo.pseudonymisation.errors import ConfigurationError, UnsupportedInputError
from airflow_pseudo.pseudonymisation.io import outputs as files
from airflow_pseudo.pseudonymisation.io.durability import sync_filesystem
from airflow_pseudo.pseudonymisation.io.outputs import (
    check_not_inside,
    safe_join,
    stage,
    uid_relpath,
    write_atomically,
)
from airflow_pseudo.testing import make_instance


@pytest.fixture(params=["unnamed", "named"])
def staging(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways an output is staged: unnamed (Linux's O_TMPFILE), or under a temporary name."""
    if request.param == "named":
        monkeypatch.setattr(files, "_LINKAT", None)
    elif files._LINKAT is None:
        pytest.skip("no unnamed files on this system")
    return str(request.param)


@pytest.mark.usefixtures("staging")
class TestWrite:
    def test_atomic_write_leaves_no_temp_files(self, tmp_path: Path):
        """A successful write leaves exactly the target, readable, and no temporary file."""
        target = tmp_path / "out" / "x.dcm"
        write_atomically(make_instance("ct"), target)
        assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]
        assert pydicom.dcmread(target).SOPInstanceUID

    def test_crash_during_write_leaves_nothing(self, tmp_path: Path):
        """If writing fails midway, neither the target nor a temporary file is left."""
        target = tmp_path / "out" / "x.dcm"

        def broken_write(stream, *args, **kwargs):  # type: ignore[no-untyped-def]
            stream.write(b"\x00" * 200)
            raise RuntimeError("disk full")

        with (
            mock.patch("airflow_pseudo.pseudonymisation.io.outputs.pydicom.dcmwrite", broken_write),
            pytest.raises(RuntimeError),
        ):
            write_atomically(make_instance("ct"), target)
        assert list(target.parent.iterdir()) == []

    def test_existing_different_output_not_replaced(self, tmp_path: Path):
        """An existing output with other content is never silently overwritten."""
        target = tmp_path / "x.dcm"
        write_atomically(make_instance("ct", instance=1), target)
        before = target.read_bytes()
        with pytest.raises(FileExistsError):
            write_atomically(make_instance("ct", instance=2), target)
        assert target.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["x.dcm"]

    def test_identical_rewrite_is_idempotent(self, tmp_path: Path):
        """Writing the same content again is accepted (a rerun after a crash)."""
        target = tmp_path / "x.dcm"
        ds = make_instance("ct")
        write_atomically(ds, target)
        write_atomically(ds, target)
        assert [p.name for p in tmp_path.iterdir()] == ["x.dcm"]

    def test_a_staged_file_is_invisible_until_committed(self, tmp_path: Path, staging: str):
        """Staging writes no visible name (or only a temporary one); commit makes the target."""
        target = tmp_path / "out" / "x.dcm"
        staged = stage([b"\x00" * 128, b"DICM", b"rest"], target, durable=False)
        assert not target.exists()
        if staging == "named":
            assert staged.temporary is not None
            assert staged.temporary.parent == target.parent
            assert staged.temporary.name.startswith(".tmp-")
        else:
            assert staged.temporary is None and staged.descriptor is not None
            assert list(target.parent.iterdir()) == []
        sync_filesystem(target.parent)
        staged.commit()
        assert target.read_bytes() == b"\x00" * 128 + b"DICMrest"
        assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]
        assert target.stat().st_mode & 0o077 == 0  # readable by its owner only
        assert staged.descriptor is None  # closed

    def test_a_discarded_staged_file_leaves_nothing(self, tmp_path: Path):
        staged = stage([b"data"], tmp_path / "x.dcm", durable=True)
        staged.discard()
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("piece_size", [4, 1024], ids=["small-joined", "large-writev"])
    def test_many_chunks_are_all_written_in_order(self, tmp_path: Path, piece_size: int):
        """More chunks than one writev call takes (IOV_MAX), of mixed types, small or large."""
        chunks: list[bytes | memoryview] = []
        for index in range(5000):
            piece = index.to_bytes(4, "little") * (piece_size // 4) * (index % 3)
            chunks.append(memoryview(piece) if index % 2 else piece)
        assert (sum(map(len, chunks)) > 1 << 20) == (piece_size > 4)
        target = tmp_path / "many.bin"
        staged = stage(chunks, target, durable=True)
        staged.commit()
        assert target.read_bytes() == b"".join(bytes(chunk) for chunk in chunks)


def test_a_durable_output_leaves_the_page_cache_when_committed(
    tmp_path: Path, pages_in_cache: Callable[[Path], int]
):
    """Written once and not read back here: its pages go back to the kernel for the next files."""
    data = [b"\x00" * 128, b"DICM", b"x" * 64 * 1024]
    kept, released = tmp_path / "kept.dcm", tmp_path / "released.dcm"
    stage(data, kept, durable=True).commit()
    stage(data, released, durable=True).commit(release_pages=True)
    assert pages_in_cache(kept) > 0
    assert pages_in_cache(released) == 0
    assert released.read_bytes() == b"".join(data)  # read back from the disk


def test_write_atomically_releases_the_pages_of_what_it_wrote(
    tmp_path: Path, pages_in_cache: Callable[[Path], int]
):
    target = tmp_path / "ct.dcm"
    write_atomically(make_instance("ct"), target)
    assert pages_in_cache(target) == 0
    assert pydicom.dcmread(target).Modality == "CT"


def test_an_unnamed_file_that_cannot_be_linked_is_named_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Where linking through /proc fails (a hidden /proc, say), no output is lost."""
    if files._LINKAT is None:
        pytest.skip("no unnamed files on this system")
    monkeypatch.setattr(files, "_UNNAMED_LINKS_WORK", True)

    def refuse(descriptor: int, target: Path) -> None:
        raise OSError(errno.ENOENT, "no /proc here")

    monkeypatch.setattr(files, "_link_descriptor", refuse)
    data = [b"\x00" * 128, b"DICM", b"x" * 200_000]
    staged = stage(data, tmp_path / "x.dcm", durable=False)
    assert staged.descriptor is not None
    staged.commit()
    assert (tmp_path / "x.dcm").read_bytes() == b"".join(data)
    assert [p.name for p in tmp_path.iterdir()] == ["x.dcm"]
    later = stage([b"later"], tmp_path / "y.dcm", durable=False)  # named from now on
    assert later.descriptor is None and later.temporary is not None
    later.commit()
    assert (tmp_path / "y.dcm").read_bytes() == b"later"


def test_a_temporary_name_already_taken_is_skipped_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A leftover, or a link planted at the next temporary name, is neither opened nor hurt."""
    monkeypatch.setattr(files, "_LINKAT", None)  # named temporaries, as without O_TMPFILE
    monkeypatch.setattr(files, "_serial", itertools.count(5))
    prefix = files._temporary_prefix()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / f"{prefix}5.dcm").symlink_to(victim)
    (tmp_path / f"{prefix}6.dcm").write_bytes(b"leftover")
    staged = stage([b"data"], tmp_path / "x.dcm", durable=False)
    assert staged.temporary is not None
    assert staged.temporary.name == f"{prefix}7.dcm"
    assert victim.read_bytes() == b"keep"
    assert (tmp_path / f"{prefix}6.dcm").read_bytes() == b"leftover"
    assert staged.temporary.stat().st_mode & 0o077 == 0  # readable by its owner only


class TestNames:
    def test_uid_relpath(self):
        """Outputs are named <study>/<series>/<instance>.dcm from the dataset's UIDs."""
        ds = make_instance("ct")
        assert uid_relpath(ds) == PurePath(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm"
        )

    def test_no_sop_instance_refused(self):
        """A dataset without SOPInstanceUID cannot be named and says why."""
        ds = make_instance("ct")
        del ds.SOPInstanceUID
        with pytest.raises(UnsupportedInputError, match="SOPInstanceUID"):
            uid_relpath(ds)

    @pytest.mark.parametrize("relpath", ["../escape.dcm", "/etc/passwd", "a/../../b"])
    def test_safe_join_refuses_escape(self, tmp_path: Path, relpath: str):
        """A name that would leave the output folder is refused."""
        with pytest.raises(UnsupportedInputError):
            safe_join(tmp_path, relpath)

    def test_check_not_inside(self, tmp_path: Path):
        """An output folder inside (or equal to) the input folder is refused."""
        with pytest.raises(ConfigurationError, match="inside the input"):
            check_not_inside(tmp_path / "in" / "out", tmp_path / "in", "output")
        with pytest.raises(ConfigurationError):
            check_not_inside(tmp_path / "in", tmp_path / "in", "output")
        check_not_inside(tmp_path / "in-pseudonymised", tmp_path / "in", "output")
