"""The evidence search: the original's identifiers, looked for in every byte of the output.

Nothing here asks the profile what it changed: the identifiers come from the original alone
(:class:`~airflow_pseudo.pseudonymisation.identifiers.InstanceIdentifiers`) and every byte of the
output outside pixel data is searched, kept values and private elements included, once, in the
encodings its SpecificCharacterSet implies. Whether a match counts depends on where it is:

- a UID, a long ID, a distinct name: anywhere;
- a date of birth or death: anywhere, except in a date, time or number attribute that is not
  itself a birth or death date (shifted dates may land on it by chance);
- an ID made of digits: never in a number, date, time or UID attribute;
- a part of the input path: only in free text (file names repeat modalities and other codes);
- an ambiguous value (a short ID, a short or everyday-word name): only in free text (not in
  coded strings, which are the standard's words), and a name only in a person-name attribute
  or as a whole value.

A problem names the attribute and the kind of identifier, never the value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from airflow_pseudo.pseudonymisation.identifiers import (
    Finding,
    InstanceIdentifiers,
    encodings_for,
    keyword_kind,
)
from airflow_pseudo.pseudonymisation.validation.layout import (
    FILE_STRUCTURE,
    PIXEL_DATA_SEGMENT,
    Element,
    Layout,
)

KIND_LABELS = {
    "name": "a name",
    "id": "an ID",
    "date": "a date",
    "uid": "a UID",
    "path": "a part of the input path",
    "address": "an address",
    "phone": "a telephone number",
    "institution": "an institution name",
}
FREE_TEXT_VRS = frozenset({"LO", "LT", "PN", "ST", "UC", "UT"})
"""Where people write. Short strings (SH: code values, time zone offsets, station names), coded
strings, AE titles and URLs are full of short numbers and the standard's words."""
NUMERIC_TEXT_VRS = frozenset({"AS", "DA", "DS", "DT", "IS", "TM", "UI"})


@dataclass(frozen=True)
class Residue:
    """One identifier of the original found in the output: where, and of what kind."""

    kind: str
    where: str

    def __str__(self) -> str:
        return f"{KIND_LABELS.get(self.kind, self.kind)} of the original found in {self.where}"


def find_residues(layout: Layout, identifiers: InstanceIdentifiers) -> list[Residue]:
    """Every identifier of the original that the output still holds, once per place and kind."""
    encodings = encodings_for(layout.specific_character_set())
    residues: dict[Residue, None] = {}
    data = layout.data
    for start, end in layout.searched:
        for finding in identifiers.find(data[start:end], encodings):
            residue = _residue(layout, finding, start)
            if residue is not None:
                residues[residue] = None
    return list(residues)


def _residue(layout: Layout, finding: Finding, offset: int) -> Residue | None:
    start, end = finding.start + offset, finding.end + offset
    element = layout.element_at(start)
    if element is None or end > element.end:
        if finding.ambiguous:
            return None
        where = PIXEL_DATA_SEGMENT if layout.in_segment(start) else FILE_STRUCTURE
        return Residue(finding.kind, where)
    if _counts(layout, element, finding, start, end):
        return Residue(finding.kind, element.name)
    return None


def _counts(layout: Layout, element: Element, finding: Finding, start: int, end: int) -> bool:
    """Whether a match in this element is evidence, given its kind and the element's VR."""
    vr = element.vr
    if finding.kind == "date" and vr in NUMERIC_TEXT_VRS:
        return keyword_kind(element.keyword) == "date"
    if finding.kind in ("id", "phone") and vr in NUMERIC_TEXT_VRS:
        return False
    if finding.kind == "path" and vr not in FREE_TEXT_VRS:
        return False  # folder and file names repeat coded values: MR, RTSTRUCT, AXIAL...
    if not finding.ambiguous:
        return True
    if vr not in FREE_TEXT_VRS:
        return False
    if finding.kind in ("id", "phone"):
        return True
    return vr == "PN" or _whole_value(layout, element, start, end)


def _whole_value(layout: Layout, element: Element, start: int, end: int) -> bool:
    """Whether a match is one whole value of the element (padding and multiplicity aside)."""
    data = layout.data
    before = _skip_back(data, start, element.start)
    after = _skip_forward(data, end, element.end)
    return (before == element.start or data[before - 1] == 0x5C) and (
        after == element.end or data[after] == 0x5C
    )


def _skip_back(data: bytes, position: int, floor: int) -> int:
    while position > floor and data[position - 1] in (0x20, 0x00):
        position -= 1
    return position


def _skip_forward(data: bytes, position: int, ceiling: int) -> int:
    while position < ceiling and data[position] in (0x20, 0x00):
        position += 1
    return position


def residue_problems(layout: Layout, identifiers: InstanceIdentifiers) -> Iterator[str]:
    """The residues as problem messages."""
    return (str(residue) for residue in find_residues(layout, identifiers))
