"""Tests for the evidence search: independent of the policy, and true on correct outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation import (
    Pseudonymiser,
    Settings,
    pseudonymise_files,
    validate_dataset,
    validate_results,
)
from airflow_pseudo.testing import FakePatient, make_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PATIENT = FakePatient.for_number(1)


def _code_item(meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = "T-D1100"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = meaning
    return item


def _name_in_description(original: Dataset, output: Dataset) -> None:
    output.ReconstructionDescription = f"reviewed for {PATIENT.name.replace('^', ' ')}"


def _name_in_private(original: Dataset, output: Dataset) -> None:
    block = output.private_block(0x0019, "SAFE VENDOR 1", create=True)
    block.add_new(0x10, "LO", f"Testperson^{PATIENT.name.split('^')[1]}")


def _id_in_private(original: Dataset, output: Dataset) -> None:
    block = output.private_block(0x0019, "SAFE VENDOR 1", create=True)
    block.add_new(0x11, "SH", PATIENT.patient_id)


def _name_in_code_meaning(original: Dataset, output: Dataset) -> None:
    output.AnatomicRegionSequence = [_code_item("Testperson")]


def _uid_deep_in_sequence(original: Dataset, output: Dataset) -> None:
    reference = Dataset()
    reference.ReferencedSOPClassUID = original.SOPClassUID
    reference.ReferencedSOPInstanceUID = original.SOPInstanceUID
    inner = Dataset()
    inner.ReferencedImageSequence = [reference]
    output.SourceImageSequence = [Dataset(), inner]


def _birth_date_in_comment(original: Dataset, output: Dataset) -> None:
    birth = PATIENT.birth_date
    output.ImageComments = f"DOB {birth[6:]}.{birth[4:6]}.{birth[:4]}, see notes"


def _address_in_kept_text(original: Dataset, output: Dataset) -> None:
    output.ManufacturerModelName = PATIENT.address.split(",")[0]


@pytest.mark.parametrize(
    ("doctor", "expected"),
    [
        (_name_in_description, "a name of the original found in ReconstructionDescription"),
        (
            _name_in_private,
            "a name of the original found in private (0019,1010) [SAFE VENDOR 1]",
        ),
        (_id_in_private, "an ID of the original found in private (0019,1011) [SAFE VENDOR 1]"),
        (
            _name_in_code_meaning,
            "a name of the original found in AnatomicRegionSequence > CodeMeaning",
        ),
        (
            _uid_deep_in_sequence,
            "a UID of the original found in "
            "SourceImageSequence > ReferencedImageSequence > ReferencedSOPInstanceUID",
        ),
        (_birth_date_in_comment, "a date of the original found in ImageComments"),
        (_address_in_kept_text, "an address of the original found in ManufacturerModelName"),
    ],
)
def test_doctored_outputs_fail_naming_attribute_and_kind(
    pseudonymiser: Pseudonymiser,
    doctor: Callable[[Dataset, Dataset], None],
    expected: str,
):
    """Identifiers written into an output after pseudonymisation, where the profile keeps
    values or never looks, are found; the problem names where and what, never the value."""
    original = make_instance("ct", patient=1)
    output = pseudonymiser.pseudonymise_dataset(original)[0]
    assert validate_dataset(original, output, pseudonymiser) == []
    doctor(original, output)
    problems = validate_dataset(original, output, pseudonymiser)
    assert expected in problems, problems
    for value in [*PATIENT.planted_values(), original.SOPInstanceUID, "Testperson"]:
        assert not any(value in problem for problem in problems)


def test_an_instance_uid_under_the_dicom_root_restored_in_the_output_fails(
    pseudonymiser: Pseudonymiser,
):
    """Only pydicom's UID dictionary makes a UID registered: an instance UID that merely starts
    with the DICOM root is remapped by the pseudonymiser, and searched for by the validator."""
    original = make_instance("ct", patient=1)
    original.SOPInstanceUID = "1.2.840.10008.999.4242.7"
    original.file_meta.MediaStorageSOPInstanceUID = original.SOPInstanceUID
    output = pseudonymiser.pseudonymise_dataset(original)[0]
    assert output.SOPInstanceUID != original.SOPInstanceUID
    assert validate_dataset(original, output, pseudonymiser) == []
    _uid_deep_in_sequence(original, output)
    problems = validate_dataset(original, output, pseudonymiser)
    assert (
        "a UID of the original found in "
        "SourceImageSequence > ReferencedImageSequence > ReferencedSOPInstanceUID"
    ) in problems
    assert not any(original.SOPInstanceUID in problem for problem in problems)


def test_scheme_and_class_uids_are_not_evidence(pseudonymiser: Pseudonymiser):
    """A coding scheme, context group or class UID names what every patient's files share:
    found in the output, under the DICOM root or not, it proves nothing."""
    original = make_instance("ct", patient=1)
    code = _code_item("Chest")
    code.CodingSchemeUID = "2.16.840.1.113883.6.96"
    code.ContextUID = "1.2.840.10008.6.1.4242"
    original.AnatomicRegionSequence = [code]
    output = pseudonymiser.pseudonymise_dataset(original)[0]
    output.AnatomicRegionSequence[0].CodingSchemeUID = code.CodingSchemeUID
    output.AnatomicRegionSequence[0].ContextUID = code.ContextUID
    assert validate_dataset(original, output, pseudonymiser) == []


def test_a_name_in_the_jpeg_comment_of_a_frame_is_found(pseudonymiser: Pseudonymiser):
    """The non-image segments of encapsulated frames are searched; the image data is not."""
    from pydicom.encaps import encapsulate, generate_frames

    original = make_instance("jpeg", patient=1)
    output = pseudonymiser.pseudonymise_dataset(original)[0]
    frame = next(generate_frames(output.PixelData, number_of_frames=1))
    comment = b"Testperson Alice"
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    output.PixelData = encapsulate([frame[:2] + segment + frame[2:]])
    problems = validate_dataset(original, output, pseudonymiser)
    assert "a name of the original found in pixel data segment" in problems

    output = pseudonymiser.pseudonymise_dataset(original)[0]
    output.PixelData = encapsulate([frame[:-2] + comment + frame[-2:]])  # in the scan data
    assert validate_dataset(original, output, pseudonymiser) == []


_SHORT_AND_COMMON_NAMES = (
    "Li^Bo",
    "Ng^Al",
    "Wu^Jo",
    "Head^May",
    "White^Will",
    "Brown^Rose",
    "Long^Mark",
    "Primary^Hope",
    "Axial^Joy",
    "Standard^Grace",
)


def _truth_corpus(root: Path, count: int) -> list[Path]:
    """``count`` CT, MR and SR instances with 4- and 5-digit IDs and short or common names."""
    root.mkdir()
    templates = ("ct", "mr", "ct", "sr")
    bases = {t: make_instance(t, patient=7) for t in set(templates)}
    paths = []
    for number in range(count):
        template = templates[number % len(templates)]
        dataset = bases[template]
        dataset.PatientID = f"{number % 9000 + 1000}" if number % 2 else f"{number + 10000}"
        dataset.PatientName = _SHORT_AND_COMMON_NAMES[number % len(_SHORT_AND_COMMON_NAMES)]
        dataset.OtherPatientIDs = [f"{number:04d}"]
        dataset.InstanceNumber = number
        dataset.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7147.{number}.{number % 97}"
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        paths.append(root / f"{number:05d}.dcm")
        pydicom.dcmwrite(paths[-1], dataset, enforce_file_format=True)
    return paths


def test_correct_outputs_have_no_false_evidence(tmp_path: Path, settings: Settings):
    """1,000 correct outputs whose patients have 4- and 5-digit IDs and short or everyday
    names (which occur by chance in new UIDs, digests and kept values) all pass."""
    files = _truth_corpus(tmp_path / "in", 1000)
    results = pseudonymise_files(
        files, tmp_path / "out", settings=settings, input_root=tmp_path / "in"
    )
    assert {r.status for r in results} == {"ok"}
    verdicts = validate_results(results, settings=settings)
    failed = [v.problems for v in verdicts if v.status != "ok"]
    assert failed == []
    assert {v.key_checks for v in verdicts} == {"passed"}
