"""Tests for the generated sample DICOM with fake PHI."""

from __future__ import annotations

import datetime
import io
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file

from airflow_pseudo.testing import (
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    TEMPLATES,
    FakePatient,
    main,
    make_instance,
    write_corpus,
    write_ct_copies,
)

# rtdose.dcm carries a 65-character referenced SOP Instance UID; reading it warns, and
# make_instance replaces it with a valid one.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")

INSTANCE_UID_KEYWORDS = {
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "ReferencedFrameOfReferenceUID",
    "ReferencedSOPInstanceUID",
}


def _read_template(template: str) -> Dataset:
    path = get_testdata_file(TEMPLATES[template], download=False)
    assert isinstance(path, str)
    return pydicom.dcmread(path, force=True)


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _instance_uids(ds: Dataset) -> set[str]:
    found: set[str] = set()

    def callback(_: Dataset, elem: pydicom.DataElement) -> None:
        if elem.keyword in INSTANCE_UID_KEYWORDS and not elem.is_empty:
            found.add(str(elem.value))

    ds.walk(callback)
    return found


@pytest.mark.parametrize("template", sorted(TEMPLATES))
class TestMakeInstance:
    def test_template_is_bundled(self, template: str):
        """Every template ships in the pydicom wheel, so nothing is ever downloaded."""
        assert get_testdata_file(TEMPLATES[template], download=False) is not None

    @pytest.mark.parametrize("patient", [1, 3])
    def test_round_trips_with_planted_phi(self, template: str, patient: int):
        """The instance writes as a DICOM file, reads back strictly and carries every planted
        value, for both an ASCII and a non-ASCII patient."""
        fake = FakePatient.for_number(patient)
        ds = make_instance(template, patient=patient)
        # Checked before writing: dcmwrite would quietly repair the file meta.
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        data = _encode(ds)
        assert data[128:132] == b"DICM"
        back = pydicom.dcmread(io.BytesIO(data))
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
        assert back.file_meta.MediaStorageSOPClassUID == back.SOPClassUID
        assert back.file_meta.SourceApplicationEntityTitle == fake.source_ae_title
        assert back.PatientName == fake.name
        assert back.PatientID == fake.patient_id
        assert back.OtherPatientIDs == list(fake.other_patient_ids)
        assert back.AccessionNumber.startswith(fake.accession_number)
        step = back.RequestAttributesSequence[0].ScheduledProcedureStepSequence[0]
        assert step.ScheduledPerformingPhysicianName == fake.scheduled_physician
        # Implicit VR files read the unknown private element back as UN bytes.
        private_name = back.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x01].value
        if isinstance(private_name, bytes):
            private_name = private_name.decode("utf-8").rstrip(" ")
        assert private_name == fake.name
        encoding = "utf-8" if back.get("SpecificCharacterSet") == "ISO_IR 192" else "ascii"
        missing = [v for v in fake.planted_values() if v.encode(encoding) not in data]
        assert missing == []

    def test_uids_are_new_and_references_follow(self, template: str):
        """No instance UID of the template survives, and in-file references to the template's
        own study, series or instance point at the new UIDs."""
        old = _instance_uids(_read_template(template))
        ds = make_instance(template)
        assert old
        assert old.isdisjoint(_instance_uids(ds))
        assert all(pydicom.uid.UID(uid).is_valid for uid in _instance_uids(ds))

    def test_without_phi_only_uids_change(self, template: str):
        """with_phi=False keeps the template's own demographics and plants nothing."""
        original = _read_template(template)
        ds = make_instance(template, with_phi=False)
        assert ds.PatientName == original.PatientName
        assert ds.SOPInstanceUID != original.SOPInstanceUID
        assert "RequestAttributesSequence" not in ds
        data = _encode(ds)
        leaked = [v for v in FakePatient.for_number(1).planted_values() if v.encode() in data]
        assert leaked == []


