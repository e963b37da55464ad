"""Profiles: what happens to each attribute, as data.

A profile is a table from tag to :class:`Rule`, compiled once from PS3.15 Table E.1-1
(:mod:`._ps315_table`), the seed's identifying keywords (:mod:`._seed_keywords`) and the chosen
options, following the precedence in ``decisions.md``:

1. the caller's keep list;
2. the profile's options (Retain Longitudinal Temporal Information with Modified Dates, Retain
   Patient Characteristics), except that PatientAge is jittered, as the seed says;
3. the seed's identifying keywords, pseudonymised by VR;
4. the Annex E Basic Profile action (combined actions take their first letter, the IOD being
   unknown; the seed's keywords already cover the attributes where a pseudonym is preferable);
5. everything else is kept, except private attributes, attributes missing from pydicom's
   dictionary and group lengths, which are removed at every depth.

The default profile adds a safety net by VR for attributes the table does not list: person names
and free text are pseudonymised and dates shifted, wherever they appear (PS3.15 E.1.1 note 4).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache

from pydicom.datadict import dictionary_VR, get_entry, keyword_for_tag, tag_for_keyword
from pydicom.tag import BaseTag, Tag

from airflow_pseudo.pseudonymisation._ps315_table import EDITION, ROWS
from airflow_pseudo.pseudonymisation._seed_keywords import SEED_KEYWORDS
from airflow_pseudo.pseudonymisation.errors import ConfigurationError


class Action(StrEnum):
    """What to do with one attribute (PS3.15 Table E.1-1 action codes)."""

    KEEP = "K"
    REMOVE = "X"
    EMPTY = "Z"
    REPLACE = "D"
    REMAP_UID = "U"


class Option(StrEnum):
    """PS3.15 Annex E options, named by their Table E.1-1 column."""

    RETAIN_SAFE_PRIVATE = "rtnSafePrivOpt"
    RETAIN_UIDS = "rtnUIDsOpt"
    RETAIN_DEVICE_IDENTITY = "rtnDevIdOpt"
    RETAIN_INSTITUTION_IDENTITY = "rtnInstIdOpt"
    RETAIN_PATIENT_CHARACTERISTICS = "rtnPatCharsOpt"
    RETAIN_LONGITUDINAL_FULL_DATES = "rtnLongFullDatesOpt"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "rtnLongModifDatesOpt"
    CLEAN_DESCRIPTORS = "cleanDescOpt"
    CLEAN_STRUCTURED_CONTENT = "cleanStructContOpt"
    CLEAN_GRAPHICS = "cleanGraphOpt"


BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTION_CODES: Mapping[Option, tuple[str, str]] = {
    Option.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    Option.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    Option.RETAIN_LONGITUDINAL_FULL_DATES: (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}
SUPPORTED_OPTIONS = frozenset(
    {Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, Option.RETAIN_PATIENT_CHARACTERISTICS}
)

_FIRST_CHOICE = {"X/Z": "X", "X/D": "X", "X/Z/D": "X", "Z/D": "Z", "X/Z/U*": "X", "C": "D"}
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_JITTERED_CHARACTERISTICS = frozenset({"PatientAge"})
_REPEATING_GROUPS = (0x5000, 0x6000)  # curves (50xx) and overlays (60xx)


@dataclass(frozen=True)
class Rule:
    """An action and why it applies: the reason feeds ``describe()`` and the README."""

    action: Action
    reason: str


PRIVATE = Rule(Action.REMOVE, "private attribute")
UNKNOWN = Rule(Action.REMOVE, "not in the DICOM dictionary")
GROUP_LENGTH = Rule(Action.REMOVE, "group length (recomputed on write)")
UNLISTED = Rule(Action.KEEP, "not identifying by any rule")


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: profiles are built once
class Profile:
    """A compiled profile. Build one with :func:`default_profile` or :func:`keyword_profile`.

    :param name: short name recorded in DeidentificationMethod.
    :param rules: rule per tag, for the tags a rule names.
    :param group_rules: rule per repeating group base (0x5000 curves, 0x6000 overlays).
    :param vr_defaults: rule per VR for attributes no other rule names.
    :param options: PS3.15 options this profile implements, for the method code sequence.
    :param basic_profile: whether the profile implements the Basic Profile (code 113100).
    """

    name: str
    rules: Mapping[int, Rule]
    group_rules: Mapping[int, Rule] = field(default_factory=dict)
    vr_defaults: Mapping[str, Rule] = field(default_factory=dict)
    options: tuple[Option, ...] = ()
    basic_profile: bool = False
    _resolved: dict[int, Rule] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def shifts_dates(self) -> bool:
        """Whether dates are modified, for LongitudinalTemporalInformationModified."""
        return any(
            rule.action is Action.REPLACE and _vr(tag) in {"DA", "DT"}
            for tag, rule in self.rules.items()
        ) or any(vr in {"DA", "DT"} for vr in self.vr_defaults)

    def rule_for(self, tag: BaseTag) -> Rule:
        """Return the rule for an attribute with this tag, wherever it appears."""
        rule = self._resolved.get(tag)
        if rule is None:
            rule = self._resolved[tag] = self._resolve(tag)
        return rule

    def _resolve(self, tag: BaseTag) -> Rule:
        rule = self.rules.get(tag)
        if rule is not None:
            return rule
        if tag.is_private:
            return PRIVATE
        if tag.element == 0 and tag.group != 0x0002:
            return GROUP_LENGTH
        if tag.group & 0xFF00 in _REPEATING_GROUPS and tag.group in self.group_rules:
            return self.group_rules[tag.group]
        if not _in_dictionary(tag):
            return UNKNOWN
        return self.vr_defaults.get(_vr(tag), UNLISTED)

    def method_codes(self) -> list[tuple[str, str]]:
        """Return the CID 7050 codes for DeidentificationMethodCodeSequence."""
        codes = [BASIC_PROFILE_CODE] if self.basic_profile else []
        return codes + [OPTION_CODES[option] for option in self.options]

    def describe(self) -> Iterator[str]:
        """Describe every rule, one line each, sorted by tag."""
        yield f"Profile {self.name!r} (PS3.15 Table E.1-1, edition {EDITION})"
        for tag, rule in sorted(self.rules.items()):
            keyword = keyword_for_tag(tag) or "(unnamed)"
            yield f"{Tag(tag)} {keyword}: {rule.action.name.lower()} ({rule.reason})"
        for group, rule in sorted(self.group_rules.items()):
            yield f"({group:04X},xxxx) group: {rule.action.name.lower()} ({rule.reason})"
        for vr, rule in sorted(self.vr_defaults.items()):
            yield f"any other {vr}: {rule.action.name.lower()} ({rule.reason})"
        yield f"any other private attribute: remove ({PRIVATE.reason})"
        yield f"any other attribute missing from the dictionary: remove ({UNKNOWN.reason})"
        yield f"anything else: keep ({UNLISTED.reason})"


@lru_cache(maxsize=8192)
def _in_dictionary(tag: int) -> bool:
    try:
        get_entry(tag)
    except KeyError:
        return False
    return True


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _replace_by_vr(tag: int, reason: str) -> Rule:
    action = Action.REMAP_UID if _vr(tag) == "UI" else Action.REPLACE
    return Rule(action, reason)


def _keyword_tags(keywords: Iterable[str], what: str) -> dict[int, str]:
    tags = {}
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ConfigurationError(f"{what}: {keyword!r} is not a DICOM keyword")
        tags[tag] = keyword
    return tags


def _table_tag(pattern: str) -> int | None:
    return None if "x" in pattern or pattern == "private" else int(pattern, 16)


def _option_rule(tag: int, keyword: str, option: Option, code: str) -> Rule | None:
    reason = f"{option.name.lower().replace('_', ' ')} option"
    if option is Option.RETAIN_LONGITUDINAL_MODIFIED_DATES and code == "C":
        vr = _vr(tag)
        if vr in _DATE_VRS:
            return Rule(Action.REPLACE, reason + ": shifted per patient")
        if vr == "SH":  # TimezoneOffsetFromUTC: whole-day shifts leave the offset true
            return Rule(Action.KEEP, reason)
        return Rule(Action.REMOVE, reason + ": binary timestamp cannot be shifted")
    if option is Option.RETAIN_PATIENT_CHARACTERISTICS:
        if keyword in _JITTERED_CHARACTERISTICS:
            return Rule(Action.REPLACE, reason + ", except that ages are jittered")
        return Rule(Action.KEEP if code == "K" else Action.REPLACE, reason)
    return None


def _basic_rule(tag: int, code: str) -> Rule:
    letter = _FIRST_CHOICE.get(code, code)
    reason = f"PS3.15 basic profile {code}"
    if letter == "D":
        return _replace_by_vr(tag, reason)
    return Rule(Action(letter), reason)


def default_profile(keep_keywords: Iterable[str] = ()) -> Profile:
    """The default: seed keywords united with the Annex E Basic Profile and two options."""
    return _cached_default_profile(tuple(sorted(set(keep_keywords))))


@lru_cache(maxsize=16)
def _cached_default_profile(keep_keywords: tuple[str, ...]) -> Profile:
    options = (Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, Option.RETAIN_PATIENT_CHARACTERISTICS)
    keep = _keyword_tags(keep_keywords, "keep list")
    seed = _keyword_tags(SEED_KEYWORDS, "seed list")
    rules: dict[int, Rule] = {}
    for pattern, _name, basic, option_codes in ROWS:
        tag = _table_tag(pattern)
        if tag is None:
            continue
        keyword = keyword_for_tag(tag)
        rule = None
        for option in options:
            if option.value in option_codes:
                rule = _option_rule(tag, keyword, option, option_codes[option.value])
                if rule is not None:
                    break
        if rule is None and tag in seed:
            rule = _replace_by_vr(tag, "seed identifying keyword")
        rules[tag] = rule or _basic_rule(tag, basic)
    for tag in seed.keys() - rules.keys():
        rules[tag] = _replace_by_vr(tag, "seed identifying keyword")
    for tag, keyword in keep.items():
        rules[tag] = Rule(Action.KEEP, f"caller's keep list ({keyword})")
    group_rule = Rule(Action.REMOVE, "PS3.15 basic profile X (curves and overlays, whole group)")
    group_rules = {
        base + offset: group_rule for base in _REPEATING_GROUPS for offset in range(0, 0x20, 2)
    }
    net = "safety net for attributes the table does not list"
    vr_defaults = {
        "PN": Rule(Action.REPLACE, net + ": person name"),
        "UT": Rule(Action.REPLACE, net + ": free text"),
        "LT": Rule(Action.REPLACE, net + ": free text"),
        "ST": Rule(Action.REPLACE, net + ": free text"),
        "DA": Rule(Action.REPLACE, net + ": date shifted"),
        "DT": Rule(Action.REPLACE, net + ": date shifted"),
    }
    return Profile("default", rules, group_rules, vr_defaults, options, basic_profile=True)


def keyword_profile(
    identifying_keywords: Iterable[str], keep_keywords: Iterable[str] = (), name: str = "keywords"
) -> Profile:
    """A seed-style profile: exactly these keywords are pseudonymised by VR, nothing else."""
    keep = _keyword_tags(keep_keywords, "keep list")
    rules = {
        tag: _replace_by_vr(tag, "identifying keyword")
        for tag in _keyword_tags(identifying_keywords, "identifying keywords")
    }
    rules.update({tag: Rule(Action.KEEP, f"caller's keep list ({kw})") for tag, kw in keep.items()})
    return Profile(name, rules)


def pymedphys_profile(keep_keywords: Iterable[str] = ()) -> Profile:
    """The seed's identifying keywords alone, PatientSex kept as the seed says."""
    return keyword_profile(SEED_KEYWORDS, {"PatientSex", *keep_keywords}, name="pymedphys")


PROFILES = {"default": default_profile, "pymedphys": pymedphys_profile}
