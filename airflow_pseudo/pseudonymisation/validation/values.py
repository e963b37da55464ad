"""Decoding the output's values: only the few the checks read, in the file's character set."""

from __future__ import annotations

from functools import lru_cache

from pydicom.charset import convert_encodings, decode_bytes

from airflow_pseudo.pseudonymisation.validation.layout import Element, Layout

TEXT_PADDING = b"\x00 "
REMEMBERED_LENGTH = 256
"""Values up to this size are remembered by their bytes: dates, codes and names recur."""


def texts(layout: Layout, element: Element | None) -> list[str]:
    """The values of a text element, decoded and stripped (empty for a missing element)."""
    if element is None:
        return []
    raw = layout.data[element.start : element.end].rstrip(TEXT_PADDING)
    if not raw:
        return []
    if raw.isascii() or element.vr not in _DECODED_VRS:
        if b"\\" not in raw:
            return [raw.decode("latin-1").strip("\x00 ")]
        return _split(raw.decode("latin-1"))
    return _decoded(raw, tuple(layout.specific_character_set()))


def decoded_values(raw: bytes, vr: str, terms: tuple[str, ...]) -> list[str]:
    """The values of a text element's raw bytes, as :func:`texts` decodes them.

    :param terms: the file's SpecificCharacterSet terms.
    """
    raw = raw.rstrip(TEXT_PADDING)
    if not raw:
        return []
    if raw.isascii() or vr not in _DECODED_VRS:
        return _split(raw.decode("latin-1"))
    return _decoded(raw, terms)


def _split(text: str) -> list[str]:
    return [value.strip("\x00 ") for value in text.split("\\")]


@lru_cache(maxsize=4096)
def _decoded_tuple(raw: bytes, terms: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_split(decode_bytes(raw, list(_encodings(terms)), set())))


def _decoded(raw: bytes, terms: tuple[str, ...]) -> list[str]:
    """Non-ASCII text in the file's character set; remembered, as values recur across files."""
    return list(_decoded_tuple(raw, terms))


def text(layout: Layout, element: Element | None) -> str:
    """The first value of a text element, or ``""``."""
    values = texts(layout, element)
    return values[0] if values else ""


@lru_cache(maxsize=256)
def _encodings(terms: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(convert_encodings(list(terms) or ["ISO_IR 6"]))
    except Exception:  # an unknown character set: read the ASCII that any of them shares
        return ("iso8859",)


_DECODED_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
