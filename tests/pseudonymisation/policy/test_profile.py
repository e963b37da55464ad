"""Tests for the policy model: options, compound actions by IOD Type, UIDs by VR, digests."""

from __future__ import annotations

import copy

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID_dictionary

from airflow_pseudo.pseudonymisation import ConfigurationError, Pseudonymiser, PseudonymKey
from airflow_pseudo.pseudonymisation.policy.profile import (
    OPTION_CODES,
    PROFILES,
    Action,
    Option,
    basic_profile,
    build_profile,
    default_profile,
    resolve_compound,
)
from airflow_pseudo.pseudonymisation.policy.tables.identifying_attributes import (
    IDENTIFYING_ATTRIBUTES,
)
from airflow_pseudo.pseudonymisation.policy.tables.ps315 import ROWS
from airflow_pseudo.pseudonymisation.sources import KeyedSource

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
SUPPORTED = [option for option in Option if option not in (
    Option.CLEAN_PIXEL_DATA, Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES
)]  # fmt: skip


def tag(keyword: str) -> int:
    found = tag_for_keyword(keyword)
    assert found is not None, keyword
    return found


def pseudonymiser(profile_name: str = "basic") -> Pseudonymiser:
    source = KeyedSource(PseudonymKey(b"policy profile test key, 32 byte"))
    return Pseudonymiser(source, PROFILES[profile_name]())


@pytest.mark.parametrize("option", SUPPORTED, ids=lambda o: o.name)
def test_an_option_changes_only_its_rows_and_adds_its_code(option: Option):
    """Selecting one option changes exactly rows whose Table E.1-1 column names it."""
    without = build_profile("x", seed_keywords=False)
    with_option = build_profile("x", [option], seed_keywords=False)
    rows = {int(p, 16) for p, _n, _b, options in ROWS if "x" not in p and p != "private"
            and option.value in options}  # fmt: skip
    changed = {t for t in without.rules if without.rules[t] != with_option.rules[t]}
    assert changed <= rows
    if option is not Option.RETAIN_SAFE_PRIVATE:  # its only row is the private one
        assert changed, "an option with rows changes some"
    assert with_option.method_codes() == [*without.method_codes(), OPTION_CODES[option]]
    assert with_option.digest != without.digest


@pytest.mark.parametrize(
    "option", [Option.CLEAN_PIXEL_DATA, Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES]
)
def test_options_the_tool_cannot_honour_are_refused(option: Option):
    """Pixel cleaning is never claimed: asking for it is a configuration error."""
    with pytest.raises(ConfigurationError, match="cannot be honoured"):
        build_profile("x", [option])


def test_contradictory_date_options_are_refused():
    with pytest.raises(ConfigurationError, match="contradict"):
        build_profile(
            "x",
            [Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES],
        )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Clean Descriptors", Option.CLEAN_DESCRIPTORS),
        ("retain_safe_private", Option.RETAIN_SAFE_PRIVATE),
        ("rtnUIDsOpt", Option.RETAIN_UIDS),
        ("Retain Device Identity Option", Option.RETAIN_DEVICE_IDENTITY),
    ],
)
def test_options_parse_from_their_names(name: str, expected: Option):
    assert Option.parse(name) is expected


@pytest.mark.parametrize(
    ("choices", "vr", "kind", "expected"),
    [
        ("X/Z/D", "LO", "1", Action.REPLACE),
        ("X/Z/D", "LO", "1C", Action.REPLACE),
        ("X/Z/D", "LO", "2", Action.EMPTY),
        ("X/Z/D", "LO", "3", Action.REMOVE),
        ("X/Z/D", "LO", None, Action.REMOVE),
        ("Z/D", "DA", "1", Action.REPLACE),
        ("Z/D", "DA", "2C", Action.EMPTY),
        ("Z/D", "DA", None, Action.EMPTY),
        ("X/D", "UI", "1", Action.REMAP_UID),
        ("X/D", "LO", "2", Action.REPLACE),
        ("X/Z", "DA", "2", Action.EMPTY),
        ("X/Z/U*", "SQ", None, Action.REMAP_UID),
    ],
)
def test_compound_actions_follow_the_iod_type(choices, vr, kind, expected):
    """Type 1 replaces, Type 2 empties, Type 3 or absent removes; U* references are kept."""
    assert resolve_compound(choices, vr, kind) is expected


