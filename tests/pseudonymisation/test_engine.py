"""Tests for the engine: traversal at every depth, UIDs, dates, markers and file meta."""

from __future__ import annotations

import copy
import datetime
import io
import json
import subprocess
import sys
from collections.abc import Callable

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from airflow_pseudo import __version__
from airflow_pseudo.pseudonymisation import (
    BurnedInAnnotationError,
    PseudonymisationError,
    Pseudonymiser,
    PseudonymKey,
    default_profile,
    engine,
    keyword_profile,
    pymedphys_profile,
)
from airflow_pseudo.pseudonymisation.engine import IMPLEMENTATION_CLASS_UID, is_registered_uid
from airflow_pseudo.pseudonymisation.sources import UID_PATTERN, KeyedSource, PyMedPhysSource
from airflow_pseudo.testing import FakePatient, make_instance

# rtdose.dcm carries a 65-character referenced UID; reading it warns (make_instance replaces it).
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

TEMPLATES = ["ct", "mr", "rtplan", "rtdose", "rtstruct", "sr"]
AllTexts = Callable[[Dataset], str]


def run(pseudonymiser: Pseudonymiser, ds: Dataset) -> Dataset:
    """Pseudonymise a copy of ``ds``."""
    return pseudonymiser.pseudonymise_dataset(ds)[0]


