"""The identifiers of one original instance, and one matcher that finds them in any text.

A check of a pseudonymised output must not trust the profile that made it: what identifies a
patient is derived here from the original alone (every person name and its components, patient
and other IDs and their issuers, accession number, study ID, dates of birth and death in the forms
people write them, addresses, telephone numbers, institution and department names, the original
non-registered UIDs and the components of the input path), each with its kind.

:class:`InstanceIdentifiers` compiles the patient's into one Aho-Corasick automaton
(pyahocorasick), so finding all of them costs one pass over the data, whatever their number; the
instance's own few (its UIDs, its path's parts) are each found by ``str.find``, which costs less
than an automaton built for one instance. Each match is then kept only if its boundaries fit
its kind: a name on word boundaries,
case-insensitively; an ID, a date or a UID only as a whole token, never digits inside a UID or a
longer number. Values too short or too common to prove anything alone (a four-digit ID, a
two-letter name, a name that is an ordinary
word of the standard's vocabulary) are marked :attr:`Finding.ambiguous`, so the caller can demand
supporting context (a person-name attribute, a whole value) before reporting them.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import PurePath
from typing import Any, Literal, NamedTuple

import ahocorasick
from pydicom.charset import convert_encodings
from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID_dictionary
from pydicom.valuerep import PersonName

__all__ = [
    "Finding",
    "Identifier",
    "InstanceIdentifiers",
    "Kind",
    "encodings_for",
    "is_registered_uid",
    "keyword_kind",
    "may_identify",
    "value_identifiers",
]

Kind = Literal["name", "id", "date", "uid", "path", "address", "phone", "institution"]

MIN_COMPONENT_LENGTH = 2
"""Shorter name components (initials) are searched for only within the whole name."""
MIN_DISTINCT_NAME_LENGTH = 4
"""Name components shorter than this are ambiguous: alone they prove nothing."""
MIN_DISTINCT_DIGITS = 7
"""Digit-only IDs shorter than this are ambiguous: such numbers recur by chance in any file."""
MIN_VALUE_LENGTH = 3
"""Shorter values of any kind are not searched for at all."""
MIN_PATH_COMPONENT_LENGTH = 6
"""Shorter folder and file names (``in``, ``tmp``, ``data``) identify no one."""

# What each attribute holds, when its VR does not say it (PN and UI say it themselves).
_KEYWORD_KINDS: dict[str, Kind] = {
    **dict.fromkeys(
        (
            "PatientID",
            "OtherPatientIDs",
            "IssuerOfPatientID",
            "AccessionNumber",
            "StudyID",
            "AdmissionID",
            "IssuerOfAdmissionID",
            "ServiceEpisodeID",
            "IssuerOfServiceEpisodeID",
            "RequestedProcedureID",
            "ScheduledProcedureStepID",
            "PerformedProcedureStepID",
            "PlacerOrderNumberImagingServiceRequest",
            "FillerOrderNumberImagingServiceRequest",
            "PlacerOrderNumberImagingServiceRequestRetired",
            "FillerOrderNumberImagingServiceRequestRetired",
            "PlacerOrderNumberProcedure",
            "FillerOrderNumberProcedure",
            "MedicalRecordLocator",
            "LocalNamespaceEntityID",
            "UniversalEntityID",
            "InsurancePlanIdentification",
            "ClinicalTrialSubjectID",
            "ClinicalTrialSubjectReadingID",
        ),
        "id",
    ),
    **dict.fromkeys(
        (
            "PatientBirthDate",
            "PatientBirthDateInAlternativeCalendar",
            "PatientDeathDateInAlternativeCalendar",
        ),
        "date",
    ),
    **dict.fromkeys(
        (
            "PatientAddress",
            "InstitutionAddress",
            "ReferringPhysicianAddress",
            "PersonAddress",
            "RegionOfResidence",
            "CountryOfResidence",
        ),
        "address",
    ),
    **dict.fromkeys(
        (
            "PatientTelephoneNumbers",
            "ReferringPhysicianTelephoneNumbers",
            "PersonTelephoneNumbers",
            "PatientTelecomInformation",
            "ReferringPhysicianTelecomInformation",
            "PersonTelecomInformation",
        ),
        "phone",
    ),
    **dict.fromkeys(
        (
            "InstitutionName",
            "InstitutionalDepartmentName",
            "ResponsibleOrganization",
            "ClinicalTrialSiteName",
        ),
        "institution",
    ),
    **dict.fromkeys(("CameraOwnerName", "ContactDisplayName"), "name"),
}
# Kinds that match as whole tokens (digits never inside a longer number or a UID); the other
# kinds match on word boundaries.
_TOKEN_KINDS = frozenset({"id", "date", "uid", "phone"})
_INSTANCE_KINDS = frozenset({"uid", "path"})
"""Kinds whose values differ from one instance to the next (its UIDs, its file name); the other
kinds are the patient's, and every instance of a study repeats them, so their matcher is compiled
once and reused (:func:`_shared_matcher`)."""
# When one needle has several kinds, the report names the most specific.
_KIND_ORDER: tuple[Kind, ...] = (
    "name",
    "id",
    "date",
    "uid",
    "phone",
    "address",
    "institution",
    "path",
)
# UID attributes that name a coding scheme, a context group, a template, a mapping resource,
# a class, a transfer syntax or an implementation: what every patient's files share, never an
# instance. Their values are not searched for, whatever they are: an attribute's kind decides,
# not the profile (which remaps every UID that pydicom's dictionary does not list, these too;
# an output holding one of them proves nothing about the patient).
_SCHEME_UID_KEYWORDS = frozenset(
    {
        "CodingSchemeUID",
        "ContextUID",
        "MappingResourceUID",
        "ContextGroupExtensionCreatorUID",
        "TemplateExtensionOrganizationUID",
        "TemplateExtensionCreatorUID",
        "ImplementationClassUID",
        "TransferSyntaxUID",
        "PrivateInformationCreatorUID",
        "CodingSchemeRegistry",
    }
)
# Everyday English words that are also first or family names; with the standard's vocabulary
# they make a name component ambiguous (see :func:`_vocabulary`).
_EVERYDAY_WORDS = frozenset(
    """
    a about after again all also an and any april are as at august back be been before best
    bill both brown but by can case cook day does done down each even far fine first for
    from full gold good grace green hall hand hard have he head her here high hill his hope
    how if in into is it joy june just king last left light like little long lord low main
    make many march mark may me more most much must my new next no not now of off old on
    once one only or other our out over page park part patient pay pole rich right rose
    said same see she short side small so some star still stone such take than that the
    their them then there these they this those time to too under up upon use very wall was
    way we well were west what when where which white who why will win with wood work would
    year yes yet you young
    """.split()  # noqa: SIM905 (a word list reads best as words)
)
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_WORD_SPLIT = re.compile(r"[^0-9A-Za-z\u00c0-\uffff]+")
_ASCII_DIGITS = frozenset("0123456789")
_ASCII_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SKIPPED_VRS = frozenset(
    {"AT", "FD", "FL", "SL", "SS", "SV", "UL", "US", "UV", "OB", "OD", "OF", "OL", "OV", "OW"}
    | {"UN", "IS", "DS", "TM", "CS", "AS"}
)


def keyword_kind(keyword: str) -> Kind | None:
    """The kind of identifier an attribute holds by its meaning (PN and UI aside)."""
    return _KEYWORD_KINDS.get(keyword)


def is_registered_uid(uid: str) -> bool:
    """Whether a UID is the standard's own (SOP class, transfer syntax, coding scheme...).

    Only pydicom's UID dictionary decides: a UID under the DICOM root ``1.2.840.10008.`` that it
    does not list (an instance UID made by a careless sender, say) is searched for like any other.
    """
    return uid in UID_dictionary


class Identifier(NamedTuple):
    """One identifying value of the original, and what kind of identifier it is."""

    kind: Kind
    value: str


class Finding(NamedTuple):
    """Where an identifier occurs in searched data (offsets in the data searched, end exclusive).

    :param ambiguous: the value is too short or too common to prove a leak alone; report it only
        where its context supports it (a person-name attribute, or the whole of a value).
    """

    kind: Kind
    start: int
    end: int
    ambiguous: bool = False


class _Needle(NamedTuple):
    kind: Kind
    length: int
    ambiguous: bool


class InstanceIdentifiers:
    """The identifiers of one original instance, compiled into one matcher.

    :param identifiers: what to search for; see :meth:`from_dataset`.
    """

    def __init__(self, identifiers: Iterable[Identifier]) -> None:
        self.identifiers: tuple[Identifier, ...] = tuple(dict.fromkeys(identifiers))
        shared: list[Identifier] = []
        own: list[Identifier] = []
        for identifier in self.identifiers:
            (own if identifier.kind in _INSTANCE_KINDS else shared).append(identifier)
        self._shared = _shared_matcher(tuple(shared))
        self._own = _Matcher(own)
        self._searches: dict[tuple[str, ...], _Search] = {}

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, source_path: str | os.PathLike[str] | None = None
    ) -> InstanceIdentifiers:
        """Derive every identifier of an original instance, asking no profile.

        :param dataset: the original instance (file meta and every sequence item are searched).
        :param source_path: the input's path, whose components may name the patient.
        """
        return cls.from_values(_text_values(dataset), source_path)

    @classmethod
    def from_values(
        cls,
        values: Iterable[tuple[str, str, str]],
        source_path: str | os.PathLike[str] | None = None,
    ) -> InstanceIdentifiers:
        """Derive the identifiers from an original's decoded values, as :meth:`from_dataset`.

        :param values: ``(keyword, VR, value)`` of (at least) every PN and UI value and every
            value of an attribute :func:`keyword_kind` knows, at every depth.
        :param source_path: the input's path, whose components may name the patient.
        """
        found: list[Identifier] = []
        for keyword, vr, value in values:
            found += value_identifiers(keyword, vr, value)
        return cls.derived(found, source_path)

    @classmethod
    def derived(
        cls, found: Iterable[Identifier], source_path: str | os.PathLike[str] | None = None
    ) -> InstanceIdentifiers:
        """The identifiers :func:`value_identifiers` gave for an original's values, and its path's.

        :param found: the values' identifiers, in the values' order.
        """
        if source_path is None:
            return cls(found)
        return cls([*found, *_path_identifiers(source_path)])

    def find(self, data: bytes, encodings: Sequence[str] = ("ascii",)) -> Iterator[Finding]:
        """Yield every identifier in ``data``, text encoded in one of ``encodings``.

        :param data: any bytes; offsets of findings are offsets in ``data``.
        :param encodings: Python codec names, as :func:`encodings_for` gives them.
        """
        table = _lowering_table(tuple(encodings))
        return self.find_text(
            data.translate(table).decode("latin-1"), tuple(encodings), lowered=True
        )

    def find_text(
        self,
        text: str,
        encodings: Sequence[str] | None = None,
        *,
        lowered: bool = False,
    ) -> Iterator[Finding]:
        """Yield every identifier in ``text``.

        :param encodings: ``None`` searches decoded text; codec names search bytes viewed as
            Latin-1 characters (one character per byte), as :meth:`find` does.
        :param lowered: ``text`` is already in lower case.
        """
        key = tuple(encodings) if encodings is not None else ()
        haystack = text if lowered else _lower_same_length(text)
        search = self._searches.get(key)
        if search is None:
            search = self._searches[key] = self._own.search_beside(self._shared, key)
        raw = bool(key)
        shared = _findings(search.shared_matches(haystack), haystack, search.overridden, raw=raw)
        own = list(_findings(search.own_matches(haystack), haystack, frozenset(), raw=raw))
        if own:
            yield from heapq.merge(own, shared, key=_end)
        else:
            yield from shared

    def clean_text(self, text: str) -> str:
        """Return ``text`` with every identifying value removed (ambiguous ones included)."""
        spans = sorted((f.start, f.end) for f in self.find_text(text))
        if not spans:
            return text
        kept: list[str] = []
        position = 0
        for start, end in spans:
            if start > position:
                kept.append(text[position:start])
            position = max(position, end)
        kept.append(text[position:])
        return re.sub(r"\s{2,}", " ", "".join(kept)).strip()


def _end(finding: Finding) -> int:
    return finding.end


_Match = tuple[int, tuple[str, tuple[_Needle, ...]]]
"""An automaton's match: the position of its last character, the form and its ranked kinds."""


