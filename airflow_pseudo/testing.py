"""Generated DICOM with fake PHI, for the demo, the test suite and the benchmarks.

Every instance is built from a file bundled with pydicom (nothing is downloaded) and given new
UIDs and invented patient details derived from a few small numbers and a *seed*. The patient
details depend on the numbers only; the UIDs depend on the seed too. :func:`write_corpus` and
:func:`write_ct_copies` draw a fresh seed on every call, so two corpora never share a UID (as two
real exports would not); pass ``seed=`` to get the same bytes again. :func:`make_instance` builds
one instance and takes the seed of its corpus (a fixed one by default), so separate calls with
the same seed make instances of one study. :meth:`FakePatient.planted_values` says exactly which
strings a leak scanner must never find once the data has been pseudonymised.

All names, numbers and addresses are invented; phone numbers use the UK range reserved for drama.

This module imports nothing from Airflow.
"""

from __future__ import annotations

import argparse
import datetime
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

__all__ = [
    "DEFAULT_SEED",
    "TEMPLATES",
    "FakePatient",
    "main",
    "make_instance",
    "new_seed",
    "write_corpus",
    "write_ct_copies",
]

TEMPLATES: dict[str, str] = {
    "ct": "CT_small.dcm",
    "mr": "MR_small.dcm",
    "rtplan": "rtplan.dcm",
    # Reading it warns about an over-long referenced UID, which make_instance replaces.
    "rtdose": "rtdose.dcm",
    # Has neither preamble nor file meta: exercises reading and rewriting such files.
    "rtstruct": "rtstruct.dcm",
    "sr": "test-SR.dcm",
    # JPEG Baseline (Process 1), 8-bit RGB; encapsulated pixel data.
    "jpeg": "SC_rgb_jpeg_dcmtk.dcm",
    # Two RLE Lossless frames; small, unlike the bundled 30-frame ultrasound.
    "multiframe": "SC_rgb_rle_2frame.dcm",
}
"""Short template name -> file name bundled in the pydicom wheel."""

PRIVATE_CREATOR = "ACME 1.0"
"""Private creator of the block at group 0x0011 that carries the patient's name and ID."""
PRIVATE_GROUP = 0x0011

# Everything derived here is keyed on this namespace, so generated UIDs cannot collide with UIDs
# produced the same way for another purpose.
_UID_NAMESPACE = "airflow_pseudo.testing"

# UI attributes that identify instances; other UIDs (SOP classes, coding schemes) are kept.
_FRAME_OF_REFERENCE_KEYWORDS = frozenset({"FrameOfReferenceUID", "ReferencedFrameOfReferenceUID"})
_INSTANCE_UID_KEYWORDS = _FRAME_OF_REFERENCE_KEYWORDS | {
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "ReferencedSOPInstanceUID",
}

_GIVEN_NAMES = (
    ("Alice", "F"),
    ("Bruno", "M"),
    ("Carmen", "F"),
    ("Dmitri", "M"),
    ("Esther", "F"),
    ("Farid", "M"),
    ("Greta", "F"),
    ("Hiroshi", "M"),
)
_NON_ASCII_NAMES = (
    ("Müller^Jürgen", "M"),
    ("Ñúñez^José", "M"),
    ("Øvregård^Åse", "F"),
    ("Dvořák^Zdeňka", "F"),
    ("Çelik^Ayşe", "F"),
    ("Łukasiewicz^Żaneta", "F"),
)
_INITIALS = "QRSTUVWXYZ"
_CLINICIANS = (
    "Quill",
    "Marsh",
    "Okafor",
    "Lindqvist",
    "Baptiste",
    "Ferreira",
    "Nakamura",
    "Volkov",
)
_INSTITUTIONS = (
    ("Example General Hospital", "1 Infirmary Road, Sampletown ZZ1 1AA"),
    ("Sample Royal Infirmary", "2 Hospital Lane, Testbury ZZ2 2BB"),
)
_NON_ASCII_INSTITUTIONS = (
    ("Klinikum Großstadt", "Krankenhausstraße 1, 99999 Musterstadt"),
    ("Hôpital Exemple", "1 rue de l'Hôtel-Dieu, 99999 Villeneuve-Fictive"),
)
# Patient 2 (and every 8th after it) is over 89: ages above 89 are identifying on their own.
_AGES = (45, 93, 37, 61, 28, 74, 52, 8)

# Study dates fall in 2022 before 20 November and birthdays on 20-28 December, so the age on every
# study date is exactly the patient's nominal age.
_STUDY_YEAR = 2022
_FIRST_STUDY_DAY = datetime.date(_STUDY_YEAR, 1, 3)
_STUDY_DAY_SPAN = 320