def roundtrip(ds: Dataset) -> Dataset:
    """Write ``ds`` as a DICOM file and read it back."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def uids(ds: Dataset) -> dict[str, list[str]]:
    """Every UI value of a dataset at any depth, by keyword."""
    found: dict[str, list[str]] = {}
    for element in ds.iterall():
        if element.VR == "UI" and element.value:
            values = element.value if element.VM > 1 else [element.value]
            found.setdefault(element.keyword, []).extend(str(v) for v in values)
    return found


class TestNoResidue:
    @pytest.mark.parametrize("template", TEMPLATES)
    @pytest.mark.parametrize("patient", [1, 2, 3])
    def test_planted_values_absent(
        self, pseudonymiser: Pseudonymiser, all_texts: AllTexts, template: str, patient: int
    ):
        """No planted PHI survives anywhere (file meta, nested items), even after writing."""
        ds = make_instance(template, patient=patient)
        out = roundtrip(run(pseudonymiser, ds))
        text = all_texts(out).casefold()
        for value in FakePatient.for_number(patient).planted_values():
            assert value.casefold() not in text, value
        for part in FakePatient.for_number(patient).name.split("^"):
            if len(part) >= 4:  # initials recur by chance
                assert part.casefold() not in text, part

    def test_input_dataset_unchanged(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """pseudonymise_dataset returns a copy and leaves its input exactly as it was."""
        before = copy.deepcopy(ct)
        run(pseudonymiser, ct)
        assert ct == before
        assert ct.file_meta == before.file_meta

    def test_nested_pn_pseudonymised(self, pseudonymiser: Pseudonymiser):
        """Identifying values two sequence levels down are pseudonymised (PyMedPhys #922)."""
        ds = make_instance("rtplan")
        inner = ds.BeamSequence[0].ControlPointSequence[0]
        inner.OperatorsName = "Deep^Nested"
        inner.PatientID = ds.PatientID
        ds.BeamSequence[0].InstitutionName = "Nested Institution"
        out = run(pseudonymiser, ds)
        inner_out = out.BeamSequence[0].ControlPointSequence[0]
        assert "Deep" not in str(inner_out.OperatorsName) and str(inner_out.OperatorsName)
        assert inner_out.PatientID == out.PatientID != ds.PatientID
        assert out.BeamSequence[0].InstitutionName not in ("", "Nested Institution")


class TestKeepAndOptions:
    def test_patient_sex_kept(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """PatientSex is kept (PyMedPhys hashes it by mistake via list('PatientSex'), defect 1)."""
        assert run(pseudonymiser, ct).PatientSex == ct.PatientSex

    def test_patient_sex_kept_by_pymedphys_profile(self, ct: Dataset):
        """The pymedphys profile keeps PatientSex too, as the seed's docstring says."""
        pseudonymiser = Pseudonymiser(PyMedPhysSource("pepper", 775), pymedphys_profile())
        assert run(pseudonymiser, ct).PatientSex == ct.PatientSex

    def test_patient_characteristics_kept_age_jittered(self, pseudonymiser: Pseudonymiser):
        """Weight, size and other characteristics are kept; PatientAge is jittered by <= 2."""
        ds = make_instance("ct")
        ds.PatientWeight = "73.2"
        ds.PatientSize = "1.81"
        ds.EthnicGroup = "ZZ"
        ds.SmokingStatus = "NO"
        ds.PatientAge = "045Y"
        out = run(pseudonymiser, ds)
        assert (out.PatientWeight, out.PatientSize, out.EthnicGroup, out.SmokingStatus) == (
            ds.PatientWeight,
            ds.PatientSize,
            "ZZ",
            "NO",
        )
        assert out.PatientAge.endswith("Y") and abs(int(out.PatientAge[:3]) - 45) <= 2

    def test_keep_list_beats_every_rule(self, source: KeyedSource, ct: Dataset):
        """A keyword on the caller's keep list is kept, even a seed identifying keyword."""
        pseudonymiser = Pseudonymiser(source, default_profile(["PatientName", "StudyDate"]))
        out = run(pseudonymiser, ct)
        assert out.PatientName == ct.PatientName
        assert out.StudyDate == ct.StudyDate
        assert out.PatientID != ct.PatientID

    def test_unknown_keep_keyword_refused(self):
        """A keep list naming a non-keyword is a configuration error, not silently ignored."""
        from airflow_pseudo.pseudonymisation import ConfigurationError

        with pytest.raises(ConfigurationError, match="NotAKeyword"):
            default_profile(["NotAKeyword"])


class TestRemoval:
    @pytest.mark.parametrize("name", ["nested_priv_SQ.dcm", "priv_SQ.dcm"])
    def test_private_tags_removed_at_every_depth(
        self, pseudonymiser: Pseudonymiser, testdata: Callable[[str], Dataset], name: str
    ):
        """Private attributes are removed at every depth, including inside private sequences."""
        ds = testdata(name)
        assert any(e.tag.is_private for e in ds.iterall())
        out = run(pseudonymiser, ds)
        assert not any(e.tag.is_private for e in out.iterall())

    def test_private_tags_removed_in_public_sequence(self, pseudonymiser: Pseudonymiser):
        """A private block inside a public sequence item is removed."""
        ds = make_instance("ct")
        item = Dataset()
        item.private_block(0x0009, "ACME", create=True).add_new(0x01, "LO", "Secret^Name")
        ds.ReferencedImageSequence = [item]
        out = run(pseudonymiser, ds)
        assert not any(e.tag.is_private for e in out.iterall())

    def test_unknown_and_group_length_tags_removed_at_depth(self, pseudonymiser: Pseudonymiser):
        """Tags missing from the dictionary and group lengths go at every depth (defect 11)."""
        ds = make_instance("rtplan")
        ds.add_new(0x300A9999, "LO", "top unknown")
        ds.add_new(0x00080000, "UL", 1234)
        ds.BeamSequence[0].add_new(0x300A9999, "LO", "nested unknown")
        ds.BeamSequence[0].add_new(0x300A0000, "UL", 12)
        out = run(pseudonymiser, ds)
        tags = {e.tag for e in out.iterall()}
        assert 0x300A9999 not in tags
        assert 0x00080000 not in tags and 0x300A0000 not in tags

    def test_overlays_and_curves_removed(self, pseudonymiser: Pseudonymiser):
        """Overlay (60xx) and curve (50xx) groups are removed entirely."""
        ds = make_instance("ct")
        for group in (0x6000, 0x6002):
            ds.add_new((group << 16) | 0x0010, "US", 8)
            ds.add_new((group << 16) | 0x0022, "LO", "overlay description")
            ds.add_new((group << 16) | 0x3000, "OW", b"\x00\x01" * 4)
        ds.add_new(0x50000005, "US", 2)
        out = run(pseudonymiser, ds)
        assert not [e for e in out if (e.tag.group & 0xFF00) in (0x5000, 0x6000)]

    def test_request_attributes_sequence_removed(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """The Basic Profile removes RequestAttributesSequence (X), nested PN with it."""
        assert "RequestAttributesSequence" not in run(pseudonymiser, ct)


class TestMultiValued:
    def test_other_patient_ids_value_by_value(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """A multi-valued LO gives one pseudonym per value (PyMedPhys hashed the list repr)."""
        out = run(pseudonymiser, ct)
        assert len(out.OtherPatientIDs) == 2
        assert out.OtherPatientIDs[0] != out.OtherPatientIDs[1]
        single = make_instance("ct")
        single.OtherPatientIDs = ct.OtherPatientIDs[1]
        assert run(pseudonymiser, single).OtherPatientIDs == out.OtherPatientIDs[1]

    def test_multi_valued_pn(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """A multi-valued PN is pseudonymised per name (PyMedPhys raised AttributeError)."""
        ct.PerformingPhysicianName = ["Quill^Paul", "Marsh^Rita", "Quill^Paul"]
        out = run(pseudonymiser, ct)
        names = [str(n) for n in out.PerformingPhysicianName]
        assert len(names) == 3 and names[0] == names[2] != names[1]
        assert all(len(n) <= 64 and "Quill" not in n for n in names)

    def test_multi_valued_ui(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """A multi-valued UI is remapped per UID (PyMedPhys raised AttributeError)."""
        originals = [generate_uid(), generate_uid()]
        ct.FailedSOPInstanceUIDList = originals
        out = run(pseudonymiser, ct)
        new = list(out.FailedSOPInstanceUIDList)
        assert len(new) == 2 and not set(new) & set(originals)
        assert all(UID_PATTERN.match(u) for u in new)

    def test_empty_values_left_empty(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """Empty identifying elements stay present and empty."""
        ct.PatientBirthDate = ""
        ct.AccessionNumber = ""
        ct.OtherPatientIDs = []
        out = run(pseudonymiser, ct)
        assert out.PatientBirthDate == "" and out.AccessionNumber == ""
        assert not out.OtherPatientIDs


class TestUIDs:
    def test_instance_uids_remapped_and_valid(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """Study, series, instance and frame of reference UIDs become valid 2.25 UIDs."""
        out = run(pseudonymiser, ct)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            new = str(out[keyword].value)
            assert new != ct[keyword].value
            assert new.startswith("2.25.") and len(new) <= 64 and UID_PATTERN.match(new)
        assert out.FrameOfReferenceUID != ct.FrameOfReferenceUID

    def test_org_root(self, key: PseudonymKey, ct: Dataset):
        """With an org root, remapped UIDs sit under it."""
        root = "1.2.826.0.1.3680043.10.999"
        out = run(Pseudonymiser(KeyedSource(key, uid_root=root), default_profile()), ct)
        assert str(out.SOPInstanceUID).startswith(root + ".")
        assert len(out.SOPInstanceUID) <= 64

    def test_remembered_uids_stay_bounded_and_mappings_stable(
        self, pseudonymiser: Pseudonymiser, monkeypatch: pytest.MonkeyPatch
    ):
        """A worker sees millions of UIDs: memory stays bounded and a pseudonym never changes."""
        monkeypatch.setattr(engine, "UID_CACHE_ENTRIES", 10)
        context = pseudonymiser.context_for("PATIENT", None)
        first = [pseudonymiser.remap_uid(f"1.2.3.{i}", context) for i in range(25)]
        assert len(pseudonymiser._uid_map) <= 10
        assert [pseudonymiser.remap_uid(f"1.2.3.{i}", context) for i in range(25)] == first

    def test_registered_uids_never_remapped(self, pseudonymiser: Pseudonymiser):
        """SOP classes, transfer syntaxes and coding scheme UIDs are kept at every depth.

        Only pydicom's UID dictionary makes a UID registered: the context group UID below
        starts with the DICOM root but is not in it, so it is remapped like an instance UID.
        """
        ds = make_instance("rtdose")
        code = Dataset()
        code.CodeValue = "113100"
        code.CodingSchemeDesignator = "DCM"
        code.CodingSchemeUID = "1.2.840.10008.2.16.4"
        code.ContextUID = "1.2.840.10008.6.1.1"
        ds.ReferencedSOPInstanceUID = "1.2.840.10008.1.2"  # a registered UID in an instance slot
        ds.PurposeOfReferenceCodeSequence = [code]
        out = run(pseudonymiser, ds)
        assert out.SOPClassUID == ds.SOPClassUID
        assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert out.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert out.ReferencedSOPInstanceUID == "1.2.840.10008.1.2"
        assert out.PurposeOfReferenceCodeSequence[0].CodingSchemeUID == "1.2.840.10008.2.16.4"
        context_uid = out.PurposeOfReferenceCodeSequence[0].ContextUID
        assert context_uid == pseudonymiser.remap_uid(
            "1.2.840.10008.6.1.1", pseudonymiser.context_for(None, None)
        )
        assert not context_uid.startswith("1.2.840.10008.")
        for seq in out.ReferencedRTPlanSequence:
            assert seq.ReferencedSOPClassUID == ds.ReferencedRTPlanSequence[0].ReferencedSOPClassUID

    def test_is_registered_uid(self):
        """Standard UIDs are recognised as registered, instance UIDs are not."""
        assert is_registered_uid(CTImageStorage)
        assert is_registered_uid("1.2.840.10008.1.2.4.50")
        assert not is_registered_uid("1.3.6.1.4.1.5962.1.2.1.20040119072730.12322")
        assert not is_registered_uid("1.2.840.10008.99.1.2.3")  # the DICOM root alone is not

    def test_file_meta_follows_new_sop_instance(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """MediaStorageSOPInstanceUID equals the new SOPInstanceUID (PyMedPhys leaked it, 3)."""
        out = roundtrip(run(pseudonymiser, ct))
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert "SourceApplicationEntityTitle" not in out.file_meta
        assert ct.SOPInstanceUID not in str(out.file_meta)

    def test_references_across_files_match(self, key: PseudonymKey):
        """A dose's reference to a plan equals the plan's new SOPInstanceUID, run separately."""
        plan = make_instance("rtplan", patient=1)
        dose = make_instance("rtdose", patient=1)
        struct = make_instance("rtstruct", patient=1)
        ct = make_instance("ct", patient=1)
        dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID = plan.SOPInstanceUID
        outs = [
            run(Pseudonymiser(KeyedSource(key), default_profile()), ds)
            for ds in (plan, dose, struct, ct)
        ]
        plan_out, dose_out, struct_out, ct_out = outs
        assert dose_out.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == (
            plan_out.SOPInstanceUID
        )
        frames = {ct_out.FrameOfReferenceUID, dose_out.FrameOfReferenceUID}
        frames |= set(uids(struct_out)["FrameOfReferenceUID"])
        frames |= set(uids(struct_out)["ReferencedFrameOfReferenceUID"])
        assert len(frames) == 1
        assert frames != {ct.FrameOfReferenceUID}
        assert len({o.StudyInstanceUID for o in outs}) == 1

    def test_same_uid_same_mapping_at_every_depth(self, pseudonymiser: Pseudonymiser):
        """One original UID maps to one new UID wherever it appears in the dataset."""
        ds = make_instance("rtstruct")
        before, after = uids(ds), uids(run(pseudonymiser, ds))
        mapping: dict[str, set[str]] = {}
        for keyword, values in before.items():
            for old, new in zip(values, after[keyword], strict=True):
                mapping.setdefault(old, set()).add(new)
        assert all(len(new) == 1 for new in mapping.values())


class TestDates:
    def _offset(self, original: str, shifted: str) -> int:
        parse = datetime.date.fromisoformat
        return (parse(shifted) - parse(original)).days

    def test_all_dates_of_a_patient_move_together(self, key: PseudonymKey):
        """Every date of one patient, in every file and study, moves by the same offset."""
        source = KeyedSource(key, date_shift_days=(-100, -50))
        pseudonymiser = Pseudonymiser(source, default_profile())
        offsets = set()
        for template, study in (("ct", 1), ("mr", 2), ("rtplan", 3)):
            ds = make_instance(template, patient=1, study=study)
            out = run(pseudonymiser, ds)
            for keyword in ("StudyDate", "SeriesDate", "ContentDate", "PatientBirthDate"):
                offsets.add(self._offset(ds[keyword].value, out[keyword].value))
        assert len(offsets) == 1
        assert -100 <= offsets.pop() <= -50

    def test_offset_keyed_by_patient_id(self, pseudonymiser: Pseudonymiser, source: KeyedSource):
        """The offset is the source's offset for the original PatientID."""
        ds = make_instance("ct", patient=2)
        out = run(pseudonymiser, ds)
        assert self._offset(ds.StudyDate, out.StudyDate) == source.date_offset_days(ds.PatientID)

    def test_falls_back_to_study_instance_uid(
        self, pseudonymiser: Pseudonymiser, source: KeyedSource
    ):
        """Without a PatientID the offset is keyed by the original StudyInstanceUID."""
        ds = make_instance("ct", patient=2)
        del ds.PatientID
        out = run(pseudonymiser, ds)
        expected = source.date_offset_days(ds.StudyInstanceUID)
        assert self._offset(ds.StudyDate, out.StudyDate) == expected

    def test_nested_dates_shifted(self, pseudonymiser: Pseudonymiser):
        """Dates inside sequence items move with the patient's other dates."""
        ds = make_instance("rtplan")
        ds.BeamSequence[0].StudyDate = ds.StudyDate
        out = run(pseudonymiser, ds)
        assert out.BeamSequence[0].StudyDate == out.StudyDate != ds.StudyDate

    def test_unparseable_date_emptied(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """An unparseable date is emptied, never passed through (defect 4)."""
        ct.StudyDate = "20041319"
        assert run(pseudonymiser, ct).StudyDate == ""

    def test_dt_with_offset_keeps_it(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """AcquisitionDateTime keeps its time and UTC offset (PyMedPhys dropped them, defect 4)."""
        ct.AcquisitionDateTime = "20161117094353.12+1100"
        out = run(pseudonymiser, ct).AcquisitionDateTime
        assert out.endswith("094353.12+1100") and out[:8] != "20161117"

    def test_marker_longitudinal_modified(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """Shifting dates sets LongitudinalTemporalInformationModified to MODIFIED."""
        assert run(pseudonymiser, ct).LongitudinalTemporalInformationModified == "MODIFIED"


class TestCharacterSets:
    @pytest.mark.parametrize(
        ("charset", "name"),
        [
            ("ISO_IR 100", "Müller^Jürgen"),
            ("ISO_IR 192", "Dvořák^Zdeňka"),
            ("ISO_IR 192", "山田^太郎"),
        ],
    )
    def test_non_ascii_values_from_file(
        self, pseudonymiser: Pseudonymiser, all_texts: AllTexts, charset: str, name: str
    ):
        """Non-ASCII names and text in ISO_IR 100 / 192 files are pseudonymised and written."""
        ds = make_instance("ct")
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.InstitutionName = "Klinikum Großstadt" if charset == "ISO_IR 100" else "病院 Hôpital"
        ds = roundtrip(ds)  # values now come from encoded bytes
        out = roundtrip(run(pseudonymiser, ds))
        text = all_texts(out)
        for part in (*name.split("^"), ds.InstitutionName):
            assert part not in text
        assert len(str(out.PatientName)) <= 64


class TestMarkers:
    def test_markers_written(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """PatientIdentityRemoved, DeidentificationMethod and the method codes are set."""
        out = run(pseudonymiser, ct)
        assert out.PatientIdentityRemoved == "YES"
        method, *options = out.DeidentificationMethod
        assert method == f"airflow-pseudo {__version__} keyed default {default_profile().digest}"
        assert options == [
            "Retain Longitudinal Temporal Information Modified Dates Option",
            "Retain Patient Characteristics Option",
        ]
        codes = [
            (i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence
        ]
        assert codes == [("113100", "DCM"), ("113107", "DCM"), ("113108", "DCM")]

    def test_method_appended_not_replaced(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """An earlier DeidentificationMethod is kept and ours is appended, once."""
        ct.DeidentificationMethod = "Site anonymiser v1"
        once = run(pseudonymiser, ct)
        twice = run(pseudonymiser, once)
        methods = list(twice.DeidentificationMethod)
        assert methods[0] == "Site anonymiser v1"
        assert len(methods) == 4 and methods[1].startswith("airflow-pseudo ")
        assert len(twice.DeidentificationMethodCodeSequence) == 3

    def test_pymedphys_profile_names_strategy(self, ct: Dataset):
        """The pymedphys strategy is named in DeidentificationMethod."""
        pseudonymiser = Pseudonymiser(PyMedPhysSource("pepper", 775), pymedphys_profile())
        out = run(pseudonymiser, ct)
        assert "pymedphys" in out.DeidentificationMethod
        assert out.PatientIdentityRemoved == "YES"

    def test_burned_in_annotation_refused(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """BurnedInAnnotation YES fails with that reason unless explicitly allowed."""
        ct.BurnedInAnnotation = "YES"
        with pytest.raises(BurnedInAnnotationError, match="BurnedInAnnotation"):
            run(pseudonymiser, ct)
        allowed = Pseudonymiser(pseudonymiser.source, pseudonymiser.profile, allow_burned_in=True)
        assert run(allowed, ct).PatientIdentityRemoved == "YES"

    def test_burned_in_no_is_fine(self, pseudonymiser: Pseudonymiser, ct: Dataset):
        """BurnedInAnnotation NO is pseudonymised normally."""
        ct.BurnedInAnnotation = "NO"
        assert run(pseudonymiser, ct).PatientIdentityRemoved == "YES"


class TestErrors:
    def test_strategy_error_names_no_value(self, source: KeyedSource, ct: Dataset):
        """A failing strategy becomes a PseudonymisationError naming the keyword, not the value."""

        def explode(value: object, context: object) -> str:
            raise ValueError(f"bad value {value}")

        pseudonymiser = Pseudonymiser(source, keyword_profile(["PatientName"]), {"PN": explode})
        with pytest.raises(PseudonymisationError) as info:
            run(pseudonymiser, ct)
        assert "PatientName" in str(info.value)
        assert "Testperson" not in str(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__

    def test_one_argument_strategies_accepted(self, source: KeyedSource, ct: Dataset):
        """PyMedPhys-style strategies taking only the value work in a custom dispatch."""
        pseudonymiser = Pseudonymiser(
            source, keyword_profile(["PatientName"]), {"PN": lambda value: "ANONYMOUS^PATIENT"}
        )
        assert run(pseudonymiser, ct).PatientName == "ANONYMOUS^PATIENT"


class TestKeyedDeterminism:
    FIELDS = ("PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID", "StudyDate")

    def _fields(self, ds: Dataset) -> dict[str, str]:
        return {k: str(ds[k].value) for k in (*self.FIELDS, "PatientAge")}

    def test_same_key_same_output_in_another_process(self, key_bytes: bytes):
        """A fresh interpreter with the same key produces byte-identical output."""
        ds = make_instance("ct", patient=2)
        ds.PatientAge = "045Y"
        here = Pseudonymiser(KeyedSource(PseudonymKey(key_bytes)), default_profile())
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, run(here, ds), enforce_file_format=True)
        script = (
            "import io, sys, pydicom\n"
            "from airflow_pseudo.pseudonymisation import PseudonymKey, Pseudonymiser, "
            "default_profile\n"
            "from airflow_pseudo.pseudonymisation.sources import KeyedSource\n"
            "from airflow_pseudo.testing import make_instance\n"
            "ds = make_instance('ct', patient=2); ds.PatientAge = '045Y'\n"
            "p = Pseudonymiser(KeyedSource(PseudonymKey(sys.stdin.buffer.read())), "
            "default_profile())\n"
            "b = io.BytesIO(); pydicom.dcmwrite(b, p.pseudonymise_dataset(ds)[0], "
            "enforce_file_format=True)\n"
            "sys.stdout.write(b.getvalue().hex())\n"
        )
        result = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", script],
            input=key_bytes,
            capture_output=True,
            check=True,
            env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"},
        )
        assert bytes.fromhex(result.stdout.decode()) == buffer.getvalue()

    def test_other_key_changes_everything(self, key: PseudonymKey, other_key: PseudonymKey):
        """Another key changes text, UIDs, dates and (for some patients) ages."""
        outputs = []
        for k in (key, other_key):
            pseudonymiser = Pseudonymiser(KeyedSource(k), default_profile())
            per_patient = []
            for patient in range(1, 9):
                ds = make_instance("ct", patient=patient)
                ds.PatientAge = "045Y"
                per_patient.append(self._fields(run(pseudonymiser, ds)))
            outputs.append(per_patient)
        a, b = outputs
        for field in self.FIELDS:
            assert all(x[field] != y[field] for x, y in zip(a, b, strict=True)), field
        assert [x["PatientAge"] for x in a] != [y["PatientAge"] for y in b]

    def test_key_never_in_output(self, key_bytes: bytes, ct: Dataset):
        """The key's bytes appear nowhere in a written output."""
        pseudonymiser = Pseudonymiser(KeyedSource(PseudonymKey(key_bytes)), default_profile())
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, run(pseudonymiser, ct), enforce_file_format=True)
        assert key_bytes not in buffer.getvalue()
        assert key_bytes[:16] not in buffer.getvalue()
        assert key_bytes.decode() not in json.dumps(
            {"method": pseudonymiser.method, "repr": repr(pseudonymiser.source)}
        )


def test_transfer_syntax_kept_for_written_output(pseudonymiser: Pseudonymiser):
    """Uncompressed explicit little endian input stays explicit little endian."""
    ds = make_instance("ct")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = roundtrip(ds)
    assert run(pseudonymiser, ds).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_basic_profile_removes_reference_sequences(pseudonymiser: Pseudonymiser):
    """Sequences the Basic Profile marks X/Z (ReferencedStudySequence) are removed whole."""
    ds = make_instance("ct")
    ds.ReferencedStudySequence = Sequence([Dataset()])
    ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID = generate_uid()
    assert "ReferencedStudySequence" not in run(pseudonymiser, ds)
