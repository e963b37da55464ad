"""Tests for the pixel risk gate: segments stripped with pixels decoded identical, risky images
refused unless allowed."""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from airflow_pseudo.pseudonymisation import PseudonymKey, Settings, pseudonymise_directory
from airflow_pseudo.pseudonymisation.pixels import (
    BURNED_IN_TEXT_LIKELY,
    JPEG_2000_TRANSFER_SYNTAXES,
    JPEG_TRANSFER_SYNTAXES,
    pixel_risk,
    strip_file,
    strip_frame,
    strip_pixel_data,
)
from airflow_pseudo.testing import make_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PLANTED = b"Testperson^Planted 19700101"


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _with_planted_segments(name: str, planted: list[bytes]) -> pydicom.Dataset:
    """A bundled compressed file, its first frame given ``planted`` segments after its start."""
    dataset = pydicom.dcmread(get_testdata_file(name))
    frames = list(generate_frames(dataset.PixelData, number_of_frames=1))
    head = 2  # after SOI (JPEG) or SOC (JPEG 2000)
    if frames[0][:2] == b"\xff\x4f":  # JPEG 2000: COM goes after the SIZ marker segment
        head = 4 + struct.unpack(">H", frames[0][4:6])[0]
    frames[0] = frames[0][:head] + b"".join(planted) + frames[0][head:]
    dataset.PixelData = encapsulate(frames)
    dataset["PixelData"].is_undefined_length = True
    return dataset


@pytest.mark.parametrize(
    ("name", "planted"),
    [
        (
            "SC_rgb_jpeg_dcmtk.dcm",
            [_segment(0xFE, PLANTED), _segment(0xE1, b"Exif\x00\x00" + PLANTED)],
        ),
        ("MR_small_jp2klossless.dcm", [_segment(0x64, b"\x00\x01" + PLANTED)]),
        ("JPEG2000.dcm", [_segment(0x64, b"\x00\x01" + PLANTED)]),
    ],
    ids=["jpeg-com-app1", "j2k-com", "j2k-com-multiframe-header"],
)
def test_planted_segments_are_stripped_and_pixels_decode_identical(name: str, planted: list[bytes]):
    """Decode the original, plant text, strip it: the text is gone, the pixels are the same."""
    original = pydicom.dcmread(get_testdata_file(name)).pixel_array
    dataset = _with_planted_segments(name, planted)
    assert PLANTED in dataset.PixelData
    assert np.array_equal(dataset.pixel_array, original)  # the planted file decodes too
    assert strip_pixel_data(dataset) >= len(planted)
    assert PLANTED not in dataset.PixelData
    assert np.array_equal(dataset.pixel_array, original)


def test_adobe_segment_is_kept():
    """APP14 "Adobe" says how colours were transformed: decoding needs it."""
    adobe = _segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01")
    frame = b"\xff\xd8" + adobe + _segment(0xFE, PLANTED) + b"\xff\xd9"
    stripped, removed = strip_frame(frame, jpeg_2000=False)
    assert (stripped, removed) == (b"\xff\xd8" + adobe + b"\xff\xd9", 1)


def test_stripping_twice_changes_nothing_the_second_time():
    """A frame with nothing left to strip is left as it is (the same object)."""
    dataset = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    strip_pixel_data(dataset)  # its encoder's own COM segment, if any
    before = dataset.PixelData
    assert strip_pixel_data(dataset) == 0
    assert dataset.PixelData is before


def test_a_planted_comment_never_reaches_the_output(tmp_path: Path, key_bytes: bytes):
    """End to end: the frames are stripped, then the fast path rewrites the header."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    dataset = _with_planted_segments("SC_rgb_jpeg_dcmtk.dcm", [_segment(0xFE, PLANTED)])
    dataset.BurnedInAnnotation = "NO"
    dataset.save_as(incoming / "sc.dcm", enforce_file_format=True)
    settings = Settings(key=PseudonymKey(key_bytes))
    (result,) = pseudonymise_directory(incoming, tmp_path / "out", settings=settings)
    assert (result.status, result.engine) == ("ok", "fast"), result.reason
    output = Path(result.output or "")
    assert PLANTED not in output.read_bytes()
    original = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")).pixel_array
    assert np.array_equal(pydicom.dcmread(output).pixel_array, original)


def test_every_listed_class_has_a_reason():
    assert all(uid.startswith("1.2.840.10008.5.1.4.1.1.") for uid in BURNED_IN_TEXT_LIKELY)
    assert all(pydicom.uid.UID(uid).is_valid for uid in BURNED_IN_TEXT_LIKELY)
    assert all(len(reason) > 20 for reason in BURNED_IN_TEXT_LIKELY.values())


@pytest.mark.parametrize(
    ("sop_class", "burned_in", "recognizable", "refused"),
    [
        ("1.2.840.10008.5.1.4.1.1.7", None, None, "Secondary Capture"),
        ("1.2.840.10008.5.1.4.1.1.7", "NO", None, None),
        ("1.2.840.10008.5.1.4.1.1.6.1", "", None, "ultrasound"),
        ("1.2.840.10008.5.1.4.1.1.77.1.4", None, None, "photograph"),
        ("1.2.840.10008.5.1.4.1.1.2", None, "YES", "RecognizableVisualFeatures is YES"),
        ("1.2.840.10008.5.1.4.1.1.2", None, "NO", None),
        ("1.2.840.10008.5.1.4.1.1.2", None, None, None),
    ],
)
def test_pixel_risk(sop_class: str, burned_in: str | None, recognizable: str | None, refused):
    risk = pixel_risk(sop_class, burned_in, recognizable)
    assert (risk is None) == (refused is None)
    if refused:
        assert refused in (risk or "")


def test_risky_images_are_quarantined_unless_allowed(tmp_path: Path, key_bytes: bytes):
    """A capture without BurnedInAnnotation and a CT flagged RecognizableVisualFeatures."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    capture = make_instance("ct", patient=1)
    capture.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    capture.file_meta.MediaStorageSOPClassUID = capture.SOPClassUID
    capture.pop("BurnedInAnnotation", None)
    pydicom.dcmwrite(incoming / "capture.dcm", capture, enforce_file_format=True)
    face = make_instance("ct", patient=2)
    face.RecognizableVisualFeatures = "YES"
    pydicom.dcmwrite(incoming / "face.dcm", face, enforce_file_format=True)
    settings = Settings(key=PseudonymKey(key_bytes))
    for engine in ("auto", "reference"):
        refused = pseudonymise_directory(
            incoming,
            tmp_path / f"out-{engine}",
            settings=dataclasses.replace(settings, engine=engine),
        )
        assert [r.status for r in refused] == ["failed", "failed"]
        assert "BurnedInAnnotation is absent" in (refused[0].reason or "")
        assert "RecognizableVisualFeatures is YES" in (refused[1].reason or "")
        assert all(r.quarantine for r in refused)
    allowed = pseudonymise_directory(
        incoming, tmp_path / "allowed", settings=dataclasses.replace(settings, allow_burned_in=True)
    )
    assert [r.status for r in allowed] == ["ok", "ok"]


