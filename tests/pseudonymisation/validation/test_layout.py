"""Tests for the output's layout: every value located, pixel data set apart, nothing skipped."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation.validation.layout import (
    UnreadableOutputError,
    _Walker,
    read_layout,
)
from airflow_pseudo.testing import make_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _encoded(dataset: Dataset, syntax: str | None = None) -> bytes:
    if syntax is not None:
        dataset.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def _uids_and_names(dataset: Dataset) -> Dataset:
    dataset.BeamSequence[0].OperatorsName = "Nested^Operator"
    block = dataset.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x03, "LO", "kept?")
    return dataset


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
def test_the_scan_reports_what_the_full_walk_finds(syntax: str):
    """With a *wanted*, the compiled scan reports exactly the full walk's wanted elements,
    at every depth, and counts the private elements it skipped."""
    data = _encoded(_uids_and_names(make_instance("rtplan", patient=1)), syntax)
    full = read_layout(data)
    scanned = read_layout(data, lambda tag: tag in (0x00081155, 0x00081070, 0x00100010))
    assert full.complete_walk and not scanned.complete_walk
    wanted = [e for e in full.elements if e.tag in (0x00081155, 0x00081070, 0x00100010)]
    assert scanned.elements[len(scanned.elements) - len(wanted) :] == wanted
    assert scanned.private_elements == len([e for e in full.elements if e.tag >> 16 & 1])
    assert scanned.searched == full.searched
    assert scanned.complete() == full


def test_elements_are_named_by_keyword_path_and_private_creator():
    data = _encoded(_uids_and_names(make_instance("rtplan", patient=1)))
    layout = read_layout(data)
    names = {e.name for e in layout.elements}
    assert "BeamSequence > OperatorsName" in names
    assert "private (0011,1003) [ACME 1.0]" in names
    operator = next(e for e in layout.elements if e.name == "BeamSequence > OperatorsName")
    assert layout.raw(operator).rstrip(b" ") == b"Nested^Operator"
    assert layout.element_at(operator.start + 3) == operator


def test_native_pixel_data_is_not_searched():
    data = _encoded(make_instance("ct", patient=1))
    layout = read_layout(data)
    searched = sum(end - start for start, end in layout.searched)
    pixels = make_instance("ct", patient=1).PixelData
    assert searched == len(data) - len(pixels)


@pytest.mark.parametrize(
    ("name", "marker"),
    [("SC_rgb_jpeg_dcmtk.dcm", b"\xff\xda"), ("MR_small_jp2klossless.dcm", b"\xff\x90")],
)
def test_only_the_non_image_segments_of_encapsulated_frames_are_searched(name: str, marker: bytes):
    """JPEG: marker segments up to the start of scan; JPEG 2000: the main header up to SOT."""
    path = get_testdata_file(name, download=False)
    assert path is not None
    data = Path(path).read_bytes()
    layout = read_layout(data)
    assert layout.segments
    for segment in layout.segments:
        assert marker in data[segment.start : segment.end + 2]
        assert segment.end - segment.start < 2048  # headers, not image data
    pixels = len(pydicom.dcmread(path).PixelData)
    searched = sum(end - start for start, end in layout.searched)
    assert searched < len(data) - pixels + 2048 * len(layout.segments)


@pytest.mark.parametrize(
    "cut", [lambda d: d[:100], lambda d: d[: len(d) - 7], lambda d: b"\x00" * 132]
)
def test_unreadable_outputs_are_refused(cut):
    data = _encoded(make_instance("rtplan", patient=1))
    with pytest.raises(UnreadableOutputError):
        read_layout(cut(data))


def _stated_meta_length(data: bytes, end: int) -> bytes:
    """The file with a FileMetaInformationGroupLength that says the meta ends at ``end``."""
    return data[:140] + (end - 144).to_bytes(4, "little") + data[144:]


def _end_of(data: bytes, meta: bool, which: int) -> int:
    """Where the file meta's element ``which`` ends, or the dataset's (group length aside)."""
    elements = [e for e in read_layout(data).elements if e.tag != 0x00020000 and not e.path]
    return [e for e in elements if (e.tag >> 16 == 2) == meta][which].end


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d,
        lambda d: _stated_meta_length(d, _end_of(d, True, 1)),  # ends on an inner element
        lambda d: _stated_meta_length(d, _end_of(d, True, 1) + 3),  # ends inside one
        lambda d: _stated_meta_length(d, _end_of(d, False, 0)),  # takes a dataset element
        lambda d: _stated_meta_length(d, len(d) + 100),  # runs past the end of the file
        lambda d: _stated_meta_length(d, 144),  # says there is none
        lambda d: d[:132] + d[144:],  # has no group length
        lambda d: d[:136] + b"OB" + d[138:],  # has another header
    ],
)
def test_the_meta_scan_finds_what_the_meta_walk_finds(monkeypatch, mangle):
    """Where the file meta's group length is wrong or missing, the meta is walked instead."""
    data = mangle(_encoded(make_instance("rtplan", patient=1), "1.2.840.10008.1.2.1"))
    scanned = _layout_or_error(data)
    monkeypatch.setattr(_Walker, "_scan_meta", lambda self, position: None)
    assert scanned == _layout_or_error(data)


def _layout_or_error(data: bytes) -> object:
    try:
        layout = read_layout(data, lambda tag: tag == 0x00100010)
    except UnreadableOutputError as exc:
        return str(exc)
    return layout.elements, layout.searched, layout.little_endian, layout.complete_walk