class TestUids:
    def test_consistent_within_study_and_series(self):
        """Instances share the UIDs of the study and series they belong to, and nothing else."""
        a = make_instance("ct", patient=1, study=1, series=1, instance=1)
        b = make_instance("ct", patient=1, study=1, series=1, instance=2)
        c = make_instance("mr", patient=1, study=1, series=2, instance=1)
        other_study = make_instance("ct", patient=1, study=2, series=1, instance=1)
        other_patient = make_instance("ct", patient=2, study=1, series=1, instance=1)
        assert a.StudyInstanceUID == b.StudyInstanceUID == c.StudyInstanceUID
        assert a.FrameOfReferenceUID == b.FrameOfReferenceUID == c.FrameOfReferenceUID
        assert a.SeriesInstanceUID == b.SeriesInstanceUID != c.SeriesInstanceUID
        sops = {ds.SOPInstanceUID for ds in (a, b, c, other_study, other_patient)}
        assert len(sops) == 5
        studies = {ds.StudyInstanceUID for ds in (a, other_study, other_patient)}
        assert len(studies) == 3
        assert a.FrameOfReferenceUID != other_study.FrameOfReferenceUID

    def test_same_template_different_series_numbers(self):
        """The template takes part in series and instance UIDs, so two templates never share
        a SOP Instance UID even with the same numbers."""
        assert make_instance("ct").SOPInstanceUID != make_instance("mr").SOPInstanceUID
        assert make_instance("ct").SeriesInstanceUID != make_instance("mr").SeriesInstanceUID

    def test_deterministic(self):
        """The same arguments give the same dataset, UIDs included."""
        assert _encode(make_instance("sr", patient=4, study=2)) == _encode(
            make_instance("sr", patient=4, study=2)
        )

    def test_seed_changes_every_uid(self):
        """Another seed gives other UIDs for the same numbers; the patient stays the same."""
        first, second = make_instance("ct", seed="a"), make_instance("ct", seed="b")
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert first[keyword].value != second[keyword].value
        assert first.PatientName == second.PatientName

    def test_rt_objects_share_the_study_frame_of_reference(self):
        """An RT structure set references the frame of reference of the images it contours."""
        ct = make_instance("ct", patient=2, series=1)
        rtstruct = make_instance("rtstruct", patient=2, series=2)
        rtdose = make_instance("rtdose", patient=2, series=3)
        referenced = rtstruct.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
        assert referenced == ct.FrameOfReferenceUID == rtdose.FrameOfReferenceUID
        roi_refs = {item.ReferencedFrameOfReferenceUID for item in rtstruct.StructureSetROISequence}
        assert roi_refs == {ct.FrameOfReferenceUID}

    def test_file_without_meta_gets_complete_meta(self):
        """rtstruct.dcm has no file meta; the generated one has a transfer syntax and reads
        back without force."""
        data = _encode(make_instance("rtstruct"))
        back = pydicom.dcmread(io.BytesIO(data))
        assert back.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
        assert back.Modality == "RTSTRUCT"


class TestFakePatient:
    def test_every_third_patient_has_a_non_ascii_name(self):
        names = {n: FakePatient.for_number(n).name for n in range(1, 13)}
        assert [n for n, name in names.items() if not name.isascii()] == [3, 6, 9, 12]
        assert names[3] == "Müller^Jürgen"
        assert names[1].startswith("Testperson^")

    def test_deterministic_and_distinct(self):
        assert FakePatient.for_number(5) == FakePatient.for_number(5)
        ids = {FakePatient.for_number(n).patient_id for n in range(1, 50)}
        assert len(ids) == 49

    def test_one_of_the_default_patients_is_over_89(self):
        """Ages over 89 are identifying on their own, so the default corpus includes one."""
        assert [FakePatient.for_number(n).age for n in (1, 2, 3)] == ["045Y", "093Y", "037Y"]

    @pytest.mark.parametrize("patient", range(1, 10))
    @pytest.mark.parametrize("study", [1, 2, 7])
    def test_age_matches_birth_date_on_study_date(self, patient: int, study: int):
        """PatientAge, PatientBirthDate and StudyDate agree, as they would in real data."""
        ds = make_instance("mr", patient=patient, study=study)
        born = datetime.datetime.strptime(ds.PatientBirthDate, "%Y%m%d").date()
        seen = datetime.datetime.strptime(ds.StudyDate, "%Y%m%d").date()
        years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
        assert ds.PatientAge == f"{years:03d}Y"

    def test_planted_values_are_distinctive(self):
        """Short or empty values would make a leak scanner report false positives."""
        values = FakePatient.for_number(1).planted_values()
        assert all(len(v) >= 8 for v in values)
        assert len(set(values)) == len(values)

    def test_values_fit_their_vrs(self):
        """Planting never triggers pydicom's value validation (lengths, characters)."""
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for patient in range(1, 25):
                make_instance("ct", patient=patient, study=patient, series=3, instance=patient)

    def test_rejects_patient_zero(self):
        with pytest.raises(ValueError, match="start at 1"):
            FakePatient.for_number(0)


class TestNonAsciiPatient:
    def test_round_trips_with_utf8_charset(self, tmp_path: Path):
        """A non-ASCII name is written as UTF-8 under ISO_IR 192 and reads back unchanged."""
        path = tmp_path / "x.dcm"
        pydicom.dcmwrite(path, make_instance("ct", patient=3), enforce_file_format=True)
        data = path.read_bytes()
        back = pydicom.dcmread(path)
        assert back.SpecificCharacterSet == "ISO_IR 192"
        assert back.PatientName == "Müller^Jürgen"
        assert back.InstitutionName == FakePatient.for_number(3).institution
        assert "Müller^Jürgen".encode() in data
        assert "Müller".encode("latin-1") not in data

    def test_ascii_patient_keeps_template_charset(self):
        """CT_small.dcm declares ISO_IR 100; an ASCII patient does not change that."""
        assert make_instance("ct", patient=1).SpecificCharacterSet == "ISO_IR 100"


