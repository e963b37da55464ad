"""The streaming fast path must decode to exactly what the reference engine writes."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from airflow_pseudo.pseudonymisation import PseudonymKey, Settings, fastpath, pseudonymise_files
from airflow_pseudo.pseudonymisation.fastpath import file_meta_bytes, pseudonymise_buffer
from airflow_pseudo.pseudonymisation.io.inputs import file_view, read_dataset
from airflow_pseudo.pseudonymisation.scanner import FastPathUnsupported, TruncatedFileError
from airflow_pseudo.testing import make_instance, write_ct_copies

TEST_FILES = Path(get_testdata_file("CT_small.dcm", download=False)).parent


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(key=PseudonymKey(b"fast path differential test key"))


def fast_bytes(path: Path, settings: Settings) -> bytes:
    with file_view(path) as buffer:
        output = pseudonymise_buffer(buffer, settings.pseudonymiser)
        return b"".join(bytes(chunk) for chunk in output.chunks)


def reference_bytes(path: Path, settings: Settings) -> bytes:
    dataset = read_dataset(path, named_as_dicom=True)
    settings.pseudonymiser.pseudonymise_in_place(dataset)
    stream = io.BytesIO()
    pydicom.dcmwrite(stream, dataset, enforce_file_format=True)
    return stream.getvalue()


def assert_same_decoded(fast: bytes, reference: bytes) -> None:
    ours, theirs = pydicom.dcmread(io.BytesIO(fast)), pydicom.dcmread(io.BytesIO(reference))
    assert ours.file_meta == theirs.file_meta
    assert ours.preamble == theirs.preamble
    mismatched = [str(e.tag) for e in theirs if e.tag not in ours or ours[e.tag] != e]
    extra = [str(e.tag) for e in ours if e.tag not in theirs]
    assert (mismatched, extra) == ([], [])


def bundled_files() -> Iterator[Path]:
    return iter(sorted(p for p in TEST_FILES.rglob("*") if p.is_file()))


@pytest.mark.parametrize("profile", ["default", "basic", "research", "pymedphys"])
def test_every_supported_bundled_file_matches_the_reference(profile: str):
    """Over all of pydicom's test files, each fast output decodes to the reference output.

    Every shipped profile; ``research`` keeps safe private attributes and cleans descriptions,
    which the fast path leaves to the reference engine, so fewer files take the fast path.
    """
    settings = Settings(key=PseudonymKey(b"fast path differential test key"), profile=profile)
    compared = 0
    for path in bundled_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fast = fast_bytes(path, settings)
            except (FastPathUnsupported, TruncatedFileError):
                continue
            reference = reference_bytes(path, settings)
        assert_same_decoded(fast, reference)
        compared += 1
    assert compared >= (10 if profile == "research" else 100), "the fast path handles most"


def _write(dataset: Dataset, path: Path, transfer_syntax: str, undefined_lengths: bool) -> Path:
    dataset = dataset.copy()
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    for element in dataset.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = undefined_lengths
            for item in element.value:
                item.is_undefined_length_sequence_item = undefined_lengths
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    return path


def _generated(template: str) -> Dataset:
    dataset = make_instance(template, patient=3, study=1, series=1, instance=2)
    # Nested sequences with a private block inside, an odd-length and a multi-valued element.
    inner = Dataset()
    inner.PatientName = "Nested^Person"
    inner.OtherPatientIDs = ["ID-1", "ID-22", "ID-333"]
    inner.add_new(0x00291010, "LO", "PRIVATE")
    inner.add_new(0x00290010, "LO", "ACME")
    inner.ReferencedSOPInstanceUID = dataset.SOPInstanceUID
    # UIDs no rule names (one under the DICOM root, unregistered) and a URL holding a UID.
    inner.ConcatenationUID = "1.2.840.10008.999.7"
    inner.RetrieveURL = f"https://pacs.example/wado?studyUID={dataset.StudyInstanceUID}"
    middle = Dataset()
    middle.ReferencedImageSequence = Sequence([inner])
    middle.StudyDate = "20010203"
    dataset.ReferencedStudySequence = Sequence([middle, Dataset()])
    dataset.StudyComments = "odd"
    return dataset


@pytest.mark.parametrize("template", ["ct", "mr", "rtplan", "rtstruct", "sr"])
@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
    ids=["explicit", "implicit"],
)
@pytest.mark.parametrize("undefined_lengths", [False, True], ids=["defined", "undefined"])
@pytest.mark.parametrize("profile", ["default", "basic", "pymedphys"])
def test_generated_datasets_match_the_reference(
    tmp_path: Path, template: str, transfer_syntax: str, undefined_lengths: bool, profile: str
):
    """Generated data (non-ASCII patients, nesting, private blocks in items) matches too."""
    settings = Settings(key=PseudonymKey(b"fast path differential test key"), profile=profile)
    path = _write(_generated(template), tmp_path / "in.dcm", transfer_syntax, undefined_lengths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same_decoded(fast_bytes(path, settings), reference_bytes(path, settings))


def test_unsupported_syntax_falls_back_and_says_so(tmp_path: Path, settings: Settings):
    """Big endian goes to the reference engine; the record says which engine ran."""
    source = tmp_path / "in"
    source.mkdir()
    _write(_generated("ct"), source / "le.dcm", ExplicitVRLittleEndian, False)
    shutil.copy(get_testdata_file("MR_small_bigendian.dcm"), source / "be.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = pseudonymise_files(sorted(source.iterdir()), tmp_path / "out", settings=settings)
    assert {Path(r.source).name: r.engine for r in results} == {
        "be.dcm": "reference",
        "le.dcm": "fast",
    }
    assert {r.status for r in results} == {"ok"}


def test_hand_written_file_meta_matches_pydicom():
    """The file meta the fast path encodes by hand decodes like pydicom's own encoding."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    from airflow_pseudo.pseudonymisation.engine import rewrite_file_meta

    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    dataset.SOPInstanceUID = "2.25.123"
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rewrite_file_meta(dataset)
    stream = DicomBytesIO()
    stream.is_little_endian, stream.is_implicit_VR = True, False
    write_file_meta_info(stream, dataset.file_meta, enforce_standard=True)
    ours = file_meta_bytes("1.2.840.10008.5.1.4.1.1.2", "2.25.123", ExplicitVRLittleEndian)
    assert ours == stream.getvalue()