def value_identifiers(keyword: str, vr: str, value: str) -> tuple[Identifier, ...]:
    """The identifiers one value of an original reveals, by its attribute's VR and kind.

    Standard UIDs and the UIDs of schemes and classes reveal no one; see :func:`keyword_kind`.
    """
    if not may_identify(keyword, vr):
        return ()
    if vr == "UI":
        return (Identifier("uid", value),) if value and not is_registered_uid(value) else ()
    return _cached_identifiers_of("name" if vr == "PN" else _KEYWORD_KINDS[keyword], value)


def may_identify(keyword: str, vr: str) -> bool:
    """Whether a value of this attribute may reveal an identifier (:func:`value_identifiers`)."""
    if vr == "UI":
        return keyword not in _SCHEME_UID_KEYWORDS and not keyword.endswith("ClassUID")
    return vr == "PN" or keyword in _KEYWORD_KINDS


def _findings(
    matches: Iterable[_Match], haystack: str, skipped: frozenset[str], *, raw: bool
) -> Iterator[Finding]:
    """The matches that stand alone, in the order they end, one kind per match."""
    size = len(haystack)
    for last, (form, needles) in matches:
        if form in skipped:
            continue  # the instance's automaton holds this form, with every kind
        for needle in needles:
            start = last + 1 - needle.length
            token = needle.kind in _TOKEN_KINDS
            if _bounded(haystack, start, last + 1, size, token=token, raw=raw):
                yield Finding(needle.kind, start, last + 1, needle.ambiguous)
                break