class TestWriteCorpus:
    def test_layout_and_contents(self, tmp_path: Path):
        paths = write_corpus(tmp_path, patients=3, studies_per_patient=2)
        assert len(paths) == 3 * 2 * 2 * 2
        assert paths == sorted(paths)
        assert sorted(tmp_path.iterdir()) == paths
        datasets = [pydicom.dcmread(p) for p in paths]
        assert {ds.Modality for ds in datasets} == {"CT", "MR"}
        assert len({ds.SOPInstanceUID for ds in datasets}) == len(paths)
        assert len({ds.StudyInstanceUID for ds in datasets}) == 3 * 2
        assert {str(ds.PatientID) for ds in datasets} == {"MRN000001", "MRN000002", "MRN000003"}

    def test_file_names_carry_no_phi(self, tmp_path: Path):
        paths = write_corpus(tmp_path, patients=6, templates=("ct", "sr"))
        planted = [v for n in range(1, 7) for v in FakePatient.for_number(n).planted_values()]
        names = [str(p.relative_to(tmp_path)) for p in paths]
        leaked = [(v, name) for name in names for v in planted if v.lower() in name.lower()]
        assert leaked == []
        assert all(name.isascii() for name in names)

    def test_templates_cycle_across_series(self, tmp_path: Path):
        """With more templates than series per study, every template is still used."""
        templates = ("ct", "rtplan", "jpeg")
        paths = write_corpus(
            tmp_path, patients=2, series_per_study=2, instances_per_series=1, templates=templates
        )
        modalities = [pydicom.dcmread(p).Modality for p in paths]
        assert modalities == ["CT", "RTPLAN", "OT", "CT"]

    def test_deterministic_with_a_seed(self, tmp_path: Path):
        """Two runs with the same seed give the same names and the same bytes."""
        first = write_corpus(tmp_path / "a", templates=("ct", "mr", "sr"), seed="s1")
        second = write_corpus(tmp_path / "b", templates=("ct", "mr", "sr"), seed="s1")
        assert [p.name for p in first] == [p.name for p in second]
        assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]

    def test_new_uids_on_every_call(self, tmp_path: Path):
        """Without a seed, two corpora share no UID (as two real exports would not)."""

        def uids(paths: list[Path]) -> set[str]:
            found: set[str] = set()
            for path in paths:
                ds = pydicom.dcmread(path)
                found |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
            return found

        first = write_corpus(tmp_path / "a", patients=1)
        second = write_corpus(tmp_path / "b", patients=1)
        assert [p.name for p in first] == [p.name for p in second]
        assert uids(first).isdisjoint(uids(second))
        third = write_ct_copies(tmp_path / "c", 2)
        fourth = write_ct_copies(tmp_path / "d", 2)
        assert uids(third).isdisjoint(uids(fourth))

    def test_unknown_template_writes_nothing(self, tmp_path: Path):
        with pytest.raises(ValueError, match="unknown templates"):
            write_corpus(tmp_path / "out", templates=("ct", "pet"))
        assert not (tmp_path / "out").exists()


def test_write_ct_copies(tmp_path: Path):
    """The benchmark corpus: one CT series with a distinct instance UID per file."""
    paths = write_ct_copies(tmp_path, 5)
    assert len(paths) == 5
    datasets = [pydicom.dcmread(p) for p in paths]
    assert {ds.Modality for ds in datasets} == {"CT"}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 5
    assert [int(ds.InstanceNumber) for ds in datasets] == [1, 2, 3, 4, 5]


class TestCli:
    def test_writes_and_reports(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        out = tmp_path / "corpus"
        assert main([str(out), "--patients", "2", "--templates", "ct,sr"]) == 0
        assert capsys.readouterr().out.strip() == f"wrote 8 files to {out}"
        assert len(list(out.glob("*.dcm"))) == 8

    def test_rejects_unknown_template(self, tmp_path: Path):
        with pytest.raises(SystemExit) as excinfo:
            main([str(tmp_path), "--templates", "ct,nope"])
        assert excinfo.value.code == 2

    def test_runs_as_module(self, tmp_path: Path):
        result = subprocess.run(
            [sys.executable, "-m", "airflow_pseudo.testing", str(tmp_path), "--patients", "1"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.startswith("wrote 4 files")


def test_imports_nothing_from_airflow():
    """The demo and benchmarks use this module without paying for an Airflow import."""
    code = (
        "import sys, airflow_pseudo.testing; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