def test_big_endian_is_declined(settings: Settings):
    """The fast path declines what it does not support rather than guessing."""
    with (
        pytest.raises(FastPathUnsupported),
        file_view(get_testdata_file("MR_small_bigendian.dcm")) as buffer,
    ):
        pseudonymise_buffer(buffer, settings.pseudonymiser)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.95], ids=["in-header", "in-middle", "in-pixels"])
def test_truncated_file_fails_with_a_clear_reason(tmp_path: Path, settings: Settings, keep: float):
    """A file cut short fails as truncated instead of being written with values missing."""
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    source = tmp_path / "in"
    source.mkdir()
    (source / "cut.dcm").write_bytes(data[: int(len(data) * keep)])
    (result,) = pseudonymise_files([source / "cut.dcm"], tmp_path / "out", settings=settings)
    assert result.status == "failed"
    assert result.reason is not None
    assert result.reason.startswith("truncated DICOM")
    assert not list((tmp_path / "out").rglob("*.dcm"))


_PEAK_MEMORY_SCRIPT = """
import resource, sys
from pathlib import Path
from airflow_pseudo.pseudonymisation import PseudonymKey, Settings, fastpath, pseudonymise_files

files = sorted(Path(sys.argv[1]).glob("*.dcm"))
settings = Settings(key=PseudonymKey(b"memory test key, 32 bytes long.."), engine=sys.argv[3])
settings.check()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
results = pseudonymise_files(files, sys.argv[2], settings=settings)
assert {r.status for r in results} == {"ok"}, [r.reason for r in results]
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, results[0].engine)
"""


def _peak_kib(source: Path, output: Path, engine: str = "auto") -> tuple[int, int, str]:
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY_SCRIPT, str(source), str(output), engine],
        capture_output=True,
        text=True,
        check=True,
    )
    before, after, used = done.stdout.split()
    return int(before), int(after), used


