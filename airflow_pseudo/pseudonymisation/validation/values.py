"""Decoding the output's values: only the few the checks read, in the file's character set."""

from __future__ import annotations

from functools import lru_cache

from pydicom.charset import convert_encodings, decode_bytes

from airflow_pseudo.pseudonymisation.validation.layout import Element, Layout

TEXT_PADDING = b"\x00 "


def texts(layout: Layout, element: Element | None) -> list[str]:
    """The values of a text element, decoded and stripped (empty for a missing element)."""
    if element is None:
        return []
    raw = layout.raw(element).rstrip(TEXT_PADDING)
    if not raw:
        return []
    try:
        encodings = convert_encodings(layout.specific_character_set() or ["ISO_IR 6"])
    except Exception:  # an unknown character set: read the ASCII that any of them shares
        encodings = ["iso8859"]
    text = (
        decode_bytes(raw, encodings, set()) if element.vr in _DECODED_VRS else raw.decode("latin-1")
    )
    return [value.strip("\x00 ") for value in text.split("\\")]


def text(layout: Layout, element: Element | None) -> str:
    """The first value of a text element, or ``""``."""
    values = texts(layout, element)
    return values[0] if values else ""


@lru_cache(maxsize=256)
def _encodings(terms: tuple[str, ...]) -> list[str]:
    try:
        return convert_encodings(list(terms) or ["ISO_IR 6"])
    except Exception:  # an unknown character set: read the ASCII that any of them shares
        return ["iso8859"]


_DECODED_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