class _Matcher:
    """Needles of some identifiers, and their automata per set of encodings (built once)."""

    def __init__(self, identifiers: Iterable[Identifier]) -> None:
        needles: dict[str, dict[tuple[Kind, bool], None]] = {}
        for identifier in identifiers:
            for needle, ambiguous in _cached_needles(identifier):
                needles.setdefault(needle, {})[identifier.kind, ambiguous] = None
        self.needles = tuple((n, tuple(kinds)) for n, kinds in needles.items())
        self._compiled: dict[tuple[str, ...], tuple[dict[str, tuple[_Needle, ...]], Any]] = {}

    def compiled(self, encodings: tuple[str, ...]) -> tuple[dict[str, tuple[_Needle, ...]], Any]:
        """Every searched form with its ranked kinds, and one automaton over them."""
        compiled = self._compiled.get(encodings)
        if compiled is None:
            forms = _merged_forms(self.needles, encodings)
            compiled = self._compiled[encodings] = (forms, _automaton(forms))
        return compiled

    def search_beside(self, shared: _Matcher, encodings: tuple[str, ...]) -> _Search:
        """This matcher's forms and ``shared``'s, searched together as one automaton would be.

        A form both hold is searched in this one only, with the kinds of both ranked together.
        """
        shared_forms, shared_automaton = shared.compiled(encodings)
        forms = _merged_forms(self.needles, encodings)
        overridden = frozenset(form for form in forms if form in shared_forms)
        for form in overridden:
            forms[form] = _merge(forms[form], shared_forms[form])
        own = _automaton(forms) if len(forms) > MAX_FORMS_FOUND_ALONE else None
        return _Search(forms, own, shared_automaton, overridden)


