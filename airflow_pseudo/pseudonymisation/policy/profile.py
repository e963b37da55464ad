"""Profiles: what happens to each attribute, as data.

A profile is a base (the PS3.15 Annex E Basic Profile, from :mod:`.tables.ps315`), the selected
Annex E options (read from the table's option columns) and overrides, resolved into one
:class:`Rule` per attribute and context. The context is the instance's SOP class and the chain of
sequences enclosing the attribute: compound actions (X/Z, X/D, Z/D, X/Z/D) are decided by the
attribute's Type in that IOD (:mod:`.tables.iod_types`). Precedence, highest first:

1. overrides (the caller's keep list, a project profile's per-attribute rules);
2. the selected options (Retain Longitudinal Modified Dates shifts dates, Retain Patient
   Characteristics keeps them except PatientAge, which is jittered; Clean options clean);
3. the seed's identifying keywords, pseudonymised by VR (``default`` and ``research``);
4. the Basic Profile action, then the identifying attributes the table does not list
   (:mod:`.tables.identifying_attributes`, treated as X/Z/D);
5. the safety net by VR: person names and free text pseudonymised, dates shifted, every UID
   remapped (registered UIDs are left as they are when the value is mapped);
6. everything else is kept, except private attributes (unless Retain Safe Private keeps one of
   :mod:`.private`'s), attributes missing from pydicom's dictionary, group lengths and the
   repeating groups 50xx (curves) and 60xx (overlays), which are removed at every depth.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property, lru_cache

from pydicom.datadict import dictionary_VR, get_entry, keyword_for_tag, tag_for_keyword
from pydicom.tag import BaseTag, Tag

from airflow_pseudo.pseudonymisation._seed_keywords import SEED_KEYWORDS
from airflow_pseudo.pseudonymisation.errors import ConfigurationError
from airflow_pseudo.pseudonymisation.policy.private import safe_private_attribute
from airflow_pseudo.pseudonymisation.policy.tables.identifying_attributes import (
    IDENTIFYING_ATTRIBUTES,
)
from airflow_pseudo.pseudonymisation.policy.tables.iod_types import attribute_type
from airflow_pseudo.pseudonymisation.policy.tables.ps315 import EDITION, ROWS


class Action(StrEnum):
    """What to do with one attribute (PS3.15 Table E.1-1 action codes, plus a constant)."""

    KEEP = "K"
    REMOVE = "X"
    EMPTY = "Z"
    REPLACE = "D"
    REMAP_UID = "U"
    CLEAN = "C"
    CONSTANT = "R"


class Option(StrEnum):
    """PS3.15 Annex E options, named by their Table E.1-1 column."""

    CLEAN_PIXEL_DATA = "cleanPixelDataOpt"
    CLEAN_RECOGNIZABLE_VISUAL_FEATURES = "cleanRecognizableVisualFeaturesOpt"
    CLEAN_GRAPHICS = "cleanGraphOpt"
    CLEAN_STRUCTURED_CONTENT = "cleanStructContOpt"
    CLEAN_DESCRIPTORS = "cleanDescOpt"
    RETAIN_LONGITUDINAL_FULL_DATES = "rtnLongFullDatesOpt"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "rtnLongModifDatesOpt"
    RETAIN_PATIENT_CHARACTERISTICS = "rtnPatCharsOpt"
    RETAIN_DEVICE_IDENTITY = "rtnDevIdOpt"
    RETAIN_INSTITUTION_IDENTITY = "rtnInstIdOpt"
    RETAIN_UIDS = "rtnUIDsOpt"
    RETAIN_SAFE_PRIVATE = "rtnSafePrivOpt"

    @property
    def meaning(self) -> str:
        """The option's name in PS3.15 (its CID 7050 code meaning)."""
        return OPTION_CODES[self][1]

    @classmethod
    def parse(cls, name: str) -> Option:
        """An option from its enum name, table column or title, case and separators ignored."""
        wanted = _normalise(name)
        for option in cls:
            meaning = option.meaning
            names = (option.name, option.value, meaning, meaning.removesuffix(" Option"))
            if wanted in {_normalise(n) for n in names}:
                return option
        raise ConfigurationError(f"unknown option {name!r}")


