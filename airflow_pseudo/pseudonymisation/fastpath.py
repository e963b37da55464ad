"""The streaming fast path: rewrite a DICOM file from its bytes, decoding only what changes.

Most elements of a typical file are kept, and a kept element's bytes need no decoding: they are
copied (as slices of a memory map, so pixel data is never duplicated in memory). Only elements a
rule changes are decoded with pydicom, passed to the reference engine's :meth:`Pseudonymiser.apply`
and re-encoded, so values are computed by exactly the same code. Sequences and items are written
with undefined lengths, which spares computing lengths of rewritten content.

Explicit and Implicit VR Little Endian and the encapsulated (compressed) transfer syntaxes are
supported. Anything else (big endian, deflate, elements out of order, a sequence hidden in a UN
element, per-item character sets, a malformed structure...) raises :class:`FastPathUnsupported`
and the caller falls back to the reference engine, whose output this path must decode to.
"""

from __future__ import annotations

import mmap
import os
import struct
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import lru_cache

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_value

from airflow_pseudo.pseudonymisation.engine import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    ChangeCounts,
    Pseudonymiser,
)
from airflow_pseudo.pseudonymisation.errors import UnsupportedInputError
from airflow_pseudo.pseudonymisation.profiles import Action, Profile
from airflow_pseudo.pseudonymisation.strategies import PseudonymContext, Strategy, keep_value

ITEM, ITEM_DELIMITER, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
PREAMBLE_AND_PREFIX = 132
# Real data nests a few levels (SR content trees a few dozen at most); far deeper nesting is
# built to exhaust parsers, and pydicom cannot read it back.
MAX_SEQUENCE_DEPTH = 64

_LONG_LENGTH_VRS = frozenset(vr.value for vr in EXPLICIT_VR_LENGTH_32)
_KNOWN_VRS = frozenset(vr.value for vr in VR if " or " not in vr.value)
_UINT16 = struct.Struct("<H")
_UINT32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")
_EXPLICIT_HEADER = struct.Struct("<HH2sH")
_VR_BY_CODE = {vr.encode("ascii"): vr for vr in _KNOWN_VRS}
_SPECIFIC_CHARACTER_SET = 0x00080005
_PATIENT_ID = 0x00100020
_STUDY_INSTANCE_UID = 0x0020000D
_SERIES_INSTANCE_UID = 0x0020000E
_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_BURNED_IN_ANNOTATION = 0x00280301
_DEIDENTIFICATION_METHOD = 0x00120063
_DEIDENTIFICATION_CODES = 0x00120064
_LAST_CAPTURED = _BURNED_IN_ANNOTATION
# Text VRs whose pseudonyms are plain ASCII and whose decoding pydicom does in one step.
_PLAIN_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "PN", "SH", "TM", "UI", "UC"})
_NAMING_UIDS = frozenset({_SOP_INSTANCE_UID, _STUDY_INSTANCE_UID, _SERIES_INSTANCE_UID})
_MARKERS = frozenset({0x00120062, _DEIDENTIFICATION_METHOD, _DEIDENTIFICATION_CODES, 0x00280303})
_CAPTURED = frozenset(
    {_SPECIFIC_CHARACTER_SET, _PATIENT_ID, _STUDY_INSTANCE_UID, _SERIES_INSTANCE_UID,
     _SOP_CLASS_UID, _SOP_INSTANCE_UID, _BURNED_IN_ANNOTATION, _DEIDENTIFICATION_METHOD}
)  # fmt: skip


class FastPathUnsupported(Exception):
    """This file needs the reference engine; the message says why (never a value)."""


class TruncatedFileError(UnsupportedInputError):
    """The file ends before its structure does: no engine may pseudonymise what is missing."""


@dataclass
class FastOutput:
    """A pseudonymised file as chunks to write in order, plus what names and reports it."""

    chunks: list[bytes | memoryview]
    dataset: Dataset  # the UIDs that name the output, and file meta
    counts: ChangeCounts
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = sum(len(chunk) for chunk in self.chunks)


@contextmanager
def mapped(path: str | os.PathLike[str]) -> Iterator[memoryview]:
    """Map a file read-only; an empty file maps to an empty view.

    Chunks sliced from the view may outlive the block (in an exception, say): the map is then
    closed when the last of them is dropped instead of at the end of the block.
    """
    with open(path, "rb") as stream:
        if os.fstat(stream.fileno()).st_size == 0:
            yield memoryview(b"")
            return
        data = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        yield memoryview(data)
    finally:
        with suppress(BufferError):
            data.close()