@dataclass(frozen=True)
class FakePatient:
    """Invented identifying details for one patient, derived from the patient number.

    Per-study identifiers are written as :attr:`accession_number` or :attr:`study_id` followed
    by a two-digit study number, so a substring search for the patient's value finds them all.
    """

    number: int
    name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    address: str
    phone: str
    other_patient_ids: tuple[str, str]
    institution: str
    institution_address: str
    referring_physician: str
    performing_physician: str
    operator: str
    scheduled_physician: str
    accession_number: str
    study_id: str
    source_ae_title: str

    @classmethod
    def for_number(cls, number: int) -> FakePatient:
        """Return the patient numbered `number`; every third one has a non-ASCII name.

        :param number: patient number, 1 or more.
        """
        if number < 1:
            raise ValueError(f"patient numbers start at 1, not {number}")
        non_ascii = number % 3 == 0
        if non_ascii:
            name, sex = _NON_ASCII_NAMES[(number // 3 - 1) % len(_NON_ASCII_NAMES)]
            institution, institution_address = _NON_ASCII_INSTITUTIONS[
                number % len(_NON_ASCII_INSTITUTIONS)
            ]
            address = f"Hauptstraße {number + 10}, 99999 Musterstadt"
        else:
            given, sex = _GIVEN_NAMES[(number - 1) % len(_GIVEN_NAMES)]
            name = f"Testperson^{given}^{_INITIALS[number % len(_INITIALS)]}"
            institution, institution_address = _INSTITUTIONS[number % len(_INSTITUTIONS)]
            address = f"{number + 10} Example Street, Sampletown ZZ{number % 10} 9XX"
        age = _AGES[(number - 1) % len(_AGES)]
        birthday = datetime.date(_STUDY_YEAR - age - 1, 12, 20 + number % 9)

        def clinician(offset: int, given: str) -> str:
            return f"{_CLINICIANS[(number + offset) % len(_CLINICIANS)]}^{given}"

        return cls(
            number=number,
            name=name,
            patient_id=f"MRN{number:06d}",
            birth_date=birthday.strftime("%Y%m%d"),
            sex=sex,
            age=f"{age:03d}Y",
            address=address,
            phone=f"+44 20 7946 0{number % 1000:03d}",
            other_patient_ids=(f"HOSP{number:07d}", f"INS{number * 7919 % 10**8:08d}"),
            institution=institution,
            institution_address=institution_address,
            referring_physician=clinician(0, "Rita"),
            performing_physician=clinician(3, "Paul"),
            operator=clinician(5, "Olga"),
            scheduled_physician=clinician(6, "Sami"),
            accession_number=f"ACC{number:06d}",
            study_id=f"SID{number:05d}",
            source_ae_title=f"ACME_MOD{number:04d}",
        )

    def planted_values(self) -> list[str]:
        """Return every identifying string planted for this patient.

        None of these may appear anywhere in pseudonymised output, including file names.
        """
        return [
            self.name,
            self.patient_id,
            self.birth_date,
            self.address,
            self.phone,
            *self.other_patient_ids,
            self.institution,
            self.institution_address,
            self.referring_physician,
            self.performing_physician,
            self.operator,
            self.scheduled_physician,
            self.accession_number,
            self.study_id,
            self.source_ae_title,
        ]


#: The seed of :func:`make_instance` when none is given.
DEFAULT_SEED = "default"


def new_seed() -> str:
    """Return a fresh random seed: the UIDs of a corpus made with it are new."""
    return secrets.token_hex(8)


def _uid(seed: str, *parts: object) -> UID:
    """Return a UID that depends only on `seed` and `parts`: the same seed gives the same bytes."""
    return generate_uid(entropy_srcs=[_UID_NAMESPACE, seed, *(str(part) for part in parts)])


def _study_start(patient: int, study: int) -> datetime.datetime:
    day = _FIRST_STUDY_DAY + datetime.timedelta(days=(patient * 37 + study * 53) % _STUDY_DAY_SPAN)
    return datetime.datetime.combine(
        day, datetime.time(8 + (patient + study) % 9, (patient * 13 + study * 7) % 60)
    )


def _read_template(template: str) -> Dataset:
    """Read a bundled template with text decoded and complete file meta."""
    try:
        file_name = TEMPLATES[template]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise ValueError(f"unknown template {template!r}; choose one of {known}") from None
    path = get_testdata_file(file_name, download=False)
    if path is None:
        raise FileNotFoundError(f"{file_name} is not bundled with pydicom {pydicom.__version__}")
    # force: rtstruct.dcm has neither preamble nor file meta.
    ds = pydicom.dcmread(path, force=True)
    # Decode every text value now, under the template's own character set, so that changing
    # SpecificCharacterSet later cannot re-interpret values that have not been read yet.
    ds.decode()
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit_vr, _ = ds.original_encoding
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
        )
    return ds


def _replace_uids(
    ds: Dataset, new: Mapping[str, str], frame_of_reference: str, other: Callable[[str], str]
) -> None:
    """Replace instance UIDs at any depth, keeping references within the template consistent.

    Frame of reference UIDs all become `frame_of_reference`, values in `new` are mapped through
    it, and any other referenced instance UID is replaced by ``other(old)``.
    """

    def callback(_: Dataset, elem: pydicom.DataElement) -> None:
        if elem.keyword not in _INSTANCE_UID_KEYWORDS or elem.is_empty:
            return
        if elem.keyword in _FRAME_OF_REFERENCE_KEYWORDS:
            elem.value = frame_of_reference
        else:
            elem.value = new.get(elem.value) or other(elem.value)

    ds.walk(callback)


def _plant_phi(
    ds: Dataset, patient: FakePatient, *, study: int, series: int, instance: int
) -> None:
    """Overwrite the template's demographics with `patient`'s, in all the usual hiding places."""
    start = _study_start(patient.number, study)
    series_start = start + datetime.timedelta(minutes=5 * series)
    content = series_start + datetime.timedelta(seconds=instance)

    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = patient.age
    ds.PatientAddress = patient.address
    ds.PatientTelephoneNumbers = patient.phone
    ds.OtherPatientIDs = list(patient.other_patient_ids)
    ds.InstitutionName = patient.institution
    ds.InstitutionAddress = patient.institution_address
    ds.ReferringPhysicianName = patient.referring_physician
    ds.PerformingPhysicianName = patient.performing_physician
    ds.OperatorsName = patient.operator
    ds.AccessionNumber = f"{patient.accession_number}{study:02d}"
    ds.StudyID = f"{patient.study_id}{study:02d}"
    ds.StudyDate = start.strftime("%Y%m%d")
    ds.StudyTime = start.strftime("%H%M%S")
    ds.SeriesDate = series_start.strftime("%Y%m%d")
    ds.SeriesTime = series_start.strftime("%H%M%S")
    ds.ContentDate = content.strftime("%Y%m%d")
    ds.ContentTime = content.strftime("%H%M%S")
    if "AcquisitionDate" in ds:
        ds.AcquisitionDate = content.strftime("%Y%m%d")

    # A PN two sequence levels down, for checking that processing recurses into items.
    step = Dataset()
    step.ScheduledProcedureStepID = f"SPS{study:02d}{series:02d}"
    step.ScheduledPerformingPhysicianName = patient.scheduled_physician
    request = Dataset()
    request.RequestedProcedureID = f"RP{patient.accession_number}{study:02d}"
    request.ScheduledProcedureStepID = step.ScheduledProcedureStepID
    request.ScheduledProcedureStepSequence = [step]
    ds.RequestAttributesSequence = [request]

    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", patient.name)
    block.add_new(0x02, "LO", patient.patient_id)

    ds.file_meta.SourceApplicationEntityTitle = patient.source_ae_title
    if not all(value.isascii() for value in patient.planted_values()):
        ds.SpecificCharacterSet = "ISO_IR 192"


def make_instance(
    template: str = "ct",
    *,
    patient: int = 1,
    study: int = 1,
    series: int = 1,
    instance: int = 1,
    with_phi: bool = True,
    seed: str = DEFAULT_SEED,
) -> Dataset:
    """Return a bundled template re-identified as one instance of a generated study.

    UIDs depend only on the seed and the numbers (and the template, for series and instances),
    so instances of one study share StudyInstanceUID and FrameOfReferenceUID and instances of one
    series share SeriesInstanceUID. A frame of reference is only given to templates that have one.

    :param template: a key of :data:`TEMPLATES`.
    :param patient: patient number; selects the :class:`FakePatient`.
    :param study: study number within the patient.
    :param series: series number within the study.
    :param instance: instance number within the series.
    :param with_phi: plant the patient's fake PHI; if false only the UIDs change and the
        template's own (already fictitious) demographics stay.
    :param seed: the corpus's seed; the same seed and numbers give the same UIDs.
    """
    ds = _read_template(template)
    study_uid = _uid(seed, "study", patient, study)
    series_uid = _uid(seed, "series", patient, study, series, template)
    sop_uid = _uid(seed, "instance", patient, study, series, instance, template)
    new = {
        ds.StudyInstanceUID: study_uid,
        ds.SeriesInstanceUID: series_uid,
        ds.SOPInstanceUID: sop_uid,
    }
    _replace_uids(
        ds,
        new,
        frame_of_reference=_uid(seed, "frame-of-reference", patient, study),
        other=lambda old: _uid(seed, "reference", patient, study, old),
    )
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.SeriesNumber = series
    ds.InstanceNumber = instance
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    if with_phi:
        _plant_phi(
            ds, FakePatient.for_number(patient), study=study, series=series, instance=instance
        )
    return ds


def _file_name(patient: int, study: int, series: int, instance: int) -> str:
    """Return a file name made of generator numbers only, never of patient details."""
    return f"pt{patient:03d}-st{study:02d}-se{series:02d}-im{instance:05d}.dcm"


def _write(ds: Dataset, path: Path) -> Path:
    """Write `ds` under a ``.part`` name first, so a directory watcher never sees half a file."""
    partial = path.with_name(f"{path.name}.part")
    pydicom.dcmwrite(partial, ds, enforce_file_format=True)
    os.replace(partial, path)
    return path


def write_corpus(
    directory: str | os.PathLike[str],
    *,
    patients: int = 3,
    studies_per_patient: int = 1,
    series_per_study: int = 2,
    instances_per_series: int = 2,
    templates: Sequence[str] = ("ct", "mr"),
    with_phi: bool = True,
    seed: str | None = None,
) -> list[Path]:
    """Write a small multi-patient corpus into `directory` and return the sorted file paths.

    Successive series, counted across the whole corpus, cycle through `templates`, so every
    template is used once there are enough series.

    :param directory: created if missing; existing files with the same names are replaced.
    :param patients: number of patients, numbered from 1.
    :param studies_per_patient: studies for each patient.
    :param series_per_study: series in each study.
    :param instances_per_series: instances in each series.
    :param templates: keys of :data:`TEMPLATES`.
    :param with_phi: plant fake PHI (see :func:`make_instance`).
    :param seed: the UIDs' seed: the same seed gives the same bytes. Defaults to a fresh one, so
        every call makes new UIDs.
    """
    seed = new_seed() if seed is None else seed
    if not templates:
        raise ValueError("templates must name at least one template")
    unknown = sorted(set(templates) - TEMPLATES.keys())
    if unknown:
        raise ValueError(f"unknown templates {unknown}; choose from {sorted(TEMPLATES)}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    series_count = 0
    for patient in range(1, patients + 1):
        for study in range(1, studies_per_patient + 1):
            for series in range(1, series_per_study + 1):
                template = templates[series_count % len(templates)]
                series_count += 1
                for instance in range(1, instances_per_series + 1):
                    ds = make_instance(
                        template,
                        patient=patient,
                        study=study,
                        series=series,
                        instance=instance,
                        with_phi=with_phi,
                        seed=seed,
                    )
                    path = root / _file_name(patient, study, series, instance)
                    written.append(_write(ds, path))
    return sorted(written)


def write_ct_copies(
    directory: str | os.PathLike[str], count: int, *, seed: str | None = None
) -> list[Path]:
    """Write `count` CT_small.dcm instances of one series of one patient: the benchmark corpus.

    :param directory: created if missing.
    :param count: number of instances.
    :param seed: the UIDs' seed; defaults to a fresh one (see :func:`write_corpus`).
    """
    seed = new_seed() if seed is None else seed
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    written = [
        _write(
            make_instance("ct", instance=instance, seed=seed), root / _file_name(1, 1, 1, instance)
        )
        for instance in range(1, count + 1)
    ]
    return sorted(written)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: write a corpus and report how many files were written."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_pseudo.testing",
        description="Write generated DICOM with fake PHI, built from pydicom's bundled files.",
    )
    parser.add_argument("output_dir", type=Path, help="directory to write into")
    parser.add_argument("--patients", type=int, default=3, help="number of patients (3)")
    parser.add_argument("--studies", type=int, default=1, help="studies per patient (1)")
    parser.add_argument("--series", type=int, default=2, help="series per study (2)")
    parser.add_argument("--instances", type=int, default=2, help="instances per series (2)")
    parser.add_argument(
        "--templates",
        default="ct,mr",
        help=f"comma-separated templates, cycled per series (ct,mr); from {','.join(TEMPLATES)}",
    )
    parser.add_argument("--no-phi", action="store_true", help="do not plant fake PHI")
    parser.add_argument(
        "--seed", help="seed of the UIDs, to write the same files again (default: a new one)"
    )
    args = parser.parse_args(argv)
    templates = [name.strip() for name in args.templates.split(",") if name.strip()]
    unknown = sorted(set(templates) - TEMPLATES.keys())
    if not templates or unknown:
        parser.error(f"--templates: unknown or missing {unknown}; choose from {sorted(TEMPLATES)}")
    paths = write_corpus(
        args.output_dir,
        patients=args.patients,
        studies_per_patient=args.studies,
        series_per_study=args.series,
        instances_per_series=args.instances,
        templates=templates,
        with_phi=not args.no_phi,
        seed=args.seed,
    )
    print(f"wrote {len(paths)} files to {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