@pytest.mark.parametrize(
    ("sop_class", "keyword", "parents", "expected"),
    [
        (CT_IMAGE, "ContentDate", (), Action.EMPTY),  # Z/D, Type 2C in General Image
        (CT_IMAGE, "AcquisitionDate", (), Action.REMOVE),  # X/Z, Type 3
        (CT_IMAGE, "InstitutionName", (), Action.REMOVE),  # X/Z/D, Type 3
        (CT_IMAGE, "InstitutionName", ("ReferringPhysicianIdentificationSequence",),
         Action.REPLACE),  # Type 1C in the Person Identification Macro
        (CT_IMAGE, "ContrastBolusAgent", (), Action.EMPTY),  # Type 2 in Contrast/Bolus
        (SEGMENTATION, "SourceImageSequence", (), Action.REMAP_UID),  # X/Z/U*: kept
        (CT_IMAGE, "ReferencedImageSequence", (), Action.REMAP_UID),
    ],
)  # fmt: skip
def test_basic_profile_decides_compound_rows_by_the_instance_iod(
    sop_class: str, keyword: str, parents: tuple[str, ...], expected: Action
):
    rule = basic_profile().rule_for(Tag(tag(keyword)), sop_class, tuple(map(tag, parents)))
    assert rule.action is expected


def test_compound_actions_on_a_real_ct_with_a_source_image_sequence():
    """pydicom's 693_J2KI.dcm: the source image reference survives with its UIDs remapped."""
    original = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
    original.ContentDate = "20200102"
    original.AcquisitionDate = "20200102"
    dataset = copy.deepcopy(original)
    pseudonymiser("basic").pseudonymise_in_place(dataset)
    assert dataset.ContentDate == ""  # Type 2C: emptied, not removed
    assert "AcquisitionDate" not in dataset  # Type 3: removed
    before = original.SourceImageSequence[0].ReferencedSOPInstanceUID
    after = dataset.SourceImageSequence[0].ReferencedSOPInstanceUID
    assert after != before and after.startswith("2.25.")
    assert dataset.SourceImageSequence[0].ReferencedSOPClassUID == CT_IMAGE


def _uid_tree() -> Dataset:
    """UIDs no rule names, at three depths, one under the DICOM root but not registered."""
    dataset = Dataset()
    dataset.SOPClassUID = CT_IMAGE
    dataset.SOPInstanceUID = "1.2.840.10008.999.1.2.3"
    dataset.ConcatenationUID = "1.2.3.4.5"
    inner = Dataset()
    inner.VolumeFrameOfReferenceUID = "1.2.3.4.6"
    inner.ConcatenationUID = "1.2.3.4.5"
    inner.RetrieveURL = "https://pacs.example/wado?studyUID=1.2.3.4.5&patientID=X1"
    deeper = Dataset()
    deeper.TableFrameOfReferenceUID = "1.2.3.4.7"
    deeper.CodingSchemeUID = "1.2.840.10008.2.16.4"  # registered: kept
    inner.ReferencedImageSequence = Sequence([deeper])
    dataset.ReferencedSeriesSequence = Sequence([inner])
    return dataset


@pytest.mark.parametrize("profile_name", ["basic", "default", "research"])
def test_every_unregistered_uid_is_remapped_at_every_depth(profile_name: str):
    dataset = _uid_tree()
    pseudonymiser(profile_name).pseudonymise_in_place(dataset)
    uids = [e.value for e in dataset.iterall() if e.VR == "UI"]
    assert "1.2.840.10008.2.16.4" in uids and CT_IMAGE in uids
    left = [u for u in uids if u not in UID_dictionary]
    assert left and all(u.startswith("2.25.") for u in left)
    inner = dataset.ReferencedSeriesSequence[0]
    assert inner.ConcatenationUID == dataset.ConcatenationUID  # consistent across depths
    assert "RetrieveURL" not in inner  # UR values may hold UIDs and identifiers