@pytest.mark.parametrize("option", ["--allow-identifying-pixels", "--allow-burned-in"])
def test_both_option_names_allow(option: str):
    """The older name keeps working."""
    from airflow_pseudo.cli import build_parser

    args = build_parser().parse_args(["pseudonymise", "in", option])
    assert args.allow_burned_in is True


def _bundled_compressed_files() -> list[str]:
    folder = Path(get_testdata_file("CT_small.dcm")).parent
    names = []
    for path in sorted(folder.glob("*.dcm")):
        try:
            with warnings.catch_warnings():  # read at collection: pydicom's remarks are noise
                warnings.simplefilter("ignore")
                meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        except Exception:
            continue
        if str(meta.get("TransferSyntaxUID", "")) in JPEG_TRANSFER_SYNTAXES | (
            JPEG_2000_TRANSFER_SYNTAXES
        ):
            names.append(path.name)
    return names


@pytest.mark.parametrize("name", _bundled_compressed_files())
def test_every_bundled_compressed_file_decodes_the_same_after_stripping(name: str):
    """Whatever pydicom's own JPEG and JPEG 2000 files hold, stripping never changes a pixel."""
    dataset = pydicom.dcmread(get_testdata_file(name))
    try:
        before = dataset.pixel_array
    except Exception:
        pytest.skip("no decoder for this file here (pillow decodes baseline JPEG and JPEG 2000)")
    strip_pixel_data(dataset)
    assert np.array_equal(dataset.pixel_array, before)


def _stripped_files() -> list[Path]:
    """pydicom's compressed files with segments to strip, one per instance UID."""
    found: dict[str, Path] = {}
    for path in sorted(Path(get_testdata_file("CT_small.dcm")).parent.rglob("*.dcm")):
        data = path.read_bytes()
        if strip_file(data) not in (None, data):
            found.setdefault(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID, path)
    return list(found.values())


def test_stripping_a_file_matches_stripping_its_dataset():
    """strip_file (bytes, for the fast path) gives the PixelData strip_pixel_data gives."""
    files = _stripped_files()
    assert len(files) >= 5
    for path in files:
        stripped = pydicom.dcmread(io.BytesIO(strip_file(path.read_bytes()) or b""))
        reference = pydicom.dcmread(path)
        assert strip_pixel_data(reference) > 0
        assert stripped.PixelData == reference.PixelData, path.name
        assert [e.tag for e in stripped] == [e.tag for e in reference], path.name


def test_stripped_files_take_the_fast_path_and_match_the_reference(
    tmp_path: Path, key_bytes: bytes
):
    """Files with segments to strip are rewritten by the fast path, as the reference would."""
    files = _stripped_files()
    outputs = {}
    for engine in ("auto", "reference"):
        incoming = tmp_path / engine / "in"
        incoming.mkdir(parents=True)
        for path in files:
            (incoming / path.name).write_bytes(path.read_bytes())
        settings = Settings(key=PseudonymKey(key_bytes), engine=engine, allow_burned_in=True)
        results = pseudonymise_directory(incoming, tmp_path / engine / "out", settings=settings)
        assert all(r.status == "ok" for r in results), [r.reason for r in results]
        outputs[engine] = {Path(r.source).name: (r.engine, Path(r.output or "")) for r in results}
    for name, (engine, fast) in outputs["auto"].items():
        assert engine == "fast", name
        ours, theirs = pydicom.dcmread(fast), pydicom.dcmread(outputs["reference"][name][1])
        assert ours.PixelData == theirs.PixelData, name
        assert [e for e in ours if e.tag != 0x7FE00010] == [
            e for e in theirs if e.tag != 0x7FE00010
        ], name


def test_a_file_whose_frames_cannot_be_split_is_left_to_the_reference_engine():
    """Encapsulated items pydicom cannot read give None, never an exception or a guess."""
    data = bytearray(Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")).read_bytes())
    pixel_data = data.rfind(b"\xe0\x7f\x10\x00OB")
    first_fragment = pixel_data + 12 + 8 + 4  # after the header and the 4-byte offset table
    assert data[first_fragment : first_fragment + 4] == b"\xfe\xff\x00\xe0"
    data[first_fragment : first_fragment + 4] = b"\x10\x00\x10\x00"
    assert strip_file(bytes(data)) is None