MAX_FORMS_FOUND_ALONE = 16
"""An instance's own forms (its UIDs, its path), when no more, are each found by ``str.find``:
a few passes over a file's text cost less than building an automaton for one instance."""


class _Search(NamedTuple):
    """How one instance's identifiers are searched in one set of encodings.

    :param own_automaton: the instance's forms compiled, or ``None`` to find each alone.
    :param overridden: forms of the shared automaton that ``own_forms`` holds (with every kind).
    """

    own_forms: dict[str, tuple[_Needle, ...]]
    own_automaton: Any
    shared_automaton: Any
    overridden: frozenset[str]

    def own_matches(self, haystack: str) -> Iterable[_Match]:
        """The instance's forms in ``haystack``, in the order an automaton reports them."""
        if self.own_automaton is not None:
            return self.own_automaton.iter(haystack)
        matches: list[_Match] = []
        for form, needles in self.own_forms.items():
            last = len(form) - 1
            position = haystack.find(form)
            while position >= 0:
                matches.append((position + last, (form, needles)))
                position = haystack.find(form, position + 1)
        if len(matches) > 1:
            matches.sort(key=_automaton_order)
        return matches

    def shared_matches(self, haystack: str) -> Iterable[_Match]:
        if self.shared_automaton is None:
            return ()
        return self.shared_automaton.iter(haystack)


