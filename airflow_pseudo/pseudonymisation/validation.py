"""Validation: re-check a pseudonymised output against its original.

The checks are independent of how the output was made: the output must be readable; no
identifying value of the original (any value the profile changes or removes, private attributes
included, at any depth) may appear anywhere in the output's text; every UID must be valid; every
changed value must be valid for its VR; the PS3.15 markers must be present. Problems name
attributes by keyword, never by value.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom import config as pydicom_config
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import validate_value

from airflow_pseudo.pseudonymisation.engine import TOOL_NAME, is_registered_uid
from airflow_pseudo.pseudonymisation.profiles import Action, Profile
from airflow_pseudo.pseudonymisation.sources import MAX_UID_LENGTH, UID_PATTERN
from airflow_pseudo.pseudonymisation.strategies import keep_value

if TYPE_CHECKING:
    from airflow_pseudo.pseudonymisation.engine import Pseudonymiser
    from airflow_pseudo.pseudonymisation.policy.recipe import Settings

MIN_NEEDLE_LENGTH = 4
# Numbers and binary values are not searched for: short numbers recur by chance everywhere.
_UNSEARCHED_VRS = frozenset(
    {
        "AT",
        "DS",
        "FD",
        "FL",
        "IS",
        "SL",
        "SS",
        "SV",
        "UL",
        "US",
        "UV",
        "OB",
        "OD",
        "OF",
        "OL",
        "OV",
        "OW",
        "UN",
        "OB or OW",
        "US or SS",
        "US or OW",
        "US or SS or OW",
        "AS",
    }
)
# Explicit VRs whose raw elements are left undecoded: pydicom keeps their VR when decoding.
_UNDECODED_VRS = _UNSEARCHED_VRS - {
    "UN",
    "OB or OW",
    "US or SS",
    "US or OW",
    "US or SS or OW",
    "AS",
}
# What this tool writes itself: its standard wording is not a residue of the input.
_MARKERS = frozenset(
    {
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "LongitudinalTemporalInformationModified",
        "ImplementationVersionName",
    }
)
_CHANGED = frozenset({Action.REPLACE, Action.REMAP_UID, Action.EMPTY})


def validate_file(
    original: str | os.PathLike[str], output: str | os.PathLike[str], *, settings: Settings
) -> list[str]:
    """Return the problems of ``output`` as a pseudonymisation of ``original`` (empty: valid).

    Both files are read by pydicom, which decodes a value only when it is first used: the
    checks never use numbers and binary values they do not need, and decoding every value of a
    file costs several times more than the checks themselves.
    """
    try:
        pseudonymised = pydicom.dcmread(output)
    except Exception as exc:
        return [f"output unreadable ({type(exc).__name__})"]
    try:
        source = pydicom.dcmread(original, force=True)
    except Exception as exc:
        return [f"original unreadable ({type(exc).__name__})"]
    return validate_dataset(source, pseudonymised, settings.pseudonymiser)


def validate_dataset(original: Dataset, output: Dataset, pseudonymiser: Pseudonymiser) -> list[str]:
    """Return the problems of ``output`` as a pseudonymisation of ``original`` (empty: valid)."""
    profile = pseudonymiser.profile
    problems: list[str] = []
    haystack = "\n".join(_texts(output, skip=_MARKERS)).casefold()
    for needle, keyword in sorted(_identifying_values(original, pseudonymiser).items()):
        if needle in haystack:
            problems.append(f"residual identifying value from {keyword} found in the output")
    for element in _elements(output):
        if element.VR == "UI":
            for uid in _values(element.value):
                if uid and (len(uid) > MAX_UID_LENGTH or not UID_PATTERN.match(uid)):
                    problems.append(f"invalid UID in {_name(element)}")
        if element.tag.is_private:
            problems.append(f"private attribute {element.tag} left in the output")
        elif _changes(pseudonymiser, element) and element.VR != "SQ":
            for value in _values(_decoded(element).value):
                try:
                    validate_value(element.VR, value, pydicom_config.RAISE)
                except (ValueError, TypeError):
                    problems.append(f"invalid {element.VR} value in {_name(element)}")
    problems.extend(_marker_problems(output, profile))
    return list(dict.fromkeys(problems))


def _marker_problems(output: Dataset, profile: Profile) -> Iterator[str]:
    if output.get("PatientIdentityRemoved") != "YES":
        yield "PatientIdentityRemoved is not YES"
    if not any(TOOL_NAME in str(m) for m in _values(output.get("DeidentificationMethod", ""))):
        yield "DeidentificationMethod does not name this tool"
    codes = {item.get("CodeValue") for item in output.get("DeidentificationMethodCodeSequence", [])}
    for code, meaning in profile.method_codes():
        if code not in codes:
            yield f"DeidentificationMethodCodeSequence lacks {code} ({meaning})"
    if profile.shifts_dates and output.get("LongitudinalTemporalInformationModified") != "MODIFIED":
        yield "LongitudinalTemporalInformationModified is not MODIFIED"
    meta = getattr(output, "file_meta", None)
    if "SOPInstanceUID" in output and (
        meta is None or meta.get("MediaStorageSOPInstanceUID") != output.SOPInstanceUID
    ):
        yield "file meta MediaStorageSOPInstanceUID differs from SOPInstanceUID"


def _changes(pseudonymiser: Pseudonymiser, element: Any) -> bool:
    """Whether the pseudonymiser changes this element's value (removal included)."""
    action = pseudonymiser.profile.rule_for(element.tag).action
    if action is Action.REPLACE:
        return pseudonymiser.dispatch.get(element.VR) is not keep_value
    return action in _CHANGED or action is Action.REMOVE


