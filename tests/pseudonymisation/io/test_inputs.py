"""Tests for reading inputs: recognising DICOM by content, listing every entry, opening without
following links, reading within bounds."""

from __future__ import annotations

import io
import os
import socket
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from airflow_pseudo.pseudonymisation.errors import UnsupportedInputError
from airflow_pseudo.pseudonymisation.io.inputs import (
    InputFolder,
    InputLimits,
    NotRegularFileError,
    ReadAhead,
    file_view,
    iter_files,
    parse_dataset,
    prefetch,
    read_dataset,
    read_input,
    sniff_dicom,
)
from airflow_pseudo.testing import make_instance


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    """A CT instance written as a DICOM file without a .dcm suffix."""
    path = tmp_path / "IMG0001"
    pydicom.dcmwrite(path, make_instance("ct"), enforce_file_format=True)
    return path


class TestSniff:
    def test_dicom_without_extension_recognised(self, ct_file: Path):
        """A file with the DICM prefix is DICOM whatever its name."""
        assert sniff_dicom(ct_file)

    def test_bare_dataset_recognised(self, tmp_path: Path):
        """A dataset without preamble (like rtstruct.dcm) is recognised by its first group."""
        path = tmp_path / "bare"
        ds = make_instance("rtstruct")
        pydicom.dcmwrite(path, ds, enforce_file_format=False)
        assert sniff_dicom(path)

    @pytest.mark.parametrize(
        "content", [b"", b"hello world, this is a text file\n", b"\x89PNG\r\n\x1a\n" + b"0" * 200]
    )
    def test_non_dicom_rejected(self, tmp_path: Path, content: bytes):
        """Text, images and empty files are not DICOM, even when named .dcm."""
        path = tmp_path / "fake.dcm"
        path.write_bytes(content)
        assert not sniff_dicom(path)

    def test_read_refuses_non_dicom(self, tmp_path: Path):
        """read_dataset refuses a non-DICOM file with a reason and no traceback of pydicom."""
        path = tmp_path / "notes.txt"
        path.write_text("Patient: Doe^John\n" * 20)
        with pytest.raises(UnsupportedInputError, match="not a DICOM file") as info:
            read_dataset(path)
        assert "Doe" not in str(info.value)


class TestIterFiles:
    def test_sorted_recursive_hidden_included(self, tmp_path: Path):
        """Every file below the folder is listed sorted by path text, hidden files included."""
        for name in ("b/2", "b/1", "a", ".hidden", "c/d/e", "z", "a-b/x"):
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        listed = [p.relative_to(tmp_path).as_posix() for p in iter_files(tmp_path)]
        assert listed == [".hidden", "a", "a-b/x", "b/1", "b/2", "c/d/e", "z"]

    def test_every_entry_listed_links_and_special_files_too(self, tmp_path: Path):
        """Links (never followed), FIFOs, sockets and unlistable folders are entries too."""
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "a").write_bytes(b"x")
        (tmp_path / "to-folder").symlink_to(tmp_path / "real")
        (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        os.mkfifo(tmp_path / "fifo")
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(tmp_path / "sock"))
            listed = [p.relative_to(tmp_path).as_posix() for p in iter_files(tmp_path)]
        assert listed == ["dangling", "fifo", "loop", "real/a", "sock", "to-folder"]


class TestOpen:
    @pytest.mark.parametrize(
        ("make", "reason"),
        [
            (lambda p: p.symlink_to(p.parent / "target"), "a symbolic link"),
            (lambda p: p.symlink_to(p.parent / "nowhere"), "a symbolic link"),
            (lambda p: p.symlink_to(p), "a symbolic link"),
            (os.mkfifo, "a FIFO"),
            (lambda p: p.mkdir(), "a folder"),
        ],
        ids=["link", "dangling-link", "link-loop", "fifo", "folder"],
    )
    def test_only_regular_files_are_opened(self, tmp_path: Path, make, reason: str):
        """Anything but a regular file is refused by type, before any open that could block."""
        (tmp_path / "target").write_bytes(b"secret")
        entry = tmp_path / "entry.dcm"
        make(entry)
        with pytest.raises(NotRegularFileError, match=f"not a regular file: {reason}"):
            InputFolder(tmp_path).open(entry)

    def test_a_linked_folder_in_the_path_is_refused(self, tmp_path: Path):
        """A folder below the root that is a link is never walked through, even to inside."""
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "a.dcm").write_bytes(b"x")
        (tmp_path / "alias").symlink_to(tmp_path / "real")
        folder = InputFolder(tmp_path)
        os.close(folder.open(tmp_path / "real" / "a.dcm"))
        with pytest.raises(NotRegularFileError, match="a folder in its path is a symbolic link"):
            folder.open(tmp_path / "alias" / "a.dcm")