def _automaton_order(match: _Match) -> tuple[int, int]:
    """By end, and of forms ending together the longest first, as pyahocorasick reports them."""
    return match[0], -len(match[1][0])


@lru_cache(maxsize=64)
def _shared_matcher(identifiers: tuple[Identifier, ...]) -> _Matcher:
    """A patient's matcher, remembered: every instance of a study repeats its identifiers."""
    return _Matcher(identifiers)


def _merged_forms(
    needles: Iterable[tuple[str, tuple[tuple[Kind, bool], ...]]], encodings: tuple[str, ...]
) -> dict[str, tuple[_Needle, ...]]:
    """Each searched form of every needle, in every encoding, with its ranked kinds."""
    merged: dict[str, tuple[_Needle, ...]] = {}
    for needle, kinds in needles:
        for form, ranked in _forms(needle, kinds, encodings):
            known = merged.get(form)
            merged[form] = ranked if known is None else _merge(known, ranked)
    return merged


def _automaton(forms: dict[str, tuple[_Needle, ...]]) -> Any:
    """One automaton over the forms, or ``None`` when there is none to search."""
    if not forms:
        return None
    automaton = ahocorasick.Automaton()
    for form, ranked in forms.items():
        automaton.add_word(form, (form, ranked))
    automaton.make_automaton()
    return automaton


@lru_cache(maxsize=65536)
def _forms(
    needle: str, kinds: tuple[tuple[Kind, bool], ...], encodings: tuple[str, ...]
) -> tuple[tuple[str, tuple[_Needle, ...]], ...]:
    """Each searched form of a needle with its ranked kinds; remembered, as needles recur."""
    return tuple(
        (form, _ranked(form, dict.fromkeys(kinds))) for form in _encoded_forms(needle, encodings)
    )


def _merge(first: tuple[_Needle, ...], second: tuple[_Needle, ...]) -> tuple[_Needle, ...]:
    kinds = {(n.kind, n.ambiguous): None for n in (*first, *second)}
    return _ranked("x" * first[0].length, kinds)


def encodings_for(specific_character_set: Any) -> tuple[str, ...]:
    """The Python codecs a file's SpecificCharacterSet implies (ASCII always among them)."""
    return _codecs(tuple(str(t) for t in _as_list(specific_character_set) if t is not None))


@lru_cache(maxsize=256)
def _codecs(terms: tuple[str, ...]) -> tuple[str, ...]:
    """:func:`encodings_for`, remembered: a run's files share a few character sets."""
    try:
        codecs = convert_encodings(list(terms) or ["ISO_IR 6"])
    except Exception:
        codecs = ["iso8859"]
    return tuple(dict.fromkeys(["ascii", *codecs]))


def _ranked(form: str, kinds: dict[tuple[Kind, bool], None]) -> tuple[_Needle, ...]:
    """The kinds of one needle, unambiguous first, then in report order."""
    if len(kinds) == 1:
        ((kind, ambiguous),) = kinds
        return (_needle(kind, len(form), ambiguous),)
    order = sorted(kinds, key=lambda k: (k[1], _KIND_ORDER.index(k[0])))
    return tuple(_needle(kind, len(form), ambiguous) for kind, ambiguous in order)


@lru_cache(maxsize=4096)
def _needle(kind: Kind, length: int, ambiguous: bool) -> _Needle:
    return _Needle(kind, length, ambiguous)


def _encoded_forms(needle: str, encodings: tuple[str, ...]) -> Iterator[str]:
    """The needle as searched: itself for text, else its bytes in each encoding, as Latin-1."""
    if not encodings or needle.isascii():
        yield needle  # every DICOM character set encodes ASCII as ASCII
        return
    table = _lowering_table(encodings)
    for variant in {needle, needle.upper(), needle.title()}:
        for codec in encodings:
            try:
                data = variant.encode(codec)
            except (UnicodeError, LookupError):
                continue
            yield data.translate(table).decode("latin-1")


