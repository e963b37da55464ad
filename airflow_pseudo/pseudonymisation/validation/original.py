"""The original, read once: its identifiers, its values' bytes and its anchors.

An original written as a DICOM file is walked like the output (:func:`.layout.read_layout`),
decoding only the few values that identify; anything else (no preamble, a structure the walker
refuses) is read by pydicom, which tolerates more.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation.identifiers import InstanceIdentifiers, keyword_kind
from airflow_pseudo.pseudonymisation.validation.conformance import CHECKED_VRS, original_values
from airflow_pseudo.pseudonymisation.validation.keys import ANCHORS
from airflow_pseudo.pseudonymisation.validation.layout import (
    Layout,
    UnreadableOutputError,
    read_layout,
)
from airflow_pseudo.pseudonymisation.validation.quiet import quiet_pydicom
from airflow_pseudo.pseudonymisation.validation.values import TEXT_PADDING, texts


@dataclass(frozen=True)
class Original:
    """What the checks need of the original.

    :param values: the raw bytes of every textual value, by tag, at every depth.
    :param anchors: keyword -> value of the key checks' anchors present at the top level.
    """

    identifiers: InstanceIdentifiers
    values: dict[int, set[bytes]]
    anchors: dict[str, str]


def read_original(data: bytes, source_path: str | None = None) -> Original:
    """Read an original from its bytes.

    :raises Exception: whatever pydicom raises for bytes that are not DICOM at all.
    """
    try:
        layout = read_layout(data)
    except UnreadableOutputError:
        with quiet_pydicom("original"):
            return from_dataset(pydicom.dcmread(io.BytesIO(data), force=True), source_path)
    return from_layout(layout, source_path)


def from_layout(layout: Layout, source_path: str | None = None) -> Original:
    values: dict[int, set[bytes]] = {}
    for element in layout.elements:
        if element.vr in CHECKED_VRS:
            values.setdefault(element.tag, set()).add(layout.raw(element).rstrip(TEXT_PADDING))
    with quiet_pydicom("original"):
        identifiers = InstanceIdentifiers.from_values(_identifying_values(layout), source_path)
    anchors = {}
    for keyword, tag in ANCHORS.items():
        value = texts(layout, layout.top_level(tag))
        if value and value[0]:
            anchors[keyword] = value[0]
    return Original(identifiers, values, anchors)


def from_dataset(dataset: Dataset, source_path: str | None = None) -> Original:
    with quiet_pydicom("original"):
        values = original_values(dataset)  # first: it needs the values still undecoded
        identifiers = InstanceIdentifiers.from_dataset(dataset, source_path)
    anchors = {}
    for keyword in ANCHORS:
        value = str(dataset.get(keyword, "") or "").strip("\x00 ")
        if value:
            anchors[keyword] = value
    return Original(identifiers, values, anchors)


def _identifying_values(layout: Layout) -> Iterator[tuple[str, str, str]]:
    for element in layout.elements:
        keyword = element.keyword
        if element.vr in ("PN", "UI") or keyword_kind(keyword) is not None:
            for value in texts(layout, element):
                if value:
                    yield keyword, element.vr, value
