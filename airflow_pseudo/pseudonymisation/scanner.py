"""The element scanner: one level of a DICOM dataset's bytes, as copy runs and elements to handle.

Most elements of a file are either kept as they are or removed (private tags above all); neither
needs more than its header read. :func:`scan_level` walks the element headers of one level (the
top-level dataset, or one sequence item) and returns *events*: runs of consecutive kept elements
as one byte range to copy, and the few elements the caller must look at (those a rule changes,
sequences, and values the caller asked to see). Removed elements are only counted.

What to do with each tag comes from a *plan*: a dict from tag to a code, filled on demand by the
caller's ``classify`` callable, so the profile is consulted once per tag, not once per element.

Given the plan of sequence contents (``nested``), the scanner also looks inside each sequence
whose code has :data:`FOLD`: when every element in it, to any depth, is kept, the whole sequence
joins the copy run around it instead of becoming an event (code sequences, contours and
references are often left as they are).

This module is the reference implementation. ``_scanner.c`` implements the same function in C
(tests run both over the same inputs and require identical events and errors); the fast path
uses the compiled one when it was built.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from airflow_pseudo.pseudonymisation.errors import UnsupportedInputError

# Plan codes: the low two bits say what happens, the flags refine it.
KEEP = 0
"""Copy the element's bytes (a sequence is still entered: its items have rules of their own)."""
REMOVE = 1
"""Drop the element and count it."""
CHANGE = 2
"""Hand the element to the caller."""
DROP = 3
"""Drop the element without counting it (the caller writes its own version)."""
DICTIONARY_SQ = 4
"""The data dictionary says SQ: an implicit-VR or UN element with this tag is a sequence."""
REPORT = 8
"""Hand the element to the caller even when kept or removed (a value the caller needs)."""
FOLD = 16
"""A sequence with this tag whose contents are all kept is copied as it is (see ``nested``)."""

# Event kinds: (COPY, start, end, first_tag) and (ELEMENT, tag, vr, length, header, value, end).
COPY = 0
ELEMENT = 1

ITEM, ITEM_DELIMITER, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF

Event = tuple[Any, ...]
"""``(COPY, start, end, first_tag)`` or ``(ELEMENT, tag, vr, length, header, value, end)``."""
Classify = Callable[[int], int]
Nested = tuple[dict[int, int], Classify, int]
"""The plan and classify of sequence contents, and how many levels of items to look into."""

_LONG_LENGTH_VRS = frozenset(vr.value for vr in EXPLICIT_VR_LENGTH_32)
_VR_BY_CODE = {vr.value.encode("ascii"): vr.value for vr in VR if " or " not in vr.value}
_UINT32 = struct.Struct("<I")
_EXPLICIT_HEADER = struct.Struct("<HH2sH")


class FastPathUnsupported(Exception):
    """This file needs the reference engine; the message says why (never a value)."""


HEADER_TRUNCATED = "truncated DICOM: the file ends inside an element header"


class TruncatedFileError(UnsupportedInputError):
    """The file ends before its structure does: no engine may pseudonymise what is missing."""


def read_header(buffer: Any, position: int, implicit: bool) -> tuple[int, str | None, int, int]:
    """Return tag, VR (None when implicit or an item tag), value length and value position."""
    size = len(buffer)
    if position + 8 > size:
        raise TruncatedFileError(HEADER_TRUNCATED)
    group, element, vr_code, short_length = _EXPLICIT_HEADER.unpack_from(buffer, position)
    tag = group << 16 | element
    if group == 0xFFFE or implicit:
        return tag, None, _UINT32.unpack_from(buffer, position + 4)[0], position + 8
    vr = _VR_BY_CODE.get(vr_code)
    if vr is None:
        raise FastPathUnsupported("unexpected VR bytes (implicit data in an explicit file?)")
    if vr in _LONG_LENGTH_VRS:
        if position + 12 > size:
            raise TruncatedFileError(HEADER_TRUNCATED)
        return tag, vr, _UINT32.unpack_from(buffer, position + 8)[0], position + 12
    return tag, vr, short_length, position + 8


def end_of_value(buffer: Any, start: int, length: int, implicit_content: bool) -> int:
    """Where a value ends: after its length, or after its sequence delimiter."""
    if length != UNDEFINED_LENGTH:
        end = start + length
        if end > len(buffer):
            raise TruncatedFileError("truncated DICOM: a value runs past the end of the file")
        return end
    position = start
    while True:
        tag, _, item_length, value = read_header(buffer, position, True)
        if tag == SEQUENCE_DELIMITER:
            return value
        if tag != ITEM:
            raise FastPathUnsupported("malformed sequence")
        if item_length != UNDEFINED_LENGTH:
            position = end_of_value(buffer, value, item_length, implicit_content)
            continue
        position = value
        while True:
            tag, vr, length, value = read_header(buffer, position, implicit_content)
            if tag == ITEM_DELIMITER:
                position = value
                break
            position = end_of_value(buffer, value, length, implicit_content or vr == "UN")