@lru_cache(maxsize=64)
def _lowering_table(encodings: tuple[str, ...]) -> bytes:
    """A byte translation to lower case: ASCII, plus the letters of a single-byte character set.

    Multi-byte encodings (UTF-8, ISO 2022) are lowered in their ASCII bytes only; their needles
    are searched as written, in upper case and in title case.
    """
    table = bytearray(bytes(range(256)).lower())
    for codec in encodings:
        try:
            if len("\u00e9".encode(codec)) != 1:
                continue
        except (UnicodeError, LookupError):
            continue
        for byte in range(0x80, 0x100):
            try:
                lowered = bytes([byte]).decode(codec).lower().encode(codec)
            except (UnicodeError, LookupError):
                continue
            if len(lowered) == 1:
                table[byte] = lowered[0]
        break
    return bytes(table)


def _bounded(haystack: str, start: int, end: int, size: int, *, token: bool, raw: bool) -> bool:
    """Whether a match stands alone: words on word boundaries, tokens never inside a number.

    :param raw: the haystack is bytes viewed as Latin-1: any non-ASCII byte may be part of a
        letter (UTF-8 continuation bytes among them).
    """
    before = haystack[start - 1] if start > 0 else ""
    after = haystack[end] if end < size else ""
    if token:
        if before in _ASCII_ALNUM or after in _ASCII_ALNUM:
            return False
        if before == "." and start > 1 and haystack[start - 2] in _ASCII_DIGITS:
            return False
        return not (after == "." and end + 1 < size and haystack[end + 1] in _ASCII_DIGITS)
    return not (_is_word_character(before, raw) or _is_word_character(after, raw))


def _is_word_character(character: str, raw: bool) -> bool:
    if character in _ASCII_ALNUM or character == "_":  # a word character, as in regular expressions
        return True
    return character >= "\x80" and (raw or character.isalnum())


def _lower_same_length(text: str) -> str:
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


@lru_cache(maxsize=65536)
def _cached_needles(identifier: Identifier) -> tuple[tuple[str, bool], ...]:
    """:func:`_needles`, remembered: a series repeats its patient's identifiers in every file."""
    return tuple(_needles(identifier))


@lru_cache(maxsize=65536)
def _cached_identifiers_of(kind: Kind, value: str) -> tuple[Identifier, ...]:
    """:func:`_identifiers_of`, remembered (see :func:`_cached_needles`)."""
    return tuple(_identifiers_of(kind, value))


def _needles(identifier: Identifier) -> Iterator[tuple[str, bool]]:
    """The lower-case strings that reveal an identifier, each marked ambiguous or not."""
    value = identifier.value.strip().lower()
    shortest = MIN_COMPONENT_LENGTH if identifier.kind == "name" else MIN_VALUE_LENGTH
    if len(value) < shortest:
        return
    if identifier.kind == "id" and value.isdigit():
        yield value, len(value) < MIN_DISTINCT_DIGITS
        return
    if identifier.kind in ("name", "institution", "path"):
        yield value, _is_common(value)
        return
    yield value, False


def _identifiers_of(kind: Kind, value: str) -> Iterator[Identifier]:
    """One value of an attribute of ``kind``, with the forms and parts that also reveal it."""
    if kind == "name":
        yield from _name_identifiers(value)
        return
    text = value.strip()
    if not text:
        return
    yield Identifier(kind, text)
    if kind == "date":
        yield from (Identifier("date", form) for form in _date_forms(text))
    elif kind == "phone":
        digits = "".join(c for c in text if c.isdigit())
        if len(digits) >= MIN_DISTINCT_DIGITS:
            yield Identifier("phone", digits)
    elif kind in ("address", "institution"):
        for line in re.split(r"[\r\n,;^]+", text):
            if line.strip() and line.strip() != text:
                yield Identifier(kind, line.strip())


def _name_identifiers(value: str) -> Iterator[Identifier]:
    """A person name: each component, and, when one of them is ambiguous alone, the whole name
    as written and in the orders people write it (distinct components find those anyway)."""
    for group in value.split("="):
        components = [c.strip() for c in group.split("^") if c.strip()]
        if not components:
            continue
        words = [w for c in components for w in c.split() if len(w) >= MIN_COMPONENT_LENGTH]
        if words and not any(_is_common(w.lower()) for w in words):
            yield from (Identifier("name", word) for word in words)
            continue
        yield Identifier("name", group.strip())
        family, given = components[0], components[1:2]
        if given:
            for form in (
                f"{given[0]} {family}",
                f"{family} {given[0]}",
                f"{family}, {given[0]}",
                f"{family},{given[0]}",
                f"{family}^{given[0]}",
                " ".join(components[1:] + components[:1]),
                " ".join(components),
            ):
                yield Identifier("name", form)
        for component in components:
            for word in component.split():
                if len(word) >= MIN_COMPONENT_LENGTH:
                    yield Identifier("name", word)


