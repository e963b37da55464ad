"""Safe private attributes (PS3.15 Retain Safe Private Option), matched by private creator.

A minimal subset (Siemens CSA headers); the generated dictionary replaces this file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SafePrivateAttribute:
    """A private attribute known to hold no identifying information, and where that is said."""

    creator: str
    group: int
    element: int
    vr: str
    name: str
    source: str


_SIEMENS_CSA = "SIEMENS CSA HEADER"
_SOURCE = "Siemens syngo MR DICOM Conformance Statement (CSA headers)"
_ENTRIES = (
    SafePrivateAttribute(_SIEMENS_CSA, 0x0029, 0x08, "CS", "CSA Image Header Type", _SOURCE),
    SafePrivateAttribute(_SIEMENS_CSA, 0x0029, 0x09, "LO", "CSA Image Header Version", _SOURCE),
    SafePrivateAttribute(_SIEMENS_CSA, 0x0029, 0x10, "OB", "CSA Image Header Info", _SOURCE),
    SafePrivateAttribute(_SIEMENS_CSA, 0x0029, 0x18, "CS", "CSA Series Header Type", _SOURCE),
    SafePrivateAttribute(_SIEMENS_CSA, 0x0029, 0x19, "LO", "CSA Series Header Version", _SOURCE),
    SafePrivateAttribute(_SIEMENS_CSA, 0x0029, 0x20, "OB", "CSA Series Header Info", _SOURCE),
)
_BY_KEY = {(e.creator, e.group, e.element): e for e in _ENTRIES}


def safe_private_attribute(
    creator: str, group: int, element_offset: int
) -> SafePrivateAttribute | None:
    """The safe private attribute of this creator, group and element offset (low byte), if any."""
    return _BY_KEY.get((creator.strip(" \x00"), group, element_offset & 0xFF))
