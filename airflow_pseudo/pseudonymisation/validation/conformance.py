"""Checks for release: valid UIDs, valid values where the tool wrote them, and the markers.

A value is the tool's when the original holds no element with the same tag and the same bytes;
each such value must be valid for its VR. Every UID must be valid wherever it is. The PS3.15
markers must say that this tool de-identified the file, with the profile actually used: its
digest in DeidentificationMethod and its options' codes in DeidentificationMethodCodeSequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

from airflow_pseudo.pseudonymisation.engine import TOOL_NAME
from airflow_pseudo.pseudonymisation.sources import MAX_UID_LENGTH, UID_PATTERN
from airflow_pseudo.pseudonymisation.validation.layout import Layout, implicit_vr
from airflow_pseudo.pseudonymisation.validation.values import TEXT_PADDING, text, texts

RETAIN_SAFE_PRIVATE_CODE = "113111"
MODIFIED_DATES_CODE = "113107"
CHECKED_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR"}
    | {"UT"}
)
_CODE_SEQUENCE = 0x00120064
_CODE_VALUE = 0x00080100
_PATIENT_IDENTITY_REMOVED = 0x00120062
_DEIDENTIFICATION_METHOD = 0x00120063
_LONGITUDINAL = 0x00280303
_SOP_INSTANCE_UID = 0x00080018
_MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003


def original_values(dataset: Dataset) -> dict[int, set[bytes]]:
    """The raw bytes of every textual value of the original, by tag, at every depth.

    Call it before anything decodes the original: decoded elements no longer hold their bytes.
    """
    values: dict[int, set[bytes]] = {}
    stack = [dataset]
    while stack:
        current = stack.pop()
        for stored in current.elements():
            if not isinstance(stored, RawDataElement):
                if stored.VR == "SQ":
                    stack.extend(item for item in stored.value or [] if isinstance(item, Dataset))
                continue
            vr = stored.VR if stored.VR not in (None, "UN") else implicit_vr(int(stored.tag))
            if vr in CHECKED_VRS and stored.value is not None:
                raw = bytes(stored.value).rstrip(TEXT_PADDING)
                values.setdefault(int(stored.tag), set()).add(raw)
            elif vr == "SQ":
                sequence = _decoded(current, int(stored.tag))
                stack.extend(item for item in sequence if isinstance(item, Dataset))
    return values


def _decoded(dataset: Dataset, tag: int) -> list[object]:
    try:
        return list(dataset[tag].value or [])
    except Exception:  # an undecodable sequence: its contents have no values to compare
        return []


def uid_problems(layout: Layout) -> Iterator[str]:
    """Each element holding a malformed or over-long UID."""
    for element in layout.elements:
        if element.vr != "UI":
            continue
        for raw in layout.raw(element).rstrip(TEXT_PADDING).split(b"\\"):
            uid = raw.decode("latin-1").strip("\x00 ")
            if uid and (len(uid) > MAX_UID_LENGTH or not UID_PATTERN.match(uid)):
                yield f"invalid UID in {element.name}"
                break


def value_problems(layout: Layout, original: Mapping[int, set[bytes]]) -> Iterator[str]:
    """Each value the tool wrote (not the original's) that is invalid for its VR."""
    for element in layout.elements:
        if element.vr not in CHECKED_VRS:
            continue
        if layout.raw(element).rstrip(TEXT_PADDING) in original.get(element.tag, ()):
            continue
        try:
            for value in texts(layout, element):
                if value:
                    validate_value(element.vr, value, pydicom_config.RAISE)
        except (ValueError, TypeError, UnicodeError):
            yield f"invalid {element.vr} value in {element.name}"


def private_problems(layout: Layout, method_codes: Iterable[str]) -> Iterator[str]:
    """Private elements, unless the profile used retains safe private attributes."""
    if RETAIN_SAFE_PRIVATE_CODE in method_codes:
        return
    for element in layout.elements:
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