def scan_level(
    buffer: Any,
    position: int,
    end: int,
    implicit: bool,
    plan: dict[int, int],
    classify: Classify,
    breaks: Sequence[int] = (),
    nested: Nested | None = None,
) -> tuple[list[Event], int, int]:
    """Scan the elements from ``position`` to ``end`` (``-1``: up to and past an item delimiter).

    :param plan: tag -> plan code; a tag missing from it is classified and added.
    :param breaks: ascending tags a copy run must not span: the caller inserts elements there.
    :param nested: ``(plan, classify, depth)`` for what sequences hold, ``depth`` the levels of
        items a kept sequence may span: a :data:`FOLD` sequence within them, all of whose
        contents are kept, is copied with the elements around it.
    :returns: the events in order, the position after the level, and the number of elements
        removed (private elements, wherever they are, count as removed).
    :raises FastPathUnsupported: for structure the caller's reference engine must handle.
    :raises TruncatedFileError: when the file ends inside the level.
    """
    events: list[Event] = []
    removed = 0
    previous = -1
    run_start = run_end = run_tag = -1
    next_break = 0
    breaks_left = len(breaks)
    until_delimiter = end < 0
    while until_delimiter or position < end:
        tag, vr, length, value = read_header(buffer, position, implicit)
        if tag == ITEM_DELIMITER and until_delimiter:
            position = value
            break
        if tag <= previous or tag >> 16 == 0xFFFE:
            raise FastPathUnsupported("elements out of order or misplaced delimiter")
        previous = tag
        hidden = vr is None or vr == "UN"
        if tag & 0x10000:  # odd group: private, removed wherever it is
            code = kind = REMOVE
        else:
            code = plan.get(tag, -1)
            if code < 0:
                code = plan[tag] = classify(tag)
            kind = code & 3
        if kind & 1 and not code & REPORT:  # REMOVE or DROP
            removed += kind == REMOVE
            if run_start >= 0:
                events.append((COPY, run_start, run_end, run_tag))
                run_start = -1
            position = end_of_value(buffer, value, length, implicit or vr == "UN")
            continue
        sequence = vr == "SQ" or (hidden and code & DICTIONARY_SQ)
        if not sequence and hidden and length == UNDEFINED_LENGTH:
            raise FastPathUnsupported("undefined length outside a sequence")
        folded = None
        if sequence and nested is not None and code & FOLD and not code & REPORT and vr != "UN":
            folded = kept_sequence_end(buffer, value, length, implicit, nested)
        if folded is not None or (kind == KEEP and not sequence and not code & REPORT):
            while next_break < breaks_left and breaks[next_break] < tag:
                next_break += 1
                if run_start >= 0:
                    events.append((COPY, run_start, run_end, run_tag))
                    run_start = -1
            if run_start < 0:
                run_start, run_tag = position, tag
            if folded is None:
                folded = end_of_value(buffer, value, length, implicit)
            position = run_end = folded
            continue
        if run_start >= 0:
            events.append((COPY, run_start, run_end, run_tag))
            run_start = -1
        if sequence and vr != "UN":
            element_end = end_of_value(buffer, value, length, implicit)
        else:
            element_end = end_of_value(buffer, value, length, implicit or vr == "UN")
        events.append((ELEMENT, tag, vr, length, position, value, element_end))
        position = element_end
    if run_start >= 0:
        events.append((COPY, run_start, run_end, run_tag))
    return events, position, removed


def kept_sequence_end(
    buffer: Any, start: int, length: int, implicit: bool, nested: Nested
) -> int | None:
    """Where a sequence ends if everything in it is kept, to ``nested``'s depth; else None.

    Structure the scanner would refuse is not kept: the caller's own walk then meets it and
    raises. Errors of ``classify`` (or of odd codes) propagate.
    """
    plan, classify, depth = nested
    if depth < 1:
        return None
    inner = (plan, classify, depth - 1)
    end = None if length == UNDEFINED_LENGTH else start + length
    position: int | None = start
    while position is not None and (end is None or position < end):
        header = _header_or_none(buffer, position, True)
        if header is None:
            return None
        tag, _, item_length, item_value = header
        if tag == SEQUENCE_DELIMITER and end is None:
            return item_value
        if tag != ITEM:
            return None
        item_end = -1 if item_length == UNDEFINED_LENGTH else item_value + item_length
        position = _kept_item_end(buffer, item_value, item_end, implicit, inner)
    return position if position == end else None


def _kept_item_end(
    buffer: Any, position: int, end: int, implicit: bool, nested: Nested
) -> int | None:
    """Where an item ends (``end``, or ``-1``: after its delimiter) if all in it is kept."""
    plan, classify, _ = nested
    previous = -1
    kept: int | None = position
    while kept is not None and (end < 0 or kept < end):
        header = _header_or_none(buffer, kept, implicit)
        if header is None:
            return None
        tag, vr, length, value = header
        if tag == ITEM_DELIMITER and end < 0:
            return value
        if tag <= previous or tag >> 16 == 0xFFFE or tag & 0x10000:
            return None
        previous = tag
        code = plan.get(tag, -1)
        if code < 0:
            code = plan[tag] = classify(tag)
        if code & REPORT:
            return None
        kind = code & 3
        hidden = vr is None or vr == "UN"
        if vr == "SQ" or (hidden and code & DICTIONARY_SQ):
            if vr == "UN" or not code & FOLD or kind & 1:
                return None
            kept = kept_sequence_end(buffer, value, length, implicit, nested)
        elif kind != KEEP or (hidden and length == UNDEFINED_LENGTH):
            return None
        else:
            try:
                kept = end_of_value(buffer, value, length, implicit)
            except TruncatedFileError:
                return None
    return kept if kept == end else None


def _header_or_none(
    buffer: Any, position: int, implicit: bool
) -> tuple[int, str | None, int, int] | None:
    try:
        return read_header(buffer, position, implicit)
    except (FastPathUnsupported, TruncatedFileError):
        return None