def _normalise(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTION_CODES: Mapping[Option, tuple[str, str]] = {
    Option.CLEAN_PIXEL_DATA: ("113101", "Clean Pixel Data Option"),
    Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES: (
        "113102",
        "Clean Recognizable Visual Features Option",
    ),
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
UNSUPPORTED_OPTIONS: Mapping[Option, str] = {
    Option.CLEAN_PIXEL_DATA: "pixel data is not cleaned by this tool",
    Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES: "recognizable visual features are not cleaned",
}
# Options applied in this order; a keeping option wins over a cleaning one on the same row.
_OPTION_ORDER = (
    Option.RETAIN_UIDS,
    Option.RETAIN_SAFE_PRIVATE,
    Option.RETAIN_INSTITUTION_IDENTITY,
    Option.RETAIN_DEVICE_IDENTITY,
    Option.RETAIN_PATIENT_CHARACTERISTICS,
    Option.RETAIN_LONGITUDINAL_FULL_DATES,
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,
    Option.CLEAN_DESCRIPTORS,
    Option.CLEAN_STRUCTURED_CONTENT,
    Option.CLEAN_GRAPHICS,
)
_CONTRADICTORY = frozenset(
    {Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}
)
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_SHIFTED_VRS = frozenset({"DA", "DT"})
CLEANED_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC"})
"""VRs whose values the Clean action cleans; other VRs are replaced by a pseudonym."""
_JITTERED_CHARACTERISTICS = frozenset({"PatientAge"})
_REPEATING_GROUPS = (0x5000, 0x6000)  # curves (50xx) and overlays (60xx), even groups only
_TYPE_1 = frozenset({"1", "1C"})
_TYPE_2 = frozenset({"2", "2C"})


@dataclass(frozen=True)
class Rule:
    """An action and why it applies: the reason feeds ``describe()`` and the docs.

    :param action: the action; for a compound rule, the one used outside any known IOD.
    :param reason: why, in words.
    :param choices: a compound Table E.1-1 code (``X/Z/D``...) decided by the IOD's Type.
    :param value: the constant written by :attr:`Action.CONSTANT`.
    """

    action: Action
    reason: str
    choices: str | None = None
    value: str | None = None

    def key(self) -> tuple[str, str, str]:
        """What the rule does, without why: the input of the profile digest."""
        return (self.action.value, self.choices or "", self.value or "")


PRIVATE = Rule(Action.REMOVE, "private attribute")
SAFE_PRIVATE = Rule(Action.KEEP, "retain safe private option: known safe private attribute")
PRIVATE_CREATOR = Rule(Action.KEEP, "private creator of a kept private attribute")
UNKNOWN = Rule(Action.REMOVE, "not in the DICOM dictionary")
GROUP_LENGTH = Rule(Action.REMOVE, "group length (recomputed on write)")
REPEATING_GROUP = Rule(Action.REMOVE, "PS3.15 basic profile X (curves and overlays, whole group)")
UNLISTED = Rule(Action.KEEP, "not identifying by any rule")


def resolve_compound(choices: str, vr: str, attribute_type: str | None) -> Action:
    """Decide a compound action by the attribute's Type in the IOD (PS3.15 E.1.1).

    Type 1/1C: the replacing action (U for UIDs); Type 2/2C: empty; Type 3 or absent: remove.
    X/Z/U* reference sequences are always kept with their UIDs remapped: removing them breaks
    references, and remapped references identify no one.
    """
    letters = choices.replace("*", "").split("/")
    if "U" in letters:
        return Action.REMAP_UID
    if attribute_type in _TYPE_1:
        preferred = ["D", "Z", "X"]
    elif attribute_type in _TYPE_2:
        preferred = ["Z", "D", "X"]
    else:
        preferred = ["X", "Z", "D"]
    letter = next(letter for letter in preferred if letter in letters)
    if letter == "D":
        return Action.REMAP_UID if vr == "UI" else Action.REPLACE
    return Action(letter)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: profiles are built once
class Profile:
    """A resolved profile. Build one with :func:`build_profile` or a ``*_profile`` function.

    :param name: short name recorded in DeidentificationMethod and in result records.
    :param rules: rule per tag, for the tags a rule names.
    :param vr_defaults: rule per VR for attributes no other rule names.
    :param options: PS3.15 options this profile implements, for the method code sequence.
    :param basic_profile: whether the profile implements the Basic Profile (code 113100).
    :param repeating_groups: whether curve and overlay groups are removed whole.
    :param private_rules: rules for private attributes by (creator, group, element offset).
    :param date_shift_days: the date-shift range a project profile file sets, if any.
    """

    name: str
    rules: Mapping[int, Rule]
    vr_defaults: Mapping[str, Rule] = field(default_factory=dict)
    options: tuple[Option, ...] = ()
    basic_profile: bool = False
    repeating_groups: bool = False
    private_rules: Mapping[tuple[str, int, int], Rule] = field(default_factory=dict)
    date_shift_days: tuple[int, int] | None = None
    _resolved: dict[int, Rule] = field(default_factory=dict, init=False, repr=False)
    _in_context: dict[tuple[int, str | None, tuple[int, ...]], Rule] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def group_rules(self) -> Mapping[int, Rule]:
        """Rule per repeating group (every even group 5000-50FF and 6000-60FF)."""
        if not self.repeating_groups:
            return {}
        groups = (g for base in _REPEATING_GROUPS for g in range(base, base + 0x100, 2))
        return dict.fromkeys(groups, REPEATING_GROUP)

    @property
    def shifts_dates(self) -> bool:
        """Whether dates are modified, for LongitudinalTemporalInformationModified."""
        return any(
            rule.action is Action.REPLACE and _vr(tag) in _SHIFTED_VRS
            for tag, rule in self.rules.items()
        ) or any(vr in _SHIFTED_VRS for vr in self.vr_defaults)

    @property
    def keeps_private(self) -> bool:
        """Whether some private attributes may be kept (Retain Safe Private, overrides)."""
        return Option.RETAIN_SAFE_PRIVATE in self.options or any(
            rule.action is not Action.REMOVE for rule in self.private_rules.values()
        )

    @property
    def cleans(self) -> bool:
        """Whether some rule cleans text, which needs the instance's identifying values."""
        return any(rule.action is Action.CLEAN for rule in self.rules.values())

    @cached_property
    def _cleaned_sequences(self) -> frozenset[int]:
        return frozenset(
            tag
            for tag, rule in self.rules.items()
            if rule.action is Action.CLEAN and _vr(tag) == "SQ"
        )

    def is_contextual(self, tag: int) -> bool:
        """Whether the rule for ``tag`` depends on the enclosing sequences.

        True for compound rules (decided by the IOD) and, in a profile that cleans sequences,
        for free text the VR safety net would pseudonymise (cleaned inside such a sequence).
        """
        rule = self.rule_for(BaseTag(tag))
        return rule.choices is not None or (
            bool(self._cleaned_sequences) and self._is_net_text(tag, rule)
        )

    def _is_net_text(self, tag: int, rule: Rule) -> bool:
        return _vr(tag) in CLEANED_TEXT_VRS and rule is self.vr_defaults.get(_vr(tag))

    def rule_for(
        self, tag: BaseTag | int, sop_class: str | None = None, parents: tuple[int, ...] = ()
    ) -> Rule:
        """Return the rule for an attribute with this tag in this SOP class and sequence chain.

        Without a SOP class, compound rules take the action for an attribute outside any IOD.
        """
        rule = self._resolved.get(tag)
        if rule is None:
            rule = self._resolved[tag] = self._resolve(BaseTag(tag))
        if (
            parents
            and self._cleaned_sequences
            and self._is_net_text(tag, rule)
            and not self._cleaned_sequences.isdisjoint(parents)
        ):
            return Rule(Action.CLEAN, "inside a cleaned sequence: " + rule.reason)
        if rule.choices is None or sop_class is None:
            return rule
        key = (int(tag), sop_class, parents)
        resolved = self._in_context.get(key)
        if resolved is None:
            kind = attribute_type(sop_class, int(tag), parents)
            action = resolve_compound(rule.choices, _vr(tag), kind)
            where = f"Type {kind} in the IOD" if kind else "not in the IOD"
            resolved = self._in_context[key] = Rule(action, f"{rule.reason}: {where}")
        return resolved

    def private_rule(self, creator: str | None, tag: BaseTag | int) -> Rule:
        """Return the rule for a private attribute whose block has this private creator."""
        tag = BaseTag(tag)
        if creator is None or tag.element < 0x1000:
            return PRIVATE
        key = (creator.strip(" \x00"), tag.group, tag.element & 0xFF)
        rule = self.private_rules.get(key)
        if rule is not None:
            return rule
        if Option.RETAIN_SAFE_PRIVATE in self.options and safe_private_attribute(*key):
            return SAFE_PRIVATE
        return PRIVATE

    def _resolve(self, tag: BaseTag) -> Rule:
        rule = self.rules.get(tag)
        if rule is not None:
            return rule
        if tag.is_private:
            return PRIVATE
        if tag.element == 0 and tag.group != 0x0002:
            return GROUP_LENGTH
        if self.repeating_groups and tag.group & 0xFF00 in _REPEATING_GROUPS and tag.group % 2 == 0:
            return REPEATING_GROUP
        if not _in_dictionary(tag):
            return UNKNOWN
        return self.vr_defaults.get(_vr(tag), UNLISTED)

    @property
    def digest(self) -> str:
        """16 hex digits of the SHA-256 of the resolved rules: equal digests, equal policy."""
        return _digest(self)

    def method_codes(self) -> list[tuple[str, str]]:
        """Return the CID 7050 codes for DeidentificationMethodCodeSequence."""
        codes = [BASIC_PROFILE_CODE] if self.basic_profile else []
        return codes + [OPTION_CODES[option] for option in self.options]

    def describe(self) -> Iterator[str]:
        """Describe every rule, one line each, sorted by tag."""
        yield f"Profile {self.name!r} (PS3.15 Table E.1-1, edition {EDITION}), digest {self.digest}"
        options = ", ".join(option.meaning for option in self.options) or "none"
        yield f"options: {options}"
        for tag, rule in sorted(self.rules.items()):
            yield f"{Tag(tag)} {keyword_for_tag(tag) or '(unnamed)'}: {describe_rule(rule)}"
        for (creator, group, offset), rule in sorted(self.private_rules.items()):
            yield f"({group:04X},xx{offset:02X}) {creator!r}: {describe_rule(rule)}"
        if self.repeating_groups:
            for base in _REPEATING_GROUPS:
                yield f"({base >> 8:02X}xx,xxxx) group: {describe_rule(REPEATING_GROUP)}"
        for vr, rule in sorted(self.vr_defaults.items()):
            yield f"any other {vr}: {describe_rule(rule)}"
        if Option.RETAIN_SAFE_PRIVATE in self.options:
            yield f"safe private attribute (by private creator): {describe_rule(SAFE_PRIVATE)}"
        yield f"any other private attribute: {describe_rule(PRIVATE)}"
        yield f"any other attribute missing from the dictionary: {describe_rule(UNKNOWN)}"
        yield f"anything else: {describe_rule(UNLISTED)}"


def describe_rule(rule: Rule) -> str:
    """One rule in words: action (and compound code), then why."""
    action = rule.action.name.lower().replace("_", " ")
    if rule.choices:
        action = f"{rule.choices} by IOD type"
    elif rule.action is Action.CONSTANT:
        action = "replace with a constant"
    return f"{action} ({rule.reason})"


@lru_cache(maxsize=64)
def _digest(profile: Profile) -> str:
    payload = {
        "rules": sorted((tag, *rule.key()) for tag, rule in profile.rules.items()),
        "vr_defaults": sorted((vr, *rule.key()) for vr, rule in profile.vr_defaults.items()),
        "private": sorted((*key, *rule.key()) for key, rule in profile.private_rules.items()),
        "options": [option.value for option in profile.options],
        "basic_profile": profile.basic_profile,
        "repeating_groups": profile.repeating_groups,
        "date_shift_days": profile.date_shift_days,
    }
    text = json.dumps(payload, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


@lru_cache(maxsize=8192)
def _in_dictionary(tag: int) -> bool:
    try:
        get_entry(tag)
    except KeyError:
        return False
    return True


@lru_cache(maxsize=8192)
def vr_of(tag: int) -> str:
    """The dictionary VR of a tag (the first of ambiguous ones), ``UN`` when unknown."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


_vr = vr_of


def _replace_by_vr(tag: int, reason: str) -> Rule:
    action = Action.REMAP_UID if _vr(tag) == "UI" else Action.REPLACE
    return Rule(action, reason)


def keyword_tags(keywords: Iterable[str], what: str) -> dict[int, str]:
    """Tags of DICOM keywords; an unknown keyword is a configuration error naming ``what``."""
    tags = {}
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ConfigurationError(f"{what}: {keyword!r} is not a DICOM keyword")
        tags[tag] = keyword
    return tags


def _table_tag(pattern: str) -> int | None:
    return None if "x" in pattern or pattern == "private" else int(pattern, 16)


def _option_rule(tag: int, keyword: str | None, option: Option, code: str) -> Rule | None:
    reason = option.meaning
    vr = _vr(tag)
    if code == "K":
        if option is Option.RETAIN_PATIENT_CHARACTERISTICS and keyword in _JITTERED_CHARACTERISTICS:
            return Rule(Action.REPLACE, reason + ", except that ages are jittered")
        return Rule(Action.KEEP, reason)
    if option is Option.RETAIN_LONGITUDINAL_MODIFIED_DATES:
        if vr in _DATE_VRS:
            return Rule(Action.REPLACE, reason + ": shifted per patient")
        if vr == "SH":  # TimezoneOffsetFromUTC: whole-day shifts leave the offset true
            return Rule(Action.KEEP, reason)
        return Rule(Action.REMOVE, reason + ": binary timestamp cannot be shifted")
    if option is Option.RETAIN_PATIENT_CHARACTERISTICS:
        return _replace_by_vr(tag, reason + ": modified")
    if vr == "SQ" or vr in CLEANED_TEXT_VRS:
        return Rule(Action.CLEAN, reason + ": cleaned of the instance's identifying values")
    return _replace_by_vr(tag, reason + ": replaced, as it cannot be cleaned")


def _basic_rule(tag: int, code: str, reason: str) -> Rule:
    if "/" in code:
        fallback = resolve_compound(code, _vr(tag), None)
        return Rule(fallback, reason, choices=code)
    if code == "D":
        return _replace_by_vr(tag, reason)
    return Rule(Action(code), reason)


def check_options(options: Iterable[Option]) -> tuple[Option, ...]:
    """The options in a canonical order; refuse what cannot be honoured or contradicts."""
    chosen = set(options)
    for option in chosen & UNSUPPORTED_OPTIONS.keys():
        raise ConfigurationError(
            f"option {option.meaning!r} cannot be honoured: {UNSUPPORTED_OPTIONS[option]}"
        )
    if chosen >= _CONTRADICTORY:
        raise ConfigurationError(
            "options 'Retain Longitudinal Temporal Information Full Dates' and '... Modified "
            "Dates' contradict each other: choose one"
        )
    return tuple(option for option in OPTION_CODES if option in chosen)


def build_profile(
    name: str,
    options: Iterable[Option] = (),
    *,
    seed_keywords: bool = True,
    keep_keywords: Iterable[str] = (),
    overrides: Mapping[int, Rule] | None = None,
    private_overrides: Mapping[tuple[str, int, int], Rule] | None = None,
    date_shift_days: tuple[int, int] | None = None,
) -> Profile:
    """Resolve the Basic Profile, options and overrides into one profile.

    :param name: the profile's name.
    :param options: PS3.15 Annex E options to apply (unsupported ones are refused).
    :param seed_keywords: pseudonymise the seed's identifying keywords by VR (below options).
    :param keep_keywords: attributes kept whatever else says (the caller's keep list).
    :param overrides: rules per tag that win over everything but the keep list.
    :param private_overrides: rules per (private creator, group, element offset).
    :param date_shift_days: the profile's own date-shift range (a job's recipe may set one).
    """
    chosen = check_options(options)
    keep = keyword_tags(keep_keywords, "keep list")
    seed = keyword_tags(SEED_KEYWORDS, "seed list") if seed_keywords else {}
    ordered = [option for option in _OPTION_ORDER if option in chosen]
    rules: dict[int, Rule] = {}
    for pattern, _name, basic, option_codes in ROWS:
        tag = _table_tag(pattern)
        if tag is None:
            continue
        keyword = keyword_for_tag(tag)
        rule = None
        for option in ordered:
            if option.value in option_codes:
                rule = _option_rule(tag, keyword, option, option_codes[option.value])
                if rule is not None:
                    break
        if rule is None and tag in seed:
            rule = _replace_by_vr(tag, "seed identifying keyword")
        rules[tag] = rule or _basic_rule(tag, basic, f"PS3.15 basic profile {basic}")
    for tag in seed.keys() - rules.keys():
        rules[tag] = _replace_by_vr(tag, "seed identifying keyword")
    for tag, (_keyword, kind) in IDENTIFYING_ATTRIBUTES.items():
        if tag not in rules:
            rules[tag] = _basic_rule(tag, "X/Z/D", f"identifying attribute ({kind}) X/Z/D")
    rules.update(overrides or {})
    for tag, keyword in keep.items():
        rules[tag] = Rule(Action.KEEP, f"caller's keep list ({keyword})")
    net = "safety net for attributes the table does not list"
    vr_defaults = {
        "PN": Rule(Action.REPLACE, net + ": person name"),
        "UT": Rule(Action.REPLACE, net + ": free text"),
        "LT": Rule(Action.REPLACE, net + ": free text"),
        "ST": Rule(Action.REPLACE, net + ": free text"),
        "DA": Rule(Action.REPLACE, net + ": date shifted"),
        "DT": Rule(Action.REPLACE, net + ": date shifted"),
        "UI": Rule(Action.REMAP_UID, "every UID not registered by DICOM is remapped"),
        "UR": Rule(Action.REMOVE, net + ": a URL may hold UIDs and identifiers"),
    }
    if Option.RETAIN_UIDS in chosen:
        vr_defaults["UI"] = Rule(Action.KEEP, "retain UIDs option")
    return Profile(
        name,
        rules,
        vr_defaults,
        chosen,
        basic_profile=True,
        repeating_groups=True,
        private_rules=dict(private_overrides or {}),
        date_shift_days=date_shift_days,
    )


DEFAULT_OPTIONS = (Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, Option.RETAIN_PATIENT_CHARACTERISTICS)
RESEARCH_OPTIONS = (*DEFAULT_OPTIONS, Option.RETAIN_SAFE_PRIVATE, Option.CLEAN_DESCRIPTORS)


SHIPPED_OPTIONS: Mapping[str, tuple[tuple[Option, ...], bool]] = {
    "basic": ((), False),
    "default": (DEFAULT_OPTIONS, True),
    "research": (RESEARCH_OPTIONS, True),
}
"""Options and whether the seed keywords are pseudonymised, per shipped Annex E profile."""


def default_profile(keep_keywords: Iterable[str] = ()) -> Profile:
    """The default: seed keywords united with the Annex E Basic Profile and two options."""
    return _cached("default", DEFAULT_OPTIONS, True, tuple(sorted(set(keep_keywords))))


def basic_profile(keep_keywords: Iterable[str] = ()) -> Profile:
    """The Annex E Basic Profile alone (with the identifying attributes and the VR net)."""
    return _cached("basic", (), False, tuple(sorted(set(keep_keywords))))


def research_profile(keep_keywords: Iterable[str] = ()) -> Profile:
    """Default + Retain Safe Private + Clean Descriptors: see docs/profiles.md for why."""
    return _cached("research", RESEARCH_OPTIONS, True, tuple(sorted(set(keep_keywords))))


def resolve_profile(
    name_or_path: str, keep_keywords: Iterable[str] = (), options: Iterable[str] = ()
) -> Profile:
    """A shipped profile by name, or a project profile file by path, with extra options.

    :param name_or_path: ``basic``, ``default``, ``research``, ``pymedphys`` or a YAML file.
    :param keep_keywords: the caller's keep list (wins over everything).
    :param options: Annex E options added to the profile's own, by name.
    :raises ConfigurationError: for an unknown name, a bad file or an option refused.
    """
    extra = tuple(Option.parse(option) for option in options)
    keep = tuple(sorted(set(keep_keywords)))
    if name_or_path == "pymedphys":
        if extra:
            raise ConfigurationError("the pymedphys profile takes no Annex E options")
        return pymedphys_profile(keep)
    if name_or_path in SHIPPED_OPTIONS:
        base, seed = SHIPPED_OPTIONS[name_or_path]
        return _cached(name_or_path, tuple(dict.fromkeys((*base, *extra))), seed, keep)
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        from airflow_pseudo.pseudonymisation.policy.files import load_profile_file

        return load_profile_file(name_or_path, keep, extra)
    raise ConfigurationError(
        f"profile must be one of {', '.join(PROFILES)} or a profile file (.yaml), "
        f"got {name_or_path!r}"
    )


@lru_cache(maxsize=32)
def _cached(
    name: str, options: tuple[Option, ...], seed: bool, keep_keywords: tuple[str, ...]
) -> Profile:
    return build_profile(name, options, seed_keywords=seed, keep_keywords=keep_keywords)


def keyword_profile(
    identifying_keywords: Iterable[str], keep_keywords: Iterable[str] = (), name: str = "keywords"
) -> Profile:
    """A seed-style profile: exactly these keywords are pseudonymised by VR, nothing else."""
    keep = keyword_tags(keep_keywords, "keep list")
    rules = {
        tag: _replace_by_vr(tag, "identifying keyword")
        for tag in keyword_tags(identifying_keywords, "identifying keywords")
    }
    rules.update({tag: Rule(Action.KEEP, f"caller's keep list ({kw})") for tag, kw in keep.items()})
    return Profile(name, rules)


def pymedphys_profile(keep_keywords: Iterable[str] = ()) -> Profile:
    """The seed's identifying keywords alone, PatientSex kept as the seed says."""
    return keyword_profile(SEED_KEYWORDS, {"PatientSex", *keep_keywords}, name="pymedphys")


PROFILES = {
    "basic": basic_profile,
    "default": default_profile,
    "research": research_profile,
    "pymedphys": pymedphys_profile,
}
"""Shipped profiles by name: each takes the caller's keep list."""
