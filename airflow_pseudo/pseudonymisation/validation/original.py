"""The original, read once: its identifiers and its anchors.

An original written as a DICOM file is scanned like the output (:func:`.layout.read_layout`),
reporting and decoding only the values that may identify; anything else (no preamble, a
structure the walker refuses) is read by pydicom, which tolerates more.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation.identifiers import (
    Identifier,
    InstanceIdentifiers,
    keyword_kind,
    may_identify,
    value_identifiers,
)
from airflow_pseudo.pseudonymisation.validation.keys import ANCHORS
from airflow_pseudo.pseudonymisation.validation.layout import (
    SPECIFIC_CHARACTER_SET,
    Layout,
    UnreadableOutputError,
    implicit_vr,
    read_layout,
)
from airflow_pseudo.pseudonymisation.validation.quiet import quiet_pydicom
from airflow_pseudo.pseudonymisation.validation.values import (
    REMEMBERED_LENGTH,
    decoded_values,
    texts,
)

_ANCHOR_TAGS = frozenset(ANCHORS.values())
_PLAN: dict[int, int] = {}
"""The scanner's plan for originals: the same for every run."""


@dataclass(frozen=True)
class Original:
    """What the checks need of the original.

    :param anchors: keyword -> value of the key checks' anchors present at the top level.
    """

    identifiers: InstanceIdentifiers
    anchors: dict[str, str]


def read_original(data: bytes, source_path: str | None = None) -> Original:
    """Read an original from its bytes.

    :raises Exception: whatever pydicom raises for bytes that are not DICOM at all.
    """
    try:
        layout = read_layout(data, _identifying_tag, _PLAN)
    except UnreadableOutputError:
        with quiet_pydicom("original"):
            return from_dataset(pydicom.dcmread(io.BytesIO(data), force=True), source_path)
    return from_layout(layout, source_path)


def from_layout(layout: Layout, source_path: str | None = None) -> Original:
    with quiet_pydicom("original"):
        identifiers = InstanceIdentifiers.derived(_identifiers(layout), source_path)
    anchors = {}
    for keyword, tag in ANCHORS.items():
        value = texts(layout, layout.top_level(tag))
        if value and value[0]:
            anchors[keyword] = value[0]
    return Original(identifiers, anchors)


def from_dataset(dataset: Dataset, source_path: str | None = None) -> Original:
    with quiet_pydicom("original"):
        identifiers = InstanceIdentifiers.from_dataset(dataset, source_path)
    anchors = {}
    for keyword in ANCHORS:
        value = str(dataset.get(keyword, "") or "").strip("\x00 ")
        if value:
            anchors[keyword] = value
    return Original(identifiers, anchors)


@lru_cache(maxsize=16384)
def _identifying_tag(tag: int) -> bool:
    """Whether an element of the original may hold an identifier or an anchor."""
    if tag in _ANCHOR_TAGS or tag == SPECIFIC_CHARACTER_SET:
        return True
    return implicit_vr(tag) in ("PN", "UI") or keyword_kind(keyword_for_tag(tag) or "") is not None


def _identifiers(layout: Layout) -> list[Identifier]:
    """The identifiers the original's values reveal, in the order of its elements.

    A series repeats its patient's values, so short ones are remembered by their bytes; UIDs are
    not, as most are the instance's own.
    """
    terms = tuple(layout.specific_character_set())
    data = layout.data
    found: list[Identifier] = []
    for element in layout.elements:
        vr = element.vr
        if vr != "UI" and element.end - element.start <= REMEMBERED_LENGTH:
            raw = data[element.start : element.end]
            found += _remembered_identifiers(element.tag, vr, raw, terms)
            continue
        keyword = _identifying_keyword(element.tag, vr)
        if keyword is not None:
            found += _value_identifiers(keyword, vr, data[element.start : element.end], terms)
    return found


@lru_cache(maxsize=16384)
def _identifying_keyword(tag: int, vr: str) -> str | None:
    """The keyword of an element whose values may identify, else ``None``."""
    keyword = keyword_for_tag(tag) or ""
    return keyword if may_identify(keyword, vr) else None


@lru_cache(maxsize=16384)
def _remembered_identifiers(
    tag: int, vr: str, raw: bytes, terms: tuple[str, ...]
) -> tuple[Identifier, ...]:
    """The identifiers of one element's values, remembered by its bytes."""
    keyword = _identifying_keyword(tag, vr)
    return () if keyword is None else _value_identifiers(keyword, vr, raw, terms)


def _value_identifiers(
    keyword: str, vr: str, raw: bytes, terms: tuple[str, ...]
) -> tuple[Identifier, ...]:
    """The identifiers of one element's values, from its bytes in the file's character set."""
    return tuple(
        identifier
        for value in decoded_values(raw, vr, terms)
        if value
        for identifier in value_identifiers(keyword, vr, value)
    )