def _date_forms(text: str) -> Iterator[str]:
    match = _DATE.match(text.replace("-", "").replace(".", "").replace("/", ""))
    if not match:
        return
    year, month, day = match.groups()
    for separator in ("", "-", "/", "."):
        yield separator.join((year, month, day))
    for separator in ("/", ".", "-"):
        yield separator.join((day, month, year))
        yield separator.join((month, day, year))


def _path_identifiers(path: str | os.PathLike[str]) -> tuple[Identifier, ...]:
    """The path's components that may identify: its folders', its file name and its stem."""
    text = os.fspath(path)
    folder, name = os.path.split(text)
    if name in ("", ".", ".."):  # not a file name: pathlib decides what the parts are
        pure = PurePath(text)
        return _path_parts((*pure.parts, pure.stem))
    return _folder_identifiers(folder) + _path_parts((name, PurePath(name).stem))


@lru_cache(maxsize=256)
def _folder_identifiers(folder: str) -> tuple[Identifier, ...]:
    """:func:`_path_identifiers` of a folder, remembered: a run's files share a few folders."""
    return _path_parts(PurePath(folder).parts)


def _path_parts(parts: Iterable[str]) -> tuple[Identifier, ...]:
    identifiers = []
    for part in parts:
        name = part.strip("/\\")
        if len(name) >= MIN_PATH_COMPONENT_LENGTH and not _is_common(name.lower()):
            identifiers.append(Identifier("path", name))
    return tuple(identifiers)


def _is_common(word: str) -> bool:
    """Whether a word is short or an ordinary word of the standard's own vocabulary."""
    if len(word) < MIN_DISTINCT_NAME_LENGTH:
        return True
    return word in _vocabulary()


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    """The words of the standard: attribute names, registered UIDs' names, code meanings.

    These words appear in kept values (descriptions, code meanings, image types) of any file, so
    a name that is one of them proves nothing when it is found alone.
    """
    from pydicom.sr._concepts_dict import concepts as _concepts

    concepts: dict[str, dict[str, dict[str, tuple[str, Any]]]] = _concepts  # type: ignore[assignment]
    names = [entry[2] for entry in DicomDictionary.values()]
    names += [entry[0] for entry in UID_dictionary.values()]
    names += [
        meaning
        for by_name in concepts.values()
        for codes in by_name.values()
        for meaning, _ in codes.values()
    ]
    words = {w.lower() for name in names for w in _WORD_SPLIT.split(name) if w}
    return frozenset(words | _EVERYDAY_WORDS)


def _text_values(dataset: Dataset) -> Iterator[tuple[str, str, str]]:
    """``(keyword, VR, value)`` for every textual value of interest, at every depth.

    Numbers, binary values and pixel data are never decoded: nothing here needs them.
    """
    meta = getattr(dataset, "file_meta", None)
    stack: list[Dataset] = [dataset] + ([meta] if meta is not None else [])
    while stack:
        current = stack.pop()
        for stored in current.elements():
            vr = stored.VR
            if vr is None or (isinstance(stored, RawDataElement) and vr == "UN"):
                try:
                    vr = dictionary_VR(stored.tag)
                except KeyError:
                    continue
            if vr in _SKIPPED_VRS:
                continue
            element = _decoded(current, stored.tag)
            if element is None:
                continue
            if element.VR == "SQ":
                stack.extend(item for item in element.value or [] if isinstance(item, Dataset))
                continue
            keyword = element.keyword or ""
            if element.VR not in ("PN", "UI") and keyword not in _KEYWORD_KINDS:
                continue
            for item in _as_list(element.value):
                text = str(item) if not isinstance(item, bytes) else ""
                if text.strip("\x00 "):
                    yield keyword, element.VR, text.strip("\x00 ")


def _decoded(dataset: Dataset, tag: int) -> Any:
    """The element decoded, or ``None`` when its bytes cannot be decoded as its VR says."""
    try:
        return dataset[tag]
    except Exception:  # a value no reader can decode shows no one's identity
        return None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    if isinstance(value, PersonName):
        return [str(value)]
    return [value]