def _identifying_values(original: Dataset, pseudonymiser: Pseudonymiser) -> dict[str, str]:
    """Map each searchable identifying value (case-folded) to the keyword it came from.

    A value that also appears within a value the profile keeps is not searched for: finding it
    would only find the kept value.
    """
    identifying: dict[str, str] = {}
    kept: list[str] = []
    for element in _elements(original):
        if element.VR == "SQ" or element.VR in _UNSEARCHED_VRS:
            continue
        changed = _changes(pseudonymiser, element)
        for text in _searchable(element.value, element.VR):
            if not changed or (element.VR == "UI" and is_registered_uid(text)):
                kept.append(text)
            elif len(text) >= MIN_NEEDLE_LENGTH:
                identifying.setdefault(text, _name(element))
    kept_text = "\n".join(kept)
    return {value: keyword for value, keyword in identifying.items() if value not in kept_text}


def _searchable(value: Any, vr: str) -> Iterator[str]:
    for item in _values(value):
        text = item.strip("\x00 ").casefold()
        if text:
            yield text
        if vr == "PN":
            for component in item.replace("=", "^").split("^"):
                if component.strip():
                    yield component.strip().casefold()


def _elements(dataset: Dataset, skip: frozenset[str] = frozenset()) -> Iterator[Any]:
    """Every element at every depth, file meta first, except those named in ``skip``.

    Elements read from a file with an explicit number or binary VR are yielded undecoded (as
    pydicom's raw elements: same ``tag`` and ``VR``, the value still bytes): text is never
    searched for there, and :func:`_decoded` decodes one when its value is checked. Everything
    else is decoded, UN included, which pydicom may turn into the dictionary's text VR.
    """
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        yield from (e for e in meta if e.keyword not in skip)
    stack = [dataset]
    while stack:
        current = stack.pop()
        for stored in current.elements():
            element: Any = stored
            if not isinstance(stored, RawDataElement) or stored.VR not in _UNDECODED_VRS:
                element = current[stored.tag]
            if skip and keyword_for_tag(element.tag) in skip:
                continue
            yield element
            if element.VR == "SQ":
                stack.extend(element.value)


def _decoded(element: Any) -> Any:
    return convert_raw_data_element(element) if isinstance(element, RawDataElement) else element


def _texts(dataset: Dataset, skip: frozenset[str] = frozenset()) -> Iterator[str]:
    for element in _elements(dataset, skip):
        if element.VR not in _UNSEARCHED_VRS and element.VR != "SQ":
            yield from _values(element.value)


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value if v is not None]
    if isinstance(value, bytes):
        return []
    return [str(value)]


def _name(element: Any) -> str:
    return element.keyword or str(BaseTag(element.tag))
