"""Tests for the validation runner: it catches residues, invalid values and missing markers."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation import (
    Pseudonymiser,
    PseudonymKey,
    Settings,
    validate_dataset,
    validate_file,
)
from airflow_pseudo.testing import make_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def pair(pseudonymiser: Pseudonymiser) -> tuple[Dataset, Dataset]:
    """An original with planted PHI (nested too) and its pseudonymised output."""
    original = make_instance("rtplan", patient=1)
    original.BeamSequence[0].OperatorsName = "Nested^Operator"
    return original, pseudonymiser.pseudonymise_dataset(original)[0]


def test_real_output_passes(pseudonymiser: Pseudonymiser, pair: tuple[Dataset, Dataset]):
    """A genuine pseudonymisation has no problems."""
    assert validate_dataset(*pair, pseudonymiser) == []


@pytest.mark.parametrize("template", ["ct", "mr", "rtdose", "rtstruct", "sr"])
@pytest.mark.parametrize("patient", [2, 3])
def test_real_outputs_pass(pseudonymiser: Pseudonymiser, template: str, patient: int):
    """Outputs of every template and of a non-ASCII patient pass."""
    original = make_instance(template, patient=patient)
    output = pseudonymiser.pseudonymise_dataset(original)[0]
    assert validate_dataset(original, output, pseudonymiser) == []


def test_planted_residual_caught(pseudonymiser: Pseudonymiser, pair: tuple[Dataset, Dataset]):
    """A PatientName left in the output is reported by keyword, never by value."""
    original, output = pair
    output.PatientName = original.PatientName
    problems = validate_dataset(original, output, pseudonymiser)
    assert any("PatientName" in p for p in problems)
    assert not any("Testperson" in p for p in problems)


def test_residual_hidden_elsewhere_caught(
    pseudonymiser: Pseudonymiser, pair: tuple[Dataset, Dataset]
):
    """An identifying value copied into another kept element, deep in a sequence, is found."""
    original, output = pair
    output.BeamSequence[0].BeamDescription = f"for {original.PatientID}"
    problems = validate_dataset(original, output, pseudonymiser)
    assert "an ID of the original found in BeamSequence > BeamDescription" in problems
    assert not any(original.PatientID in p for p in problems)


def test_nested_residual_caught(pseudonymiser: Pseudonymiser, pair: tuple[Dataset, Dataset]):
    """A nested identifying value left unchanged is caught."""
    original, output = pair
    output.BeamSequence[0].OperatorsName = "Nested^Operator"
    assert any("OperatorsName" in p for p in validate_dataset(original, output, pseudonymiser))


def test_private_attribute_caught(pseudonymiser: Pseudonymiser, pair: tuple[Dataset, Dataset]):
    """A private attribute in the output is a problem."""
    original, output = pair
    output.private_block(0x0029, "SNEAKY", create=True).add_new(0x01, "LO", "x")
    assert any("private" in p for p in validate_dataset(original, output, pseudonymiser))


@pytest.mark.parametrize("bad_uid", ["1.2.03.4", "1.2.3.", "2.25." + "9" * 70, "abc"])
def test_invalid_uid_caught(
    pseudonymiser: Pseudonymiser, pair: tuple[Dataset, Dataset], bad_uid: str
):
    """A malformed or over-long UID anywhere is reported."""
    original, output = pair
    output.BeamSequence[0].add_new(0x00081155, "UI", bad_uid)
    problems = validate_dataset(original, output, pseudonymiser)
    assert any("invalid UID" in p for p in problems)


def test_invalid_changed_value_caught(pseudonymiser: Pseudonymiser, pair: tuple[Dataset, Dataset]):
    """A changed element whose value is invalid for its VR (over-long PN) is reported."""
    original, output = pair
    output.PatientName = "A" * 65 + "^B"
    problems = validate_dataset(original, output, pseudonymiser)
    assert any("invalid PN value in PatientName" in p for p in problems)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda ds: delattr(ds, "PatientIdentityRemoved"), "PatientIdentityRemoved"),
        (lambda ds: setattr(ds, "DeidentificationMethod", "other tool"), "DeidentificationMethod"),
        (lambda ds: delattr(ds, "DeidentificationMethodCodeSequence"), "113100"),
        (lambda ds: delattr(ds, "LongitudinalTemporalInformationModified"), "Longitudinal"),
        (
            lambda ds: setattr(ds.file_meta, "MediaStorageSOPInstanceUID", "1.2.3"),
            "MediaStorageSOPInstanceUID",
        ),
    ],
)
def test_missing_markers_caught(
    pseudonymiser: Pseudonymiser, pair: tuple[Dataset, Dataset], mutate, expected: str
):
    """Each missing or wrong PS3.15 marker is reported."""
    original, output = pair
    mutate(output)
    assert any(expected in p for p in validate_dataset(original, output, pseudonymiser))


def test_unchanged_copy_fails(pseudonymiser: Pseudonymiser, ct: Dataset):
    """The original itself, as an output, fails on many counts."""
    problems = validate_dataset(ct, ct, pseudonymiser)
    assert len(problems) >= 5
    assert any("PatientID" in p for p in problems)


def test_validate_file(tmp_path: Path, settings: Settings, ct: Dataset):
    """validate_file reads both files; a corrupt output is reported as unreadable."""
    original = tmp_path / "orig.dcm"
    output = tmp_path / "out.dcm"
    pydicom.dcmwrite(original, ct, enforce_file_format=True)
    pydicom.dcmwrite(
        output, settings.pseudonymiser.pseudonymise_dataset(ct)[0], enforce_file_format=True
    )
    assert validate_file(original, output, settings=settings) == []
    output.write_bytes(b"garbage")
    assert validate_file(original, output, settings=settings) == [
        "output unreadable (no DICM prefix)"
    ]


def _fully_decoded(path: Path) -> Dataset:
    dataset = pydicom.dcmread(path, force=True)
    for _ in dataset.iterall():  # every value decoded up front, as before the lazy reading
        pass
    return dataset


def _planted(original: Dataset, output: Dataset) -> None:
    """Residues where the lazy reading must still look: nested, in a UN element, in a kept
    text; an invalid changed value; a private attribute with a number."""
    output.BeamSequence[0].BeamDescription = f"for {original.PatientID}"
    output.add_new(0x00081030, "UN", str(original.PatientName).encode())  # StudyDescription
    output.PatientName = "A" * 65 + "^B"
    output.add_new(0x00091010, "LO", "PRIVATE CREATOR")
    output.add_new(0x00091011, "SL", 7)


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("planted", [False, True], ids=["clean", "planted"])
def test_file_reading_finds_what_a_full_decode_finds(
    tmp_path: Path, settings: Settings, pseudonymiser: Pseudonymiser, implicit: bool, planted: bool
):
    """Numbers and binary values are left undecoded when read from a file: same verdict."""
    original = make_instance("rtplan", patient=2)
    original.BeamSequence[0].OperatorsName = "Nested^Operator"
    output = pseudonymiser.pseudonymise_dataset(original)[0]
    if planted:
        _planted(original, output)
    paths = tmp_path / "original.dcm", tmp_path / "output.dcm"
    for dataset, path in zip((original, output), paths, strict=True):
        syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
        dataset.file_meta.TransferSyntaxUID = syntax
        pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    lazily = validate_file(*paths, settings=settings)
    fully = validate_dataset(*(_fully_decoded(p) for p in paths), settings.pseudonymiser)
    assert lazily == fully
    assert bool(lazily) == planted


def _structured_report(items: int) -> Dataset:
    """An SR-like instance: ``items`` text items of about 1 KB, each with its own observer."""
    dataset = make_instance("sr", patient=6)
    words = "no focal lesion seen, stable appearance compared with the prior examination; "
    content = []
    for number in range(items):
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "TEXT"
        item.TextValue = f"finding {number}: " + words * 12
        observer = Dataset()
        observer.RelationshipType = "HAS OBS CONTEXT"
        observer.ValueType = "PNAME"
        observer.PersonName = f"Observer{number:06d}^Quentin"
        item.ContentSequence = [observer]
        content.append(item)
    dataset.ContentSequence = content
    return dataset


def _cpu_seconds_to_validate(tmp_path: Path, settings: Settings, items: int) -> float:
    from airflow_pseudo.pseudonymisation import pseudonymise_files
    from airflow_pseudo.pseudonymisation.validation import validate_output

    tmp_path.mkdir(parents=True, exist_ok=True)
    original = tmp_path / f"sr-{items}.dcm"
    pydicom.dcmwrite(original, _structured_report(items), enforce_file_format=True)
    (result,) = pseudonymise_files([original], tmp_path / f"out-{items}", settings=settings)
    assert result.output is not None
    started = time.process_time()
    verdict = validate_output(original, result.output, settings=settings)
    elapsed = time.process_time() - started
    assert verdict.problems == []
    assert verdict.key_checks == "passed"
    return elapsed


@pytest.mark.slow
def test_validation_time_is_linear_in_the_size_of_a_structured_report(
    tmp_path: Path, key: PseudonymKey
):
    """A ~48 MB report (text kept, a distinct observer per item) against one 8 times smaller:
    linear time takes about 8 times as long, the quadratic search it replaces 64 times."""
    settings = Settings(key=key, keep_keywords=("TextValue",), durability="none")
    small = min(_cpu_seconds_to_validate(tmp_path / str(n), settings, 5_000) for n in range(2))
    large = _cpu_seconds_to_validate(tmp_path / "large", settings, 40_000)
    assert large < 24 * small, (small, large)
    print("linear", small, large)
