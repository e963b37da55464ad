"""Tests for profiles: rule precedence, options, removal rules and descriptions."""

from __future__ import annotations

import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.tag import Tag

from airflow_pseudo.pseudonymisation import (
    Action,
    ConfigurationError,
    default_profile,
    get_default_pseudonymisation_keywords,
    keyword_profile,
    pymedphys_profile,
)
from airflow_pseudo.pseudonymisation.policy.tables.ps315 import ROWS


def action(profile, keyword: str) -> Action:  # type: ignore[no-untyped-def]
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return profile.rule_for(Tag(tag)).action


@pytest.mark.parametrize(
    ("keyword", "expected"),
    [
        ("PatientName", Action.REPLACE),
        ("PatientID", Action.REPLACE),
        ("StudyInstanceUID", Action.REMAP_UID),
        ("MediaStorageSOPInstanceUID", Action.REMAP_UID),
        ("StudyDate", Action.REPLACE),
        ("PatientBirthDate", Action.REPLACE),
        ("PatientSex", Action.KEEP),
        ("PatientWeight", Action.KEEP),
        ("PatientSize", Action.KEEP),
        ("EthnicGroup", Action.KEEP),
        ("PregnancyStatus", Action.KEEP),
        ("PatientAge", Action.REPLACE),
        ("SOPClassUID", Action.REMAP_UID),  # registered class UIDs map to themselves
        ("Modality", Action.KEEP),
        ("RequestAttributesSequence", Action.REMOVE),
    ],
)
def test_default_profile_decisions(keyword: str, expected: Action):
    """The default profile applies options, seed keywords and Basic Profile in that order."""
    assert action(default_profile(), keyword) is expected


def test_every_seed_keyword_changed_by_default_unless_option_keeps_it():
    """Each of the 204 seed keywords is changed, except patient characteristics and TZ offset."""
    profile = default_profile()
    kept = {k for k in get_default_pseudonymisation_keywords() if action(profile, k) is Action.KEEP}
    assert kept <= {
        "EthnicGroup",
        "PatientSex",
        "PatientWeight",
        "PatientSize",
        "SmokingStatus",
        "PregnancyStatus",
        "PatientSexNeutered",
        "TimezoneOffsetFromUTC",
    }, kept


def test_every_table_row_has_a_rule():
    """Every single-tag row of PS3.15 Table E.1-1 that pydicom knows has an explicit rule."""
    profile = default_profile()
    tags = [int(p, 16) for p, *_ in ROWS if "x" not in p and p != "private"]
    assert len(tags) > 500
    assert all(t in profile.rules for t in tags)


def test_keep_list_has_top_precedence():
    """The caller's keep list overrides the seed list, the options and the Basic Profile."""
    profile = default_profile(["PatientName", "StudyDate", "RequestAttributesSequence"])
    for keyword in ("PatientName", "StudyDate", "RequestAttributesSequence"):
        assert action(profile, keyword) is Action.KEEP


def test_private_unknown_group_length_overlays_removed():
    """Private, unknown, group-length and overlay/curve tags are removed by every profile."""
    for profile in (default_profile(), pymedphys_profile()):
        assert profile.rule_for(Tag(0x00091001)).action is Action.REMOVE
        assert profile.rule_for(Tag(0x300A9999)).action is Action.REMOVE
        assert profile.rule_for(Tag(0x00080000)).action is Action.REMOVE
    profile = default_profile()
    for tag in (0x60003000, 0x60020010, 0x601E0022, 0x50000005):
        assert profile.rule_for(Tag(tag)).action is Action.REMOVE


def test_safety_net_by_vr():
    """PN, free text and dates the table does not list are still changed by default."""
    profile = default_profile()
    assert action(profile, "VerifyingObserverName") is not Action.KEEP
    assert action(profile, "TextValue") is Action.REPLACE
    assert action(profile, "ObservationDateTime") is Action.REPLACE


def test_pymedphys_profile_is_seed_list_only():
    """The pymedphys profile changes the 204 seed keywords (PatientSex kept) and nothing else."""
    profile = pymedphys_profile()
    assert len(profile.rules) == 204
    assert action(profile, "PatientSex") is Action.KEEP
    assert action(profile, "InstitutionName") is Action.REPLACE
    assert action(profile, "RequestAttributesSequence") is Action.KEEP
    assert profile.method_codes() == []


def test_keyword_profile_rejects_unknown_keyword():
    """An identifying keyword that does not exist is a configuration error."""
    with pytest.raises(ConfigurationError, match="NotAKeyword"):
        keyword_profile(["NotAKeyword"])


def test_method_codes():
    """The default profile declares 113100 plus the two options it implements."""
    codes = [code for code, _ in default_profile().method_codes()]
    assert codes == ["113100", "113107", "113108"]
    assert default_profile().shifts_dates


def test_describe_lines():
    """describe() gives one line per rule, naming tag, keyword, action and reason."""
    lines = list(default_profile().describe())
    assert lines[0].startswith("Profile 'default'")
    assert "(0010,0010) PatientName: replace (seed identifying keyword)" in lines
    assert any(line.startswith("(60xx,xxxx) group: remove") for line in lines)
    assert lines[-1] == "anything else: keep (not identifying by any rule)"
    # header, options, one per tag rule, the 50xx and 60xx groups, 8 VR defaults, 3 closing
    assert len(lines) == 2 + len(default_profile().rules) + 2 + 8 + 3