def pseudonymise_buffer(buffer: memoryview, pseudonymiser: Pseudonymiser) -> FastOutput:
    """Pseudonymise a whole DICOM file held in ``buffer`` (preamble, file meta and dataset).

    :raises FastPathUnsupported: when the reference engine must handle this file.
    """
    if bytes(buffer[128:132]) != b"DICM":
        raise FastPathUnsupported("no DICM prefix")
    meta_end, transfer_syntax = _read_file_meta(buffer)
    if transfer_syntax == ImplicitVRLittleEndian:
        implicit = True
    elif transfer_syntax == ExplicitVRLittleEndian or (
        transfer_syntax.is_encapsulated and transfer_syntax.is_little_endian
        and not transfer_syntax.is_deflated
    ):  # fmt: skip
        implicit = False
    else:
        raise FastPathUnsupported("transfer syntax not supported by the fast path")
    return _Rewriter(buffer, implicit, pseudonymiser).run(meta_end, transfer_syntax)


def _read_file_meta(buffer: memoryview) -> tuple[int, UID]:
    position, transfer_syntax = PREAMBLE_AND_PREFIX, None
    while position + 8 <= len(buffer):
        group, element = _TAG.unpack_from(buffer, position)
        if group != 0x0002:
            break
        vr = bytes(buffer[position + 4 : position + 6]).decode("ascii", "replace")
        if vr in _LONG_LENGTH_VRS:
            length, start = _UINT32.unpack_from(buffer, position + 8)[0], position + 12
        else:
            length, start = _UINT16.unpack_from(buffer, position + 6)[0], position + 8
        if length == UNDEFINED_LENGTH or start + length > len(buffer):
            raise FastPathUnsupported("malformed file meta")
        if element == 0x0010:
            transfer_syntax = UID(
                bytes(buffer[start : start + length]).decode("ascii").strip("\0 ")
            )
        position = start + length
    if transfer_syntax is None:
        raise FastPathUnsupported("no transfer syntax in file meta")
    return position, transfer_syntax


@lru_cache(maxsize=8192)
def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


