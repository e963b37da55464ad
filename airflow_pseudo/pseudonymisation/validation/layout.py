"""The layout of an output file: where every element's value lies, and what is pixel data.

The evidence search reads every byte of the output except pixel data, and names the attribute
in which it finds an identifier. Both need each value's absolute position, at every depth, which
pydicom does not keep for sequence contents; :func:`read_layout` walks the encoded file once and
records it. It needs nothing from pydicom but its data dictionary.

Given a *classify* callable (tag -> the checks want this element or not), the dataset is walked
by the project's element scanner (compiled, :mod:`..scanner`), which reports only the elements
asked for and skips everything else at C speed; the rest of the layout, needed only to name the
attribute where an identifier was found or a private element left, is walked on demand
(:meth:`Layout.complete`). Anything the scanner refuses is walked in full at once.

Encapsulated pixel data is not image data throughout: a JPEG frame begins with marker segments
(comments, application segments) and a JPEG 2000 code stream with a main header (comments);
those :class:`Segment` ranges are searched like any other bytes, the coded image data is not.
"""

from __future__ import annotations

import struct
import zlib
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from airflow_pseudo.pseudonymisation.scanner import (
    DICTIONARY_SQ,
    ELEMENT,
    FOLD,
    KEEP,
    REPORT,
    FastPathUnsupported,
    TruncatedFileError,
)

try:
    from airflow_pseudo.pseudonymisation._scanner import scan_level
except ImportError:  # not built: the reference implementation
    from airflow_pseudo.pseudonymisation.scanner import scan_level

PREAMBLE = 128
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM, ITEM_DELIMITER, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
PIXEL_DATA_SEGMENT = "pixel data segment"
"""How a finding in the non-image part of an encapsulated frame is reported."""
FILE_STRUCTURE = "file structure"
"""How a finding outside every value (preamble, element headers) is reported."""
SPECIFIC_CHARACTER_SET = 0x00080005
WALKED_SEQUENCES = frozenset({0x00120064})
"""Top-level sequences recorded whole (DeidentificationMethodCodeSequence: the markers)."""
_DEFLATED = "1.2.840.10008.1.2.1.99"
_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_LONG_LENGTH_VRS = frozenset(vr.value for vr in EXPLICIT_VR_LENGTH_32)
_VR_CODES = {vr.value.encode("ascii"): vr.value for vr in VR if " or " not in vr.value}
_MAX_DEPTH = 64
_FOLD_DEPTH = 8
"""Levels of items the scanner looks into for a sequence with nothing wanted, to skip it whole;
within :data:`_MAX_DEPTH` of the top, so that a skipped sequence is one the walk would accept."""
_GROUP_LENGTH_HEADER = b"\x02\x00\x00\x00UL\x04\x00"
"""The header of (0002,0000) FileMetaInformationGroupLength, explicit VR little endian."""
_META_PLAN: dict[int, int] = {}
"""The scanner's plan for file meta: every element reported."""
_LITTLE = (struct.Struct("<HH2sH"), struct.Struct("<I"))
_BIG = (struct.Struct(">HH2sH"), struct.Struct(">I"))
"""An explicit VR header (tag, VR, short length) and a 32-bit length, in each byte order."""

Wanted = Callable[[int], bool]
"""Whether the checks want an element with this tag reported (at any depth)."""


class UnreadableOutputError(ValueError):
    """The output is not DICOM this tool could have written; the message names no value."""


class Element(NamedTuple):
    """One element with a value (not a sequence) and where its value lies in the file.

    :param path: ``(tag, item index)`` of each enclosing sequence item, outermost first.
    :param creator: the private creator of a private tag, as the file states it.
    """

    tag: int
    vr: str
    start: int
    end: int
    path: tuple[tuple[int, int], ...] = ()
    creator: str | None = None

    @property
    def name(self) -> str:
        """The attribute as reports name it: keywords, or private tags with their creator."""
        parts = [_tag_name(tag, None) for tag, _ in self.path]
        parts.append(_tag_name(self.tag, self.creator))
        return " > ".join(parts)

    @property
    def keyword(self) -> str:
        return _keyword(self.tag)