@pytest.mark.slow
def test_a_large_file_is_not_held_twice(tmp_path: Path):
    """A 96 MB multi-frame file raises peak memory by about one copy of it, not two."""
    size_mib = 96
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    frames = size_mib * 1024 * 1024 // (128 * 128 * 2)
    dataset.NumberOfFrames = frames
    dataset.PixelData = bytes(frames * 128 * 128 * 2)
    (tmp_path / "in").mkdir()
    dataset.save_as(tmp_path / "in" / "large.dcm")
    del dataset
    before, after, engine = _peak_kib(tmp_path / "in", tmp_path / "out")
    assert engine == "fast"
    assert after - before < 1.3 * size_mib * 1024


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_files(tmp_path: Path):
    """Four times the files cost no more peak memory than a quarter of them, give or take."""
    write_ct_copies(tmp_path / "few", 50)
    write_ct_copies(tmp_path / "many", 200)
    _, few, _ = _peak_kib(tmp_path / "few", tmp_path / "out-few")
    _, many, _ = _peak_kib(tmp_path / "many", tmp_path / "out-many")
    assert many - few < 16 * 1024


def test_any_view_of_a_file_gives_the_same_output(settings: Settings):
    """Views of a bytearray, or of part of a larger buffer, are read as bytes views are."""
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    views = [memoryview(data), memoryview(bytearray(data)), memoryview(b"pad" + data)[3:]]
    outputs = [
        b"".join(bytes(c) for c in pseudonymise_buffer(v, settings.pseudonymiser).chunks)
        for v in views
    ]
    assert outputs[0] == outputs[1] == outputs[2]


def test_value_contexts_are_numbered_once_and_never_renumbered(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
):
    """Cached values are keyed by a context's number: a number must never mean two patients."""
    monkeypatch.setattr(fastpath, "_VALUE_CACHE_ENTRIES", 2)
    plans = fastpath._Plans(settings.pseudonymiser)
    alice, bob, carol = ((False, patient, "iso8859") for patient in ("A", "B", "C"))
    first = plans.context_number(alice)
    assert plans.context_number(alice) == first
    numbers = [first, plans.context_number(bob), plans.context_number(carol)]  # carol clears
    numbers.append(plans.context_number(alice))  # forgotten: numbered anew
    assert len(set(numbers)) == len(numbers)


def test_patients_sharing_values_get_their_own_pseudonyms(tmp_path: Path, settings: Settings):
    """Two patients with the same dates, files interleaved: each is shifted by its own offset."""
    paths = []
    for index, patient in enumerate(["PAT-A", "PAT-B", "PAT-A", "PAT-B"]):
        dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        dataset.PatientID = patient
        dataset.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{index + 1}"
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        paths.append(tmp_path / f"{index}.dcm")
        dataset.save_as(paths[-1])
    outputs = [fast_bytes(path, settings) for path in paths]
    for path, output in zip(paths, outputs, strict=True):
        assert_same_decoded(output, reference_bytes(path, settings))
    dates = [pydicom.dcmread(io.BytesIO(output)).StudyDate for output in outputs]
    assert dates[0] == dates[2] != dates[1] == dates[3]


@pytest.mark.parametrize("template", ["ct", "mr", "sr"])
def test_research_cleans_descriptions_on_the_fast_path(tmp_path: Path, template: str):
    """Clean Descriptors runs on the fast path (no private element): same output as reference."""
    dataset = make_instance(template, patient=4, study=1, series=1, instance=1)
    dataset.SeriesDescription = f"T1 {dataset.PatientName.family_name} {dataset.PatientID} axial"
    dataset.ProtocolName = "brain routine"
    dataset.remove_private_tags()
    path = _write(dataset, tmp_path / "in.dcm", ExplicitVRLittleEndian, False)
    settings = Settings(key=PseudonymKey(b"fast path differential test key"), profile="research")
    fast = fast_bytes(path, settings)  # raises FastPathUnsupported if it fell back
    assert_same_decoded(fast, reference_bytes(path, settings))
    description = str(pydicom.dcmread(io.BytesIO(fast)).SeriesDescription)
    assert "axial" in description and str(dataset.PatientID) not in description


def test_research_leaves_files_with_private_elements_to_the_reference(tmp_path: Path):
    """Safe private attributes are kept by the reference engine: the fast path declines."""
    dataset = make_instance("mr", patient=4, study=1, series=1, instance=1)
    dataset.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    dataset.add_new(0x00291010, "OB", b"SV10")
    path = _write(dataset, tmp_path / "in.dcm", ExplicitVRLittleEndian, False)
    settings = Settings(key=PseudonymKey(b"fast path differential test key"), profile="research")
    with pytest.raises(FastPathUnsupported, match="private"):
        fast_bytes(path, settings)
    (result,) = pseudonymise_files([path], tmp_path / "out", settings=settings)
    assert result.engine == "reference"
    assert pydicom.dcmread(result.output)[0x00291010].value == b"SV10"