class _Rewriter:
    """One pass over one file's dataset, emitting output chunks."""

    def __init__(self, buffer: memoryview, implicit: bool, pseudonymiser: Pseudonymiser) -> None:
        self.buffer = buffer
        self.implicit = implicit
        self.pseudonymiser = pseudonymiser
        self.profile = pseudonymiser.profile
        self.counts = ChangeCounts()
        self.encodings: list[str] = convert_encodings(None)
        self.captured: dict[int, object] = {}
        self.parsed: dict[int, tuple[int, str | None, int, int]] = {}  # top-level headers read
        self.depth = 0
        self.new_uids: dict[int, str] = {}
        self.actions = _ACTION_CACHE.setdefault(self.profile, {})
        self.new_text: str | None = None  # the value last written, when it was rewritten

    def run(self, start: int, transfer_syntax: UID) -> FastOutput:
        self._prescan(start)
        self.pseudonymiser.check_burned_in(self.captured.get(_BURNED_IN_ANNOTATION))
        if _DEIDENTIFICATION_CODES in self.captured:
            raise FastPathUnsupported("already de-identified: merge method codes in the reference")
        context = self.pseudonymiser.context_for(
            self.captured.get(_PATIENT_ID), self.captured.get(_STUDY_INSTANCE_UID)
        )
        body: list[tuple[int, bytes | memoryview]] = []
        self._elements(start, len(self.buffer), body, context, top_level=True)
        body = _merge(body, self._markers())
        named = self._naming_dataset()
        chunks: list[bytes | memoryview] = [
            b"\x00" * 128 + b"DICM",
            file_meta_bytes(named.SOPClassUID, named.SOPInstanceUID, transfer_syntax),
        ]
        chunks.extend(chunk for _, chunk in body)
        return FastOutput(chunks, named, self.counts)

    # -- reading element headers --------------------------------------------------------

    def _header(self, position: int, implicit: bool) -> tuple[int, str | None, int, int]:
        """Return tag, VR (None when implicit), value length and value position."""
        buffer = self.buffer
        if position + 8 > len(buffer):
            raise TruncatedFileError("truncated DICOM: the file ends inside an element header")
        group, element, vr_code, short_length = _EXPLICIT_HEADER.unpack_from(buffer, position)
        tag = group << 16 | element
        if group == 0xFFFE or implicit:
            return tag, None, _UINT32.unpack_from(buffer, position + 4)[0], position + 8
        vr = _VR_BY_CODE.get(vr_code)
        if vr is None:
            raise FastPathUnsupported("unexpected VR bytes (implicit data in an explicit file?)")
        if vr in _LONG_LENGTH_VRS:
            if position + 12 > len(buffer):
                raise TruncatedFileError("truncated DICOM: the file ends inside an element header")
            return tag, vr, _UINT32.unpack_from(buffer, position + 8)[0], position + 12
        return tag, vr, short_length, position + 8

    def _end_of_value(self, start: int, length: int, implicit_content: bool) -> int:
        """Where a value ends: after its length, or after its sequence delimiter."""
        if length != UNDEFINED_LENGTH:
            end = start + length
            if end > len(self.buffer):
                raise TruncatedFileError("truncated DICOM: a value runs past the end of the file")
            return end
        position = start
        while True:
            tag, _, item_length, value = self._header(position, True)
            if tag == SEQUENCE_DELIMITER:
                return value
            if tag != ITEM:
                raise FastPathUnsupported("malformed sequence")
            if item_length != UNDEFINED_LENGTH:
                position = self._end_of_value(value, item_length, implicit_content)
                continue
            position = value
            while True:
                tag, vr, length, value = self._header(position, implicit_content)
                if tag == ITEM_DELIMITER:
                    position = value
                    break
                position = self._end_of_value(value, length, implicit_content or vr == "UN")

    def _prescan(self, position: int) -> None:
        """Read the few top-level values needed before rewriting (patient, charset, flags)."""
        end = len(self.buffer)
        while position < end:
            header = self._header(position, self.implicit)
            tag, vr, length, value = header
            if tag > _LAST_CAPTURED:
                return
            self.parsed[position] = header
            if tag in _CAPTURED and length != UNDEFINED_LENGTH:
                element = self._decode(tag, vr, length, value)
                self.captured[tag] = element.value
                if tag == _SPECIFIC_CHARACTER_SET:
                    self.encodings = convert_encodings(element.value)
            elif tag == _DEIDENTIFICATION_CODES:
                self.captured[tag] = True
            position = self._end_of_value(value, length, self.implicit or vr == "UN")

    # -- rewriting ------------------------------------------------------------------------

    def _elements(
        self,
        position: int,
        end: int | None,
        out: list[tuple[int, bytes | memoryview]],
        context: PseudonymContext,
        *,
        top_level: bool = False,
        implicit: bool | None = None,
    ) -> int:
        """Rewrite elements up to ``end`` or, when ``end`` is None, to an item delimiter."""
        implicit = self.implicit if implicit is None else implicit
        previous = -1
        parsed = self.parsed if top_level else {}
        while end is None or position < end:
            tag, vr, length, value = parsed.get(position) or self._header(position, implicit)
            if tag == ITEM_DELIMITER and end is None:
                return value
            if tag <= previous or tag >> 16 == 0xFFFE:
                raise FastPathUnsupported("elements out of order or misplaced delimiter")
            previous = tag
            if tag & 0x10000:  # odd group: private, removed wherever it is
                self.counts.removed += 1
                position = self._end_of_value(value, length, implicit or vr == "UN")
                continue
            if not top_level and tag == _SPECIFIC_CHARACTER_SET:
                raise FastPathUnsupported("a sequence item with its own character set")
            if top_level and tag in _MARKERS:
                position = self._end_of_value(value, length, implicit or vr == "UN")
                continue
            self.new_text = None
            position = self._element(tag, vr, length, position, value, out, context, implicit)
            if top_level and tag in _NAMING_UIDS:
                if self.new_text is None:  # kept: the output holds the original value
                    self.new_text = str(self._decode(tag, vr, length, value).value or "")
                self.new_uids[tag] = self.new_text
        return position

    def _element(
        self,
        tag: int,
        vr: str | None,
        length: int,
        header: int,
        value: int,
        out: list[tuple[int, bytes | memoryview]],
        context: PseudonymContext,
        implicit: bool,
    ) -> int:
        action = self.actions.get(tag)
        if action is None:
            action = self.actions[tag] = self.profile.rule_for(BaseTag(tag)).action
        dictionary_vr = _dictionary_vr(tag)
        hidden = vr is None or vr == "UN"
        sequence = vr == "SQ" or (hidden and dictionary_vr == "SQ")
        if action is Action.REMOVE:
            self.counts.removed += 1
            return self._end_of_value(value, length, implicit or vr == "UN")
        if sequence:
            if vr == "UN":
                raise FastPathUnsupported("a sequence encoded as UN")
            return self._sequence(tag, length, value, action, out, context, implicit)
        if hidden and length == UNDEFINED_LENGTH:
            raise FastPathUnsupported("undefined length outside a sequence")
        end = self._end_of_value(value, length, implicit)
        value_vr = vr if vr not in (None, "UN") else dictionary_vr
        strategy = self._strategy(action, value_vr)
        if action is Action.KEEP or length == 0 or strategy is keep_value:
            out.append((tag, self.buffer[header:end]))
            return end
        if strategy is not None and value_vr in _PLAIN_TEXT_VRS and len(self.encodings) == 1:
            chunk = self._rewrite_text(tag, value_vr, length, value, strategy, context, implicit)
            if chunk is not None:
                self.counts.remapped_uids += action is Action.REMAP_UID
                self.counts.replaced += action is Action.REPLACE
                out.append((tag, chunk))
                return end
        if action is Action.EMPTY:
            element = self._decode(tag, vr, 0, value)
            self.counts.emptied += 1
        else:
            if length == UNDEFINED_LENGTH:
                raise FastPathUnsupported("undefined length value to change")
            element = self._decode(tag, vr, length, value)
            self.pseudonymiser.apply(element, action, context, self.counts)
        self.new_text = str(element.value or "")
        out.append((tag, self._encode(element, implicit)))
        return end

    def _sequence(
        self,
        tag: int,
        length: int,
        value: int,
        action: Action,
        out: list[tuple[int, bytes | memoryview]],
        context: PseudonymContext,
        implicit: bool,
    ) -> int:
        group_element = _TAG.pack(tag >> 16, tag & 0xFFFF)
        explicit_header = b"" if implicit else b"SQ\x00\x00"
        if action is Action.EMPTY:
            self.counts.emptied += 1
            out.append((tag, group_element + explicit_header + _UINT32.pack(0)))
            return self._end_of_value(value, length, implicit)
        out.append((tag, group_element + explicit_header + _UINT32.pack(UNDEFINED_LENGTH)))
        end = None if length == UNDEFINED_LENGTH else value + length
        position = value
        while end is None or position < end:
            item, _, item_length, item_value = self._header(position, True)
            if item == SEQUENCE_DELIMITER and end is None:
                position = item_value
                break
            if item != ITEM:
                raise FastPathUnsupported("malformed sequence")
            out.append((tag, _ITEM_UNDEFINED))
            item_end = None if item_length == UNDEFINED_LENGTH else item_value + item_length
            inner: list[tuple[int, bytes | memoryview]] = []
            self.depth += 1
            if self.depth > MAX_SEQUENCE_DEPTH:
                raise UnsupportedInputError(
                    f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels are refused"
                )
            position = self._elements(item_value, item_end, inner, context, implicit=implicit)
            self.depth -= 1
            out.extend((tag, chunk) for _, chunk in inner)  # nested chunks sort with their parent
            out.append((tag, _ITEM_DELIMITER_BYTES))
        if end is not None and position != end:
            raise FastPathUnsupported("sequence length disagrees with its items")
        out.append((tag, _SEQUENCE_DELIMITER_BYTES))
        return position

    # -- decoding and encoding ------------------------------------------------------------

    def _strategy(self, action: Action, vr: str | None) -> Strategy | None:
        if action is Action.REMAP_UID:
            return self.pseudonymiser.remap_uid
        if action is Action.REPLACE and vr is not None:
            return self.pseudonymiser.dispatch.get(vr)
        return None

    def _rewrite_text(
        self,
        tag: int,
        vr: str,
        length: int,
        value: int,
        strategy: Strategy,
        context: PseudonymContext,
        implicit: bool,
    ) -> bytes | None:
        """Decode with pydicom's own converter, pseudonymise, encode plain ASCII text.

        Returns None when the result is not plain ASCII, for pydicom to encode.
        """
        raw = RawDataElement(
            BaseTag(tag), vr, length, bytes(self.buffer[value : value + length]), value, False, True
        )
        decoded = convert_value(vr, raw, self.encodings)
        if isinstance(decoded, MultiValue | list):
            if not decoded:
                return None
            text = "\\".join(str(strategy(v, context)) for v in decoded)
        else:
            if not str(decoded):
                return None
            text = str(strategy(decoded, context))
        try:
            payload = text.encode("ascii")
        except UnicodeEncodeError:
            return None
        self.new_text = text
        payload = _pad(payload, b"\x00" if vr == "UI" else b" ")
        if implicit:
            return _TAG.pack(tag >> 16, tag & 0xFFFF) + _UINT32.pack(len(payload)) + payload
        return _explicit(tag, vr, payload)

    def _decode(self, tag: int, vr: str | None, length: int, value: int) -> DataElement:
        raw = RawDataElement(
            BaseTag(tag),
            vr,
            length,
            bytes(self.buffer[value : value + length]),
            value,
            self.implicit if vr is None else False,
            True,
        )
        element = convert_raw_data_element(raw, encoding=self.encodings)
        if " or " in element.VR:
            raise FastPathUnsupported("ambiguous VR needs the dataset")
        return element

    def _encode(self, element: DataElement, implicit: bool) -> bytes:
        stream = DicomBytesIO()
        stream.is_little_endian, stream.is_implicit_VR = True, implicit
        write_data_element(stream, element, self.encodings)
        return stream.getvalue()

    def _markers(self) -> list[tuple[int, bytes | memoryview]]:
        prior = self.captured.get(_DEIDENTIFICATION_METHOD)
        key = (self.implicit, str(prior) if prior else None)
        cache = _MARKER_CACHE.setdefault(self.pseudonymiser, {})
        if key not in cache:
            markers = Dataset()
            if prior:
                markers.DeidentificationMethod = prior
            self.pseudonymiser.add_markers(markers)
            cache[key] = [(e.tag, self._encode(e, self.implicit)) for e in markers]
        return cache[key]

    def _naming_dataset(self) -> Dataset:
        if _SOP_CLASS_UID not in self.captured or not self.new_uids.get(_SOP_INSTANCE_UID):
            raise FastPathUnsupported("no SOP Class or Instance UID: the reference decides")
        named = Dataset()
        named.SOPClassUID = self.captured[_SOP_CLASS_UID]
        for tag, uid in self.new_uids.items():
            named.add_new(tag, "UI", uid)
        return named


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Encode the file meta group this tool writes (PS3.10 7.1), group length first."""
    elements = b"".join(
        (
            _explicit(0x00020001, "OB", b"\x00\x01"),
            _explicit(0x00020002, "UI", _pad(sop_class.encode("ascii"), b"\x00")),
            _explicit(0x00020003, "UI", _pad(sop_instance.encode("ascii"), b"\x00")),
            _explicit(0x00020010, "UI", _pad(str(transfer_syntax).encode("ascii"), b"\x00")),
            _explicit(0x00020012, "UI", _pad(IMPLEMENTATION_CLASS_UID.encode("ascii"), b"\x00")),
            _explicit(0x00020013, "SH", _pad(IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" ")),
        )
    )
    return _explicit(0x00020000, "UL", _UINT32.pack(len(elements))) + elements


def _pad(data: bytes, padding: bytes) -> bytes:
    return data + padding if len(data) % 2 else data


def _explicit(tag: int, vr: str, payload: bytes) -> bytes:
    head = _TAG.pack(tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_LENGTH_VRS:
        return head + b"\x00\x00" + _UINT32.pack(len(payload)) + payload
    return head + _UINT16.pack(len(payload)) + payload


_ACTION_CACHE: weakref.WeakKeyDictionary[Profile, dict[int, Action]] = weakref.WeakKeyDictionary()
_MARKER_CACHE: weakref.WeakKeyDictionary[
    Pseudonymiser, dict[tuple[bool, str | None], list[tuple[int, bytes | memoryview]]]
] = weakref.WeakKeyDictionary()


def _merge(
    body: list[tuple[int, bytes | memoryview]], markers: list[tuple[int, bytes | memoryview]]
) -> list[tuple[int, bytes | memoryview]]:
    """Insert top-level marker elements in tag order (body chunks of one element share a tag)."""
    merged: list[tuple[int, bytes | memoryview]] = []
    pending = sorted(markers, key=lambda pair: pair[0])
    for tag, chunk in body:
        while pending and pending[0][0] < tag:
            merged.append(pending.pop(0))
        merged.append((tag, chunk))
    merged.extend(pending)
    return merged


_ITEM_UNDEFINED = _TAG.pack(0xFFFE, 0xE000) + _UINT32.pack(UNDEFINED_LENGTH)
_ITEM_DELIMITER_BYTES = _TAG.pack(0xFFFE, 0xE00D) + _UINT32.pack(0)
_SEQUENCE_DELIMITER_BYTES = _TAG.pack(0xFFFE, 0xE0DD) + _UINT32.pack(0)