_element = tuple.__new__
"""An :class:`Element` from all its fields, without the Python-level call of a NamedTuple's
``__new__``: the walks make one per element of every file."""


@dataclass(frozen=True)
class Segment:
    """A non-image range of an encapsulated frame (JPEG marker segments, a J2K main header)."""

    start: int
    end: int


@dataclass
class Layout:
    """The decoded structure of one output file.

    :param data: the bytes searched: the file as read, or with a deflated dataset inflated.
    :param searched: the ranges of ``data`` to search, in order (all but pixel data).
    """

    data: bytes
    elements: list[Element] = field(default_factory=list)
    searched: list[tuple[int, int]] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    little_endian: bool = True
    complete_walk: bool = True
    """Whether :attr:`elements` holds every element, or only those a *wanted* asked for."""
    private_elements: int = 0
    """Private elements the scanner skipped (a complete walk lists them in :attr:`elements`)."""
    _complete: Layout | None = field(default=None, repr=False, compare=False)
    _character_set: list[str] | None = field(default=None, repr=False, compare=False)
    _starts: list[int] = field(default_factory=list, repr=False, compare=False)
    _top: dict[int, Element] | None = field(default=None, repr=False, compare=False)

    def complete(self) -> Layout:
        """This layout with every element: walked again, in full, if the scanner skipped any."""
        if self.complete_walk:
            return self
        if self._complete is None:
            self._complete = read_layout(self.data)
        return self._complete

    def element_at(self, position: int) -> Element | None:
        """The element whose value holds ``position``, if any (any depth)."""
        if not self.complete_walk:
            return self.complete().element_at(position)
        if not self._starts:
            self._starts = [e.start for e in self.elements]
        index = bisect_right(self._starts, position) - 1
        if index >= 0 and position < self.elements[index].end:
            return self.elements[index]
        return None

    def in_segment(self, position: int) -> bool:
        return any(s.start <= position < s.end for s in self.segments)

    def raw(self, element: Element) -> bytes:
        return self.data[element.start : element.end]

    def top_level(self, tag: int) -> Element | None:
        """The top-level (or file meta) element with ``tag``."""
        if self._top is None:  # built from the end, so that the first of a tag is kept
            self._top = {e.tag: e for e in reversed(self.elements) if not e.path}
        return self._top.get(tag)

    def nested(self, sequence: int, tag: int) -> Iterator[Element]:
        """Elements ``tag`` in the items of top-level sequence ``sequence``."""
        for element in self.elements:
            if element.tag == tag and len(element.path) == 1 and element.path[0][0] == sequence:
                yield element

    def specific_character_set(self) -> list[str]:
        if self._character_set is None:
            element = self.top_level(SPECIFIC_CHARACTER_SET)
            text = self.raw(element).decode("ascii", "replace") if element is not None else ""
            self._character_set = [t.strip("\x00 ") for t in text.split("\\") if t.strip("\x00 ")]
        return self._character_set


def read_layout(
    data: bytes, wanted: Wanted | None = None, plan: dict[int, int] | None = None
) -> Layout:
    """Walk a DICOM file (preamble, file meta, dataset) and record where everything lies.

    :param wanted: report only the elements it wants (and pixel data), scanning the rest; a
        structure the scanner refuses is walked in full instead.
    :param plan: the scanner's plan for this ``wanted``, kept by the caller to reuse: it is
        filled once per tag.
    :raises UnreadableOutputError: when the bytes are not a complete DICOM file.
    """
    if data[PREAMBLE : PREAMBLE + 4] != b"DICM":
        raise UnreadableOutputError("no DICM prefix")
    layout = Layout(data)
    walker = _Walker(layout, implicit=False, little=True)
    meta_end = walker.walk_meta(PREAMBLE + 4)
    syntax = walker.transfer_syntax
    if syntax == _DEFLATED:
        try:
            inflated = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
        except zlib.error:
            raise UnreadableOutputError("the deflated dataset cannot be inflated") from None
        layout.data = data[:meta_end] + inflated
        walker = _Walker(layout, implicit=False, little=True)
        walker.walk_meta(PREAMBLE + 4)
    walker.implicit = syntax == _IMPLICIT
    walker.little = syntax != _BIG_ENDIAN
    layout.little_endian = walker.little
    meta = list(layout.elements)
    if wanted is not None and walker.little:
        try:
            walker.scan(meta_end, wanted, {} if plan is None else plan)
        except (FastPathUnsupported, TruncatedFileError):
            layout.elements[:] = meta
            layout.segments.clear()
            layout.private_elements = 0
            walker = _Walker(layout, implicit=walker.implicit, little=True)
            walker.walk(meta_end, len(layout.data), (), 0)
        else:
            layout.complete_walk = False
    else:
        walker.walk(meta_end, len(layout.data), (), 0)
    layout.searched = _searched(len(layout.data), walker.excluded, layout.segments)
    return layout


