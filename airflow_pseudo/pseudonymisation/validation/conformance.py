"""Checks for release: valid UIDs, valid values where the tool wrote them, and the markers.

Each value the tool writes (the profile changes it, or it is a marker or file meta) must be
valid for its VR. Every UID must be valid wherever it is. The PS3.15
markers must say that this tool de-identified the file, with the profile actually used: its
digest in DeidentificationMethod and its options' codes in DeidentificationMethodCodeSequence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache

from pydicom import config as pydicom_config
from pydicom.valuerep import validate_value

from airflow_pseudo.pseudonymisation.engine import TOOL_NAME
from airflow_pseudo.pseudonymisation.sources import MAX_UID_LENGTH, UID_PATTERN
from airflow_pseudo.pseudonymisation.validation.layout import Layout
from airflow_pseudo.pseudonymisation.validation.values import (
    REMEMBERED_LENGTH,
    TEXT_PADDING,
    decoded_values,
    text,
    texts,
)

RETAIN_SAFE_PRIVATE_CODE = "113111"
MODIFIED_DATES_CODE = "113107"
CHECKED_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR"}
    | {"UT"}
)
_SPECIFIC_CHARACTER_SET = 0x00080005
_CODE_SEQUENCE = 0x00120064
_CODE_VALUE = 0x00080100
_PATIENT_IDENTITY_REMOVED = 0x00120062
_DEIDENTIFICATION_METHOD = 0x00120063
_LONGITUDINAL = 0x00280303
_SOP_INSTANCE_UID = 0x00080018
_MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
MARKER_TAGS = frozenset(
    {
        _PATIENT_IDENTITY_REMOVED,
        _DEIDENTIFICATION_METHOD,
        _CODE_SEQUENCE,
        _LONGITUDINAL,
        _SOP_INSTANCE_UID,
        _SPECIFIC_CHARACTER_SET,
    }
)
"""What the marker checks read, and what the tool writes besides the profile's changes."""


def uid_problems(layout: Layout) -> Iterator[str]:
    """Each element holding a malformed or over-long UID."""
    data = layout.data
    for element in layout.elements:
        if element.vr != "UI":
            continue
        raw = data[element.start : element.end]
        valid = _valid_uids_raw(raw) if len(raw) <= REMEMBERED_LENGTH else _valid_uids(raw)
        if not valid:
            yield f"invalid UID in {element.name}"


def _valid_uids(raw: bytes) -> bool:
    for value in raw.rstrip(TEXT_PADDING).split(b"\\"):
        uid = value.decode("latin-1").strip("\x00 ")
        if uid and (len(uid) > MAX_UID_LENGTH or not UID_PATTERN.match(uid)):
            return False
    return True


@lru_cache(maxsize=16384)
def _valid_uids_raw(raw: bytes) -> bool:
    """:func:`_valid_uids`, remembered by the value's bytes: class and study UIDs recur."""
    return _valid_uids(raw)


def value_problems(layout: Layout, written: Callable[[int], bool]) -> Iterator[str]:
    """Each value the tool wrote that is invalid for its VR.

    :param written: whether the tool writes the value of an element with this tag.
    """
    terms = tuple(layout.specific_character_set())
    data = layout.data
    for element in layout.elements:
        vr = element.vr
        if vr not in CHECKED_VRS or not written(element.tag):
            continue
        raw = data[element.start : element.end]
        if len(raw) <= REMEMBERED_LENGTH:
            valid = _valid_raw(vr, raw, terms)
        else:
            valid = _all_valid(vr, raw, terms)
        if not valid:
            yield f"invalid {vr} value in {element.name}"


def _all_valid(vr: str, raw: bytes, terms: tuple[str, ...]) -> bool:
    return all(_valid(vr, value) for value in decoded_values(raw, vr, terms) if value)


@lru_cache(maxsize=16384)
def _valid_raw(vr: str, raw: bytes, terms: tuple[str, ...]) -> bool:
    """:func:`_all_valid`, remembered by the value's bytes and the file's character set."""
    return _all_valid(vr, raw, terms)


@lru_cache(maxsize=16384)
def _valid(vr: str, value: str) -> bool:
    """Whether pydicom finds ``value`` valid for ``vr``; remembered, as values recur."""
    try:
        validate_value(vr, value, pydicom_config.RAISE)
    except (ValueError, TypeError, UnicodeError):
        return False
    return True


def private_problems(layout: Layout, method_codes: Iterable[str]) -> Iterator[str]:
    """Private elements, unless the profile used retains safe private attributes."""
    if RETAIN_SAFE_PRIVATE_CODE in method_codes:
        return
    # A scan counts the private elements it skips; sequences it walks whole list theirs.
    if (
        not layout.complete_walk
        and not layout.private_elements
        and not any(element.tag >> 16 & 1 for element in layout.elements)
    ):
        return
    for element in layout.complete().elements:
        if element.tag >> 16 & 1 and element.tag >> 16 != 0xFFFF:
            yield f"private attribute {element.name} left in the output"


def marker_problems(
    layout: Layout, method_codes: Sequence[str], profile_digest: str | None
) -> Iterator[str]:
    """The PS3.15 markers: present, naming this tool, its profile's digest and option codes."""
    if text(layout, layout.top_level(_PATIENT_IDENTITY_REMOVED)) != "YES":
        yield "PatientIdentityRemoved is not YES"
    methods = [m for m in texts(layout, layout.top_level(_DEIDENTIFICATION_METHOD)) if m]
    ours = [m for m in methods if m.startswith(TOOL_NAME)]
    if not ours:
        yield "DeidentificationMethod does not name this tool"
    elif profile_digest and not any(m.split()[-1] == profile_digest for m in ours):
        yield "DeidentificationMethod does not name the digest of the profile used"
    written = {text(layout, e) for e in layout.nested(_CODE_SEQUENCE, _CODE_VALUE)}
    for code in method_codes:
        if code not in written:
            yield f"DeidentificationMethodCodeSequence lacks {code}"
    longitudinal = text(layout, layout.top_level(_LONGITUDINAL))
    if MODIFIED_DATES_CODE in method_codes and longitudinal != "MODIFIED":
        yield "LongitudinalTemporalInformationModified is not MODIFIED"
    instance = layout.top_level(_SOP_INSTANCE_UID)
    media = layout.top_level(_MEDIA_STORAGE_SOP_INSTANCE_UID)
    if instance is not None and text(layout, media) != text(layout, instance):
        yield "file meta MediaStorageSOPInstanceUID differs from SOPInstanceUID"