def test_repeating_groups_are_matched_over_their_whole_range():
    profile = default_profile()
    for group in (0x5000, 0x501E, 0x5020, 0x50FE, 0x6000, 0x6020, 0x60FE):
        assert profile.rule_for(Tag(group, 0x3000)).action is Action.REMOVE, hex(group)


def test_identifying_attributes_outside_the_table_have_rules():
    """Every identifying attribute the table does not list gets an X/Z/D rule."""
    profile = basic_profile()
    for attribute in IDENTIFYING_ATTRIBUTES:
        rule = profile.rule_for(Tag(attribute))
        assert rule.choices == "X/Z/D" or rule.action is not Action.KEEP


def test_the_digest_is_stable_and_names_the_rules():
    assert default_profile().digest == default_profile().digest
    assert len(default_profile().digest) == 16 and int(default_profile().digest, 16) >= 0
    assert default_profile(["PatientName"]).digest != default_profile().digest
    assert len({PROFILES[name]().digest for name in PROFILES}) == len(PROFILES)


@pytest.mark.parametrize("profile_name", sorted(PROFILES))
def test_the_method_entry_follows_the_contract(profile_name: str):
    """``airflow-pseudo <version> <strategy> <profile> <digest>`` in at most 64 characters."""
    entry = pseudonymiser(profile_name).method
    parts = entry.split(" ")
    assert parts[0] == "airflow-pseudo" and parts[2] == "keyed" and parts[3] == profile_name
    assert parts[4] == PROFILES[profile_name]().digest and len(entry) <= 64


def test_a_long_profile_name_is_shortened_never_the_digest():
    profile = build_profile("a-project-profile-with-a-very-long-descriptive-name")
    source = KeyedSource(PseudonymKey(b"policy profile test key, 32 byte"))
    entry = Pseudonymiser(source, profile).method
    assert len(entry) == 64 and entry.endswith(" " + profile.digest)


def test_research_keeps_safe_private_and_cleans_descriptions():
    """A Siemens CSA header (known safe) and its creator stay; an unknown private goes."""
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    dataset.PatientName = "Doe^Jane"
    dataset.PatientID = "PID12345"
    dataset.SeriesDescription = "T1 Doe PID12345 axial"
    dataset.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    dataset.add_new(0x00291010, "OB", b"SV10 CSA header bytes")
    dataset.add_new(0x00291011, "LO", "unknown")
    dataset.add_new(0x00110010, "LO", "ACME")
    dataset.add_new(0x00111008, "LO", "unknown too")
    pseudonymiser("research").pseudonymise_in_place(dataset)
    assert dataset[0x00291010].value == b"SV10 CSA header bytes"
    assert dataset[0x00290010].value == "SIEMENS CSA HEADER"
    assert 0x00291011 not in dataset and 0x00111008 not in dataset and 0x00110010 not in dataset
    assert "Doe" not in dataset.SeriesDescription and "PID12345" not in dataset.SeriesDescription
    assert "T1" in dataset.SeriesDescription and "axial" in dataset.SeriesDescription
    codes = [item.CodeValue for item in dataset.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113107", "113108", "113111"]


def test_clean_structured_content_cleans_the_text_of_an_sr_instead_of_hashing_it():
    """Content Sequence is kept; its free text loses the patient's name, keeps its words."""
    item = Dataset()
    item.ValueType = "TEXT"
    item.TextValue = "Reviewed with Jane Doe, no change"
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    dataset.PatientName = "Doe^Jane"
    dataset.ContentSequence = Sequence([item])
    hashed = copy.deepcopy(dataset)
    pseudonymiser("default").pseudonymise_in_place(hashed)
    profile = build_profile("sr", [*default_profile().options, Option.CLEAN_STRUCTURED_CONTENT])
    source = KeyedSource(PseudonymKey(b"policy profile test key, 32 byte"))
    Pseudonymiser(source, profile).pseudonymise_in_place(dataset)
    text = dataset.ContentSequence[0].TextValue
    assert "Doe" not in text and "Jane" not in text and "no change" in text
    assert "no change" not in hashed.ContentSequence[0].TextValue
    assert "113104" in [i.CodeValue for i in dataset.DeidentificationMethodCodeSequence]