class _Walker:
    def __init__(self, layout: Layout, *, implicit: bool, little: bool) -> None:
        self.layout = layout
        self.implicit = implicit
        self.little = little
        self.excluded: list[tuple[int, int]] = []
        self.transfer_syntax = ""

    def walk_meta(self, position: int) -> int:
        """Record the file meta's elements and its transfer syntax; return where it ends."""
        first = len(self.layout.elements)
        end = self._scan_meta(position)
        if end is None:
            end = self._walk_meta(position)
        for element in self.layout.elements[first:]:
            if element.tag == 0x00020010:
                syntax = self.layout.raw(element).decode("ascii", "replace")
                self.transfer_syntax = syntax.strip("\x00 ")
        if not self.transfer_syntax:
            raise UnreadableOutputError("no transfer syntax in file meta")
        return end

    def _walk_meta(self, position: int) -> int:
        data = self.layout.data
        while position + 8 <= len(data) and data[position : position + 2] == b"\x02\x00":
            tag, vr, length, start = self._header(position, implicit=False, little=True)
            end = self._end(start, length)
            self.layout.elements.append(Element(tag, vr or "UN", start, end))
            position = end
        return position

    def _scan_meta(self, position: int) -> int | None:
        """Scan the file meta where its group length says it ends; ``None`` when it does not.

        The scan stands for the walk only where the walk would find the same: every element of
        group 2 up to there, the next one not, and no undefined length (the walk refuses those).
        """
        data = self.layout.data
        if data[position : position + 8] != _GROUP_LENGTH_HEADER:
            return None
        end = position + 12 + int.from_bytes(data[position + 8 : position + 12], "little")
        try:
            events, reached, _ = scan_level(data, position, end, False, _META_PLAN, _report)
        except (FastPathUnsupported, TruncatedFileError):
            return None
        if reached != end or (data[end : end + 2] == b"\x02\x00" and end + 8 <= len(data)):
            return None
        if any(e[0] != ELEMENT or e[1] >> 16 != 2 or e[3] == UNDEFINED_LENGTH for e in events):
            return None
        self.layout.elements += (
            _element(Element, (e[1], e[2], e[5], e[6], (), None)) for e in events
        )
        return end

    def walk(self, position: int, end: int, path: tuple[tuple[int, int], ...], depth: int) -> int:
        """Walk one dataset level up to ``end`` (or its item delimiter); return where it ended."""
        if depth > _MAX_DEPTH:
            raise UnreadableOutputError("sequences nested too deeply")
        creators: dict[int, str] = {}
        data = self.layout.data
        while position < end:
            tag, vr, length, start = self._header(position, self.implicit, self.little)
            if tag == ITEM_DELIMITER:
                return start
            if vr is None:
                vr = implicit_vr(tag)
            if tag in PIXEL_DATA_TAGS and not path:
                position = self._pixel_data(start, length)
                continue
            if vr == "SQ" or (length == UNDEFINED_LENGTH and vr == "UN"):
                saved = self.implicit
                if vr == "UN":
                    self.implicit = True  # a sequence hidden in UN is implicit VR (PS3.5 6.2.2)
                position = self._sequence(tag, start, length, path, depth)
                self.implicit = saved
                continue
            value_end = self._end(start, length)
            creator = None
            group, number = tag >> 16, tag & 0xFFFF
            if group % 2:
                if 0x0010 <= number <= 0x00FF:
                    text = data[start:value_end].decode("latin-1").strip("\x00 ")
                    creators[number] = text
                elif number >= 0x1000:
                    creator = creators.get(number >> 8, "no creator")
            self.layout.elements.append(
                _element(Element, (tag, vr, start, value_end, path, creator))
            )
            position = value_end
        return position

    def scan(self, position: int, wanted: Wanted, plan: dict[int, int]) -> None:
        """Record the wanted elements at every depth, and pixel data; skip the rest in C."""

        def classify(tag: int) -> int:
            code = REPORT if wanted(tag) or tag in PIXEL_DATA_TAGS else KEEP
            if implicit_vr(tag) != "SQ":
                return code
            return code | DICTIONARY_SQ | (0 if tag in WALKED_SEQUENCES else FOLD)

        self._scan_level(position, len(self.layout.data), (), plan, classify, 0)

    def _scan_level(
        self,
        position: int,
        end: int,
        path: tuple[tuple[int, int], ...],
        plan: dict[int, int],
        classify: Callable[[int], int],
        depth: int,
    ) -> int:
        if depth > _MAX_DEPTH:
            raise UnreadableOutputError("sequences nested too deeply")
        data = self.layout.data
        nested = (plan, classify, _FOLD_DEPTH) if depth + _FOLD_DEPTH <= _MAX_DEPTH else None
        events, position, skipped = scan_level(
            data, position, end, self.implicit, plan, classify, (), nested
        )
        self.layout.private_elements += skipped
        for event in events:
            if event[0] != ELEMENT:
                continue
            _, tag, vr, length, _, value, element_end = event
            hidden = vr == "UN" and bool(plan[tag] & DICTIONARY_SQ)
            if vr is None or hidden:
                vr = implicit_vr(tag)
            if tag in PIXEL_DATA_TAGS and not path:
                self._pixel_data(value, length)
            elif vr == "SQ":
                saved = self.implicit
                self.implicit = saved or hidden  # a sequence hidden in UN is implicit VR
                if tag in WALKED_SEQUENCES and not path:
                    self._sequence(tag, value, length, path, depth)
                else:
                    self._scan_items(tag, value, element_end, path, plan, classify, depth)
                self.implicit = saved
            else:
                self.layout.elements.append(
                    _element(Element, (tag, vr, value, element_end, path, None))
                )
        return position

    def _scan_items(
        self,
        tag: int,
        position: int,
        end: int,
        path: tuple[tuple[int, int], ...],
        plan: dict[int, int],
        classify: Callable[[int], int],
        depth: int,
    ) -> None:
        index = 0
        while position < end:
            item_tag, _, item_length, item_start = self._header(position, True, True)
            if item_tag == SEQUENCE_DELIMITER:
                return
            if item_tag != ITEM:
                raise UnreadableOutputError("malformed sequence")
            inner = (*path, (tag, index))
            item_end = -1 if item_length == UNDEFINED_LENGTH else item_start + item_length
            position = self._scan_level(item_start, item_end, inner, plan, classify, depth + 1)
            index += 1

    def _sequence(
        self, tag: int, start: int, length: int, path: tuple[tuple[int, int], ...], depth: int
    ) -> int:
        end = start + length if length != UNDEFINED_LENGTH else len(self.layout.data)
        if end > len(self.layout.data):
            raise UnreadableOutputError("a sequence runs past the end of the file")
        position, index = start, 0
        while position < end:
            item_tag, _, item_length, item_start = self._header(position, True, self.little)
            if item_tag == SEQUENCE_DELIMITER:
                return item_start
            if item_tag != ITEM:
                raise UnreadableOutputError("malformed sequence")
            inner = (*path, (tag, index))
            if item_length == UNDEFINED_LENGTH:
                position = self.walk(item_start, len(self.layout.data), inner, depth + 1)
            else:
                item_end = self._end(item_start, item_length)
                self.walk(item_start, item_end, inner, depth + 1)
                position = item_end
            index += 1
        if length == UNDEFINED_LENGTH:
            raise UnreadableOutputError("a sequence has no delimiter")
        return end

    def _pixel_data(self, start: int, length: int) -> int:
        if length != UNDEFINED_LENGTH:
            end = self._end(start, length)
            self.excluded.append((start, end))
            return end
        position, first = start, True
        while True:
            tag, _, item_length, value = self._header(position, True, self.little)
            if tag == SEQUENCE_DELIMITER:
                self.excluded.append((start, value))
                return value
            if tag != ITEM or item_length == UNDEFINED_LENGTH:
                raise UnreadableOutputError("malformed encapsulated pixel data")
            end = self._end(value, item_length)
            if not first:  # the first item is the basic offset table
                self.layout.segments.extend(_non_image_segments(self.layout.data, value, end))
            first = False
            position = end

    def _header(
        self, position: int, implicit: bool, little: bool
    ) -> tuple[int, str | None, int, int]:
        data = self.layout.data
        if position + 8 > len(data):
            raise UnreadableOutputError("truncated: the file ends inside an element header")
        header, uint32 = _LITTLE if little else _BIG
        group, number, code, length = header.unpack_from(data, position)
        tag = group << 16 | number
        if group == 0xFFFE or implicit:
            return tag, None, uint32.unpack_from(data, position + 4)[0], position + 8
        vr = _VR_CODES.get(code)
        if vr is None:
            raise UnreadableOutputError("unexpected VR bytes")
        if vr in _LONG_LENGTH_VRS:
            if position + 12 > len(data):
                raise UnreadableOutputError("truncated: the file ends inside an element header")
            return tag, vr, uint32.unpack_from(data, position + 8)[0], position + 12
        return tag, vr, length, position + 8

    def _end(self, start: int, length: int) -> int:
        if length == UNDEFINED_LENGTH or start + length > len(self.layout.data):
            raise UnreadableOutputError("truncated: a value runs past the end of the file")
        return start + length