class TestRead:
    def test_file_view_reads_the_whole_file(self, tmp_path: Path):
        """The view holds exactly the file's bytes (read, not mapped); an empty file is empty."""
        source = Path(get_testdata_file("CT_small.dcm"))
        with file_view(source) as view:
            assert isinstance(view.obj, bytes)
            assert view.tobytes() == source.read_bytes()
        (tmp_path / "empty.dcm").touch()
        with file_view(tmp_path / "empty.dcm") as view:
            assert len(view) == 0

    def test_a_file_over_the_size_bound_is_refused(self, tmp_path: Path):
        """max_file_bytes is checked before reading, and named in the reason."""
        path = tmp_path / "big.dcm"
        path.write_bytes(b"\0" * 1000)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert len(read_input(fd, InputLimits(max_file_bytes=1000))) == 1000
            with pytest.raises(UnsupportedInputError, match="max_file_bytes"):
                read_input(fd, InputLimits(max_file_bytes=999))
        finally:
            os.close(fd)

    def test_a_value_past_the_end_of_the_file_is_refused(self):
        """No preamble, an element claiming more bytes than are left: pydicom would keep going."""
        dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        del dataset.file_meta
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, dataset, implicit_vr=False, little_endian=True)
        data = bytearray(buffer.getvalue())
        at = data.index(b"\x08\x00\x20\x00DA")  # StudyDate, early in the dataset
        data[at + 6 : at + 8] = (0xFFF0).to_bytes(2, "little")
        assert len(pydicom.dcmread(io.BytesIO(bytes(data)), force=True)) < 10  # the rest lost
        with pytest.raises(EOFError):
            parse_dataset(bytes(data), named_as_dicom=True)
        assert "StudyInstanceUID" in parse_dataset(buffer.getvalue(), named_as_dicom=True)

    def test_a_pad_byte_after_the_deflated_stream_ends_the_check(self, tmp_path: Path):
        """pydicom pads an odd-length deflated stream; zlib then keeps that byte as a tail."""
        dataset = make_instance("ct")
        dataset.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        for padding in (b"", b"\0", b"\0\0\0"):
            parsed = parse_dataset(buffer.getvalue() + padding)
            assert parsed.SOPInstanceUID == dataset.SOPInstanceUID

    def test_a_deflated_dataset_inflating_past_the_ratio_is_refused(self, tmp_path: Path):
        """A deflated file is inflated piece by piece to check its size before pydicom reads it."""
        dataset = make_instance("ct")
        dataset.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
        dataset.PixelData = b"\0" * (4 << 20)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        data = buffer.getvalue()
        assert len(zlib.compress(b"\0" * (4 << 20))) * 200 < (4 << 20)  # a small bomb
        with pytest.raises(UnsupportedInputError, match="max_inflate_ratio"):
            parse_dataset(data)
        relaxed = InputLimits(max_inflate_ratio=10_000)
        assert len(parse_dataset(data, limits=relaxed).PixelData) == 4 << 20
        with pytest.raises(UnsupportedInputError, match="max_inflated_bytes"):
            parse_dataset(
                data, limits=InputLimits(max_inflate_ratio=10_000, max_inflated_bytes=1000)
            )


def test_prefetch_reads_ahead_regular_files_only(tmp_path: Path):
    """Prefetching is advice: it never blocks on a FIFO, follows a link, or fails on a path."""
    regular = tmp_path / "a.dcm"
    regular.write_bytes(b"DICM" * 1000)
    fifo = tmp_path / "fifo.dcm"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    link = tmp_path / "link.dcm"
    link.symlink_to(fifo)
    paths = [str(regular), str(fifo), str(link), str(tmp_path), str(tmp_path / "missing.dcm")]
    prefetch(paths)
    assert regular.read_bytes() == b"DICM" * 1000


def test_read_ahead_prefetches_each_file_once_at_most_two_windows_ahead(
    monkeypatch: pytest.MonkeyPatch,
):
    """Every file is prefetched once, in order, before the loop reaches it, never far ahead."""
    from airflow_pseudo.pseudonymisation.io import inputs

    asked: list[str] = []
    monkeypatch.setattr(inputs, "prefetch", lambda paths: asked.extend(paths))
    paths = [f"/data/{i}.dcm" for i in range(150)]
    ahead = ReadAhead(paths, window=10)
    for done in range(len(paths)):
        ahead.reached(done)
        assert paths[done] in asked
        assert len(asked) <= done + 20
    assert asked == paths