def _report(tag: int) -> int:
    """The file meta's plan: every element reported."""
    return REPORT


def _non_image_segments(data: bytes, start: int, end: int) -> Iterator[Segment]:
    """The marker segments of a JPEG frame, or the main header of a JPEG 2000 code stream."""
    head = data[start : start + 4]
    if head[:2] == b"\xff\xd8":  # JPEG: marker segments up to and including start of scan
        position = start + 2
        while position + 4 <= end and data[position] == 0xFF:
            marker = data[position + 1]
            length = struct.unpack_from(">H", data, position + 2)[0]
            position += 2 + length
            if marker == 0xDA:
                break
        yield Segment(start, min(position, end))
    elif head == b"\xff\x4f\xff\x51":  # JPEG 2000 code stream: the main header, up to SOT
        found = data.find(b"\xff\x90", start, end)
        yield Segment(start, found if found >= 0 else end)
    elif data[start + 4 : start + 8] == b"jP  ":  # JP2 file: every box but the code stream's
        position = start
        while position + 8 <= end:
            size, kind = struct.unpack_from(">I4s", data, position)
            if kind == b"jp2c":
                yield from _non_image_segments(data, position + 8, end)
                break
            box_end = end if size == 0 else min(end, position + max(size, 8))
            yield Segment(position, box_end)
            position = box_end


def _searched(
    size: int, excluded: Sequence[tuple[int, int]], segments: Sequence[Segment]
) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    position = 0
    for start, end in sorted(excluded):
        if start > position:
            ranges.append((position, start))
        ranges.extend((s.start, s.end) for s in segments if start <= s.start < end)
        position = max(position, end)
    if position < size:
        ranges.append((position, size))
    return ranges


@lru_cache(maxsize=8192)
def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or ""


@lru_cache(maxsize=8192)
def implicit_vr(tag: int) -> str:
    """The VR the data dictionary gives a tag (the first of alternatives; private: UN)."""
    if tag >> 16 & 1:
        return "UN"
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _tag_name(tag: int, creator: str | None) -> str:
    if tag >> 16 & 1:
        name = f"private {BaseTag(tag)}"
        return f"{name} [{creator}]" if creator else name
    return keyword_for_tag(tag) or str(BaseTag(tag))
