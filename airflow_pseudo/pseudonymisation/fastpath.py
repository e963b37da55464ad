"""The streaming fast path: rewrite a DICOM file from its bytes, decoding only what changes.

Most elements of a typical file are kept, and a kept element's bytes need no decoding: they are
copied (as slices of a memory map, so pixel data is never duplicated in memory). Only elements a
rule changes are decoded with pydicom, passed to the reference engine's :meth:`Pseudonymiser.apply`
and re-encoded, so values are computed by exactly the same code. A sequence or item in which
nothing changes is copied as it is; those rewritten are written with undefined lengths, which
spares computing the lengths of rewritten content.

Explicit and Implicit VR Little Endian and the encapsulated (compressed) transfer syntaxes are
supported. Anything else (big endian, deflate, elements out of order, a sequence hidden in a UN
element, per-item character sets, a malformed structure...) raises :class:`FastPathUnsupported`
and the caller falls back to the reference engine, whose output this path must decode to.
"""

from __future__ import annotations

import itertools
import mmap
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import dcmread
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, PersonName
from pydicom.values import convert_value

from airflow_pseudo.pseudonymisation.engine import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    ChangeCounts,
    Pseudonymiser,
    Walk,
)
from airflow_pseudo.pseudonymisation.errors import UnsupportedInputError
from airflow_pseudo.pseudonymisation.identifiers import InstanceIdentifiers
from airflow_pseudo.pseudonymisation.policy.profile import Action
from airflow_pseudo.pseudonymisation.scanner import (
    CHANGE,
    COPY,
    DICTIONARY_SQ,
    DROP,
    ELEMENT,
    FOLD,
    HEADER_TRUNCATED,
    ITEM,
    KEEP,
    REMOVE,
    REPORT,
    SEQUENCE_DELIMITER,
    UNDEFINED_LENGTH,
    Event,
    FastPathUnsupported,
    TruncatedFileError,
    end_of_value,
    read_header,
)

try:
    from airflow_pseudo.pseudonymisation._scanner import scan_level

    SCANNER = "c"
except ImportError:  # installed without a C compiler: the reference scanner, slower
    from airflow_pseudo.pseudonymisation.scanner import scan_level

    SCANNER = "python"
from airflow_pseudo.pseudonymisation.strategies import PseudonymContext, Strategy, keep_value

PREAMBLE_AND_PREFIX = 132
# Real data nests a few levels (SR content trees a few dozen at most); far deeper nesting is
# built to exhaust parsers, and pydicom cannot read it back.
MAX_SEQUENCE_DEPTH = 64

_LONG_LENGTH_VRS = frozenset(vr.value for vr in EXPLICIT_VR_LENGTH_32)
_LONG_LENGTH_VR_CODES = frozenset(vr.encode("ascii") for vr in _LONG_LENGTH_VRS)
_UINT16 = struct.Struct("<H")
_UINT32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")
_EXPLICIT_HEADER = struct.Struct("<HH2sH")  # tag, VR, and the length unless a long-length VR
_ITEM_HEADER = struct.Struct("<HHI")  # items and delimiters: tag and 32-bit length, in any VR
_SPECIFIC_CHARACTER_SET = 0x00080005
_PATIENT_ID = 0x00100020
_STUDY_INSTANCE_UID = 0x0020000D
_SERIES_INSTANCE_UID = 0x0020000E
_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_BURNED_IN_ANNOTATION = 0x00280301
_DEIDENTIFICATION_METHOD = 0x00120063
_DEIDENTIFICATION_CODES = 0x00120064
# Text VRs whose pseudonyms are plain ASCII and whose decoding pydicom does in one step.
_PLAIN_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT"}
)
_UID_KEYWORDS = {
    _SOP_INSTANCE_UID: "SOPInstanceUID",
    _STUDY_INSTANCE_UID: "StudyInstanceUID",
    _SERIES_INSTANCE_UID: "SeriesInstanceUID",
}
_NAMING_UIDS = frozenset(_UID_KEYWORDS)
_PREAMBLE = b"\x00" * 128 + b"DICM"
_MARKERS = frozenset({0x00120062, _DEIDENTIFICATION_METHOD, _DEIDENTIFICATION_CODES, 0x00280303})
# Top-level values decoded before rewriting, and those only reported (as ELEMENT events, even
# when kept): the naming UIDs, read while rewriting, and the flag of a prior de-identification.
_CAPTURED = frozenset(
    {_SPECIFIC_CHARACTER_SET, _PATIENT_ID, _STUDY_INSTANCE_UID, _SOP_CLASS_UID,
     _BURNED_IN_ANNOTATION, _DEIDENTIFICATION_METHOD}
)  # fmt: skip


@dataclass
class FastOutput:
    """A pseudonymised file as chunks to write in order, plus what names and reports it."""

    chunks: list[bytes | memoryview]
    uids: dict[str, str]  # keyword -> value: the UIDs that name the output and its file meta
    counts: ChangeCounts


def pseudonymise_buffer(buffer: memoryview, pseudonymiser: Pseudonymiser) -> FastOutput:
    """Pseudonymise a whole DICOM file held in ``buffer`` (preamble, file meta and dataset).

    :raises FastPathUnsupported: when the reference engine must handle this file.
    """
    if bytes(buffer[128:132]) != b"DICM":
        raise FastPathUnsupported("no DICM prefix")
    meta_end, transfer_syntax_bytes = _read_file_meta(buffer)
    transfer_syntax, implicit = _transfer_syntax(transfer_syntax_bytes)
    if implicit is None:
        raise FastPathUnsupported("transfer syntax not supported by the fast path")
    sop_class = _sop_class(buffer, meta_end, implicit)
    return _Rewriter(buffer, implicit, pseudonymiser, sop_class).run(meta_end, transfer_syntax)


def _sop_class(buffer: memoryview, position: int, implicit: bool) -> str | None:
    """The SOP Class UID, read from the element headers before it: the plans depend on it."""
    size = len(buffer)
    while position + 8 <= size:
        tag, _, length, value = read_header(buffer, position, implicit)
        if tag > _SOP_CLASS_UID:
            return None
        if tag == _SOP_CLASS_UID:
            if length == UNDEFINED_LENGTH or value + length > size:
                return None
            return _uid_text(bytes(buffer[value : value + length]))
        position = end_of_value(buffer, value, length, True)
    return None


@lru_cache(maxsize=256)
def _uid_text(raw: bytes) -> str | None:
    try:
        return raw.decode("ascii").strip("\0 ") or None
    except UnicodeDecodeError:
        return None


def _read_file_meta(buffer: memoryview) -> tuple[int, bytes]:
    """Where the file meta group ends, and the transfer syntax UID's raw value."""
    position, transfer_syntax, size = PREAMBLE_AND_PREFIX, None, len(buffer)
    while position + 8 <= size:
        group, element, vr, length = _EXPLICIT_HEADER.unpack_from(buffer, position)
        if group != 0x0002:
            break
        if vr in _LONG_LENGTH_VR_CODES:
            length, start = _UINT32.unpack_from(buffer, position + 8)[0], position + 12
        else:
            start = position + 8
        if length == UNDEFINED_LENGTH or start + length > size:
            raise FastPathUnsupported("malformed file meta")
        if element == 0x0010:
            transfer_syntax = bytes(buffer[start : start + length])
        position = start + length
    if transfer_syntax is None:
        raise FastPathUnsupported("no transfer syntax in file meta")
    return position, transfer_syntax


@lru_cache(maxsize=64)
def _transfer_syntax(raw: bytes) -> tuple[UID, bool | None]:
    """The transfer syntax and whether it is implicit VR; None: not for the fast path.

    Cached: every file names one, and pydicom validates a UID each time one is built.
    """
    try:
        transfer_syntax = UID(raw.decode("ascii").strip("\0 "))
    except UnicodeDecodeError:
        raise FastPathUnsupported("malformed file meta") from None
    if transfer_syntax == ImplicitVRLittleEndian:
        return transfer_syntax, True
    if transfer_syntax == ExplicitVRLittleEndian or (
        transfer_syntax.is_encapsulated and transfer_syntax.is_little_endian
        and not transfer_syntax.is_deflated
    ):  # fmt: skip
        return transfer_syntax, False
    return transfer_syntax, None


@lru_cache(maxsize=8192)
def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


class _Plans:
    """What the fast path learns once per pseudonymiser and SOP class, reused for every file.

    Top-level rules depend on the SOP class (compound actions follow the IOD); nested rules that
    also depend on the enclosing sequences (:meth:`Profile.is_contextual`) are handed to Python
    and decided with the chain of parents, in :attr:`contextual_handling`.
    """

    def __init__(self, pseudonymiser: Pseudonymiser, sop_class: str | None = None) -> None:
        self.profile = pseudonymiser.profile
        self.sop_class = sop_class
        self.keeps_private = self.profile.keeps_private
        self.contextual: dict[int, bool] = {}
        self.contextual_handling: dict[
            tuple[int, str | None, tuple[int, ...]], tuple[int, Action, str | None]
        ] = {}
        self.actions: dict[int, Action] = {}
        self.top_level: dict[int, int] = {}
        self.nested: dict[int, int] = {}
        self.markers: dict[tuple[bool, str | None], list[tuple[int, bytes]]] = {}
        # (tag, VR, raw value, context number) -> (chunk, new text, counts)
        self.values: dict[tuple[object, ...], tuple[bytes, str, tuple[int, int, int]]] = {}
        # What else a changed element's encoding depends on (implicit VR, patient, encodings),
        # numbered: keys of ``values`` then hash one int for it, not a tuple each time.
        self.contexts: dict[tuple[object, ...], int] = {}
        self._context_numbers = itertools.count()
        self.captured: dict[tuple[object, ...], Any] = {}  # decoded values read before rewriting
        self.handling: dict[tuple[int, str | None, bool], tuple[int, Action, str | None]] = {}

    def context_number(self, context: tuple[object, ...]) -> int:
        """The number of a value context; never reused, so cached values never mix contexts."""
        number = self.contexts.get(context)
        if number is None:
            if len(self.contexts) >= _VALUE_CACHE_ENTRIES:
                self.contexts.clear()
            number = self.contexts[context] = next(self._context_numbers)
        return number

    def action(self, tag: int, parents: tuple[int, ...] = ()) -> Action:
        """The action at the top level (or, for a contextual tag, inside ``parents``)."""
        if parents:
            return self.profile.rule_for(BaseTag(tag), self.sop_class, parents).action
        action = self.actions.get(tag)
        if action is None:
            action = self.actions[tag] = self.profile.rule_for(BaseTag(tag), self.sop_class).action
        return action

    def is_contextual(self, tag: int) -> bool:
        """Whether a nested element with this tag is decided with its chain of parents."""
        contextual = self.contextual.get(tag)
        if contextual is None:
            contextual = self.contextual[tag] = self.profile.is_contextual(tag)
        return contextual

    def classify_top_level(self, tag: int) -> int:
        code = self._code(tag)
        if tag in _MARKERS:
            code = DROP | code & DICTIONARY_SQ
        return code | (REPORT if tag in _REPORTED else 0)

    def classify_nested(self, tag: int) -> int:
        if tag == _SPECIFIC_CHARACTER_SET:
            return CHANGE  # refused in :meth:`_Rewriter._element`
        if self.is_contextual(tag):  # decided in Python with the parents: never folded
            return CHANGE | (DICTIONARY_SQ if _dictionary_vr(tag) == "SQ" else 0)
        return self._code(tag)

    def _code(self, tag: int) -> int:
        action = self.action(tag)
        if self.keeps_private and action is Action.REMOVE:
            # Removed in Python, so that what the scanner removes is private only: a profile
            # keeping private attributes leaves any file that has some to the reference engine.
            return CHANGE | (DICTIONARY_SQ if _dictionary_vr(tag) == "SQ" else 0)
        code = _PLAN_CODES.get(action, CHANGE)
        if _dictionary_vr(tag) == "SQ":
            code |= DICTIONARY_SQ
        if action not in _EMPTIED_OR_REMOVED:
            code |= FOLD
        return code


_PLAN_CODES = {Action.KEEP: KEEP, Action.REMOVE: REMOVE}
# A sequence under any other action keeps its items (rewriting what changes in them), so one in
# which nothing changes may be copied whole.
_EMPTIED_OR_REMOVED = frozenset({Action.REMOVE, Action.EMPTY})
# How _Rewriter._element handles an element (ordered: _COPY and _CHANGE write the element).
(
    _COPY, _CHANGE, _SEQUENCE, _REMOVE, _SKIP,
    _REFUSE_CHARACTER_SET, _REFUSE_UN_SEQUENCE, _REFUSE_FOR_REFERENCE,
) = range(8)  # fmt: skip
# Actions the reference engine applies: a constant needs its rule's value.
_REFERENCE_ACTIONS = frozenset({Action.CONSTANT})
_REPORTED = _CAPTURED | _NAMING_UIDS | {_DEIDENTIFICATION_CODES}
_CAPTURED_OR_CODES = _CAPTURED | {_DEIDENTIFICATION_CODES}
_MARKER_TAGS = tuple(sorted(_MARKERS))
_PLANS: weakref.WeakKeyDictionary[Pseudonymiser, dict[str | None, _Plans]] = (
    weakref.WeakKeyDictionary()
)
_PLANS_PER_PSEUDONYMISER = 64  # SOP classes remembered; a batch rarely holds more than a few
_VALUE_CACHE_ENTRIES = 4096
_VALUE_CACHE_MAX_BYTES = 1024
_MISSING = object()
_PAST_LAST_TAG = 1 << 32  # above every tag: no marker left to write
_PRIVATE_KEPT = "private elements under a profile that keeps some: the reference engine decides"


class _Rewriter:
    """One pass over one file's dataset, emitting output chunks."""

    def __init__(
        self,
        buffer: memoryview,
        implicit: bool,
        pseudonymiser: Pseudonymiser,
        sop_class: str | None = None,
    ) -> None:
        self.buffer = buffer
        # Values to decode are sliced from the file's bytes (or map) the view shows: one copy,
        # not a view then a copy.
        whole = buffer.obj
        self.data: bytes | mmap.mmap = (
            whole
            if isinstance(whole, bytes | mmap.mmap) and len(whole) == buffer.nbytes
            else bytes(buffer)
        )
        self.implicit = implicit
        self.pseudonymiser = pseudonymiser
        by_sop_class = _PLANS.get(pseudonymiser)
        if by_sop_class is None:
            by_sop_class = _PLANS[pseudonymiser] = {}
        plans = by_sop_class.get(sop_class)
        if plans is None:
            if len(by_sop_class) >= _PLANS_PER_PSEUDONYMISER:
                by_sop_class.clear()
            plans = by_sop_class[sop_class] = _Plans(pseudonymiser, sop_class)
        self.plans = plans
        self.parents: tuple[int, ...] = ()
        self.identifiers: InstanceIdentifiers | None = None
        self.counts = ChangeCounts()
        self.encodings: list[str] = convert_encodings(None)
        self.depth = 0
        self.new_uids: dict[int, str] = {}
        self.value_context = -1  # see _Plans.contexts

    def run(self, start: int, transfer_syntax: UID) -> FastOutput:
        plans = self.plans
        events, _, removed = scan_level(
            self.buffer, start, len(self.buffer), self.implicit,
            plans.top_level, plans.classify_top_level, _MARKER_TAGS,
            (plans.nested, plans.classify_nested, MAX_SEQUENCE_DEPTH),
        )  # fmt: skip
        if removed and plans.keeps_private:
            raise FastPathUnsupported(_PRIVATE_KEPT)
        self.counts.removed += removed
        captured = self._captured(events)
        self.pseudonymiser.check_burned_in(captured.get(_BURNED_IN_ANNOTATION))
        if _DEIDENTIFICATION_CODES in captured:
            raise FastPathUnsupported("already de-identified: merge method codes in the reference")
        context = self.pseudonymiser.context_for(
            captured.get(_PATIENT_ID), captured.get(_STUDY_INSTANCE_UID)
        )
        # Besides tag, VR and raw value, what a changed element's encoding depends on.
        self.value_context = plans.context_number((self.implicit, context.patient, *self.encodings))
        body: list[bytes | memoryview] = []
        markers = self._markers(captured.get(_DEIDENTIFICATION_METHOD))
        self._emit(events, body, context, True, markers)
        uids = self._naming_uids(captured, context)
        chunks: list[bytes | memoryview] = [
            _PREAMBLE,
            file_meta_bytes(uids["SOPClassUID"], uids["SOPInstanceUID"], transfer_syntax),
        ]
        chunks.extend(body)
        return FastOutput(chunks, uids, self.counts)

    def _captured(self, events: list[Event]) -> dict[int, object]:
        """The top-level values needed before rewriting: patient, character set, flags."""
        captured: dict[int, object] = {}
        for event in events:
            if event[0] != ELEMENT or event[1] not in _CAPTURED_OR_CODES:
                continue
            _, tag, vr, length, _, value, _ = event
            if tag == _DEIDENTIFICATION_CODES:
                captured[tag] = True
            elif length != UNDEFINED_LENGTH:
                decoded = captured[tag] = self._captured_value(tag, vr, length, value)
                if tag == _SPECIFIC_CHARACTER_SET:
                    self.encodings = convert_encodings(decoded)
        return captured

    def _captured_value(self, tag: int, vr: str | None, length: int, value: int) -> Any:
        """Decode a captured value; files of a series repeat them, so decode each once."""
        if length > _VALUE_CACHE_MAX_BYTES:
            return self._decode(tag, vr, length, value).value
        raw = self.data[value : value + length]
        key = (tag, vr, self.implicit, raw, *self.encodings)
        values = self.plans.captured
        decoded = values.get(key, _MISSING)
        if decoded is _MISSING:
            if len(values) >= _VALUE_CACHE_ENTRIES:
                values.clear()
            decoded = values[key] = self._decode(tag, vr, length, value).value
        return decoded

    # -- rewriting ------------------------------------------------------------------------

    def _emit(
        self,
        events: list[Event],
        out: list[bytes | memoryview],
        context: PseudonymContext,
        top_level: bool,
        markers: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        """Write one level's events; at the top level, this tool's markers in tag order.

        The common cases (a run of kept elements, a changed value seen before) are handled
        here without a call: this loop runs for every element of every file.
        """
        buffer, data, append = self.buffer, self.data, out.append
        handling_table, values, value_context = (
            self.plans.handling,
            self.plans.values,
            self.value_context,
        )
        replaced = remapped = emptied = 0  # of cache hits, added to the counts at the end
        pending = 0
        next_marker = markers[0][0] if markers else _PAST_LAST_TAG
        for event in events:
            if event[0] == COPY:
                while next_marker < event[3]:
                    append(markers[pending][1])
                    pending += 1
                    next_marker = markers[pending][0] if pending < len(markers) else _PAST_LAST_TAG
                append(buffer[event[1] : event[2]])
                continue
            _, tag, vr, length, _, value, _ = event
            while next_marker < tag:
                append(markers[pending][1])
                pending += 1
                next_marker = markers[pending][0] if pending < len(markers) else _PAST_LAST_TAG
            handling = handling_table.get((tag, vr, top_level))
            if (
                handling is not None
                and handling[0] == _CHANGE
                and 0 < length <= _VALUE_CACHE_MAX_BYTES
            ):
                cached = values.get((tag, vr, data[value : value + length], value_context))
                if cached is not None:
                    chunk, text, hit = cached
                    append(chunk)
                    replaced += hit[0]
                    remapped += hit[1]
                    emptied += hit[2]
                    if top_level and tag in _NAMING_UIDS:
                        self.new_uids[tag] = text
                    continue
            self._element(event, out, context, top_level=top_level)
        if pending < len(markers):
            out.extend(chunk for _, chunk in markers[pending:])
        counts = self.counts
        counts.replaced += replaced
        counts.remapped_uids += remapped
        counts.emptied += emptied

    def _element(
        self,
        event: Event,
        out: list[bytes | memoryview],
        context: PseudonymContext,
        *,
        top_level: bool,
    ) -> None:
        _, tag, vr, length, header, value, end = event
        contextual = not top_level and self.plans.is_contextual(tag)
        if contextual:
            handling, action, value_vr = self._contextual_handling(tag, vr)
        else:
            handling, action, value_vr = self._handling(tag, vr, top_level)
        new_text: str | None = None
        if handling == _CHANGE and length:
            cache = not contextual and action is not Action.CLEAN  # cleaning is per instance
            chunk, new_text = self._changed(
                tag, vr, value_vr, length, value, action, context, cache=cache
            )
            out.append(chunk)
        elif handling <= _CHANGE:  # _COPY, or a change of an empty value
            out.append(self.buffer[header:end])
        elif handling == _SEQUENCE:
            self._sequence(tag, header, length, value, action, out, context)
            return
        elif handling == _REMOVE:
            self.counts.removed += 1
            return
        elif handling == _SKIP:
            return  # a marker: replaced by this tool's own
        elif handling == _REFUSE_CHARACTER_SET:
            raise FastPathUnsupported("a sequence item with its own character set")
        elif handling == _REFUSE_FOR_REFERENCE:
            raise FastPathUnsupported("a constant: the reference engine writes it")
        else:
            raise FastPathUnsupported("a sequence encoded as UN")
        if top_level and tag in _NAMING_UIDS:
            if new_text is None:  # kept: the output holds the original value
                new_text = str(self._decode(tag, vr, length, value).value or "")
            self.new_uids[tag] = new_text

    def _instance_identifiers(self) -> InstanceIdentifiers:
        """The instance's identifying values, for Clean: read once, only when needed."""
        if self.identifiers is None:
            try:
                dataset = dcmread(DicomBytesIO(bytes(self.buffer)), force=True)
            except Exception:
                raise FastPathUnsupported("the instance cannot be read for cleaning") from None
            self.identifiers = InstanceIdentifiers.from_dataset(dataset)
        return self.identifiers

    def _handling(
        self, tag: int, vr: str | None, top_level: bool
    ) -> tuple[int, Action, str | None]:
        """How an element is handled, decided once per tag, VR and level."""
        key = (tag, vr, top_level)
        handling = self.plans.handling.get(key)
        if handling is None:
            handling = self.plans.handling[key] = self._decide(tag, vr, top_level)
        return handling

    def _contextual_handling(self, tag: int, vr: str | None) -> tuple[int, Action, str | None]:
        """How a nested element whose rule depends on its parents is handled, decided once."""
        key = (tag, vr, self.parents)
        handling = self.plans.contextual_handling.get(key)
        if handling is None:
            if len(self.plans.contextual_handling) >= _VALUE_CACHE_ENTRIES:
                self.plans.contextual_handling.clear()
            handling = self.plans.contextual_handling[key] = self._decide(
                tag, vr, False, self.parents
            )
        return handling

    def _decide(
        self, tag: int, vr: str | None, top_level: bool, parents: tuple[int, ...] = ()
    ) -> tuple[int, Action, str | None]:
        action = self.plans.action(tag, parents)
        if top_level and tag in _MARKERS:
            return _SKIP, action, vr
        if not top_level and tag == _SPECIFIC_CHARACTER_SET:
            return _REFUSE_CHARACTER_SET, action, vr
        if action in _REFERENCE_ACTIONS:
            return _REFUSE_FOR_REFERENCE, action, vr
        if action is Action.REMOVE:
            return _REMOVE, action, vr
        dictionary_vr = _dictionary_vr(tag)
        hidden = vr is None or vr == "UN"
        if vr == "SQ" or (hidden and dictionary_vr == "SQ"):
            return (_REFUSE_UN_SEQUENCE if vr == "UN" else _SEQUENCE), action, vr
        value_vr = dictionary_vr if hidden else vr
        if action is Action.KEEP or self._strategy(action, value_vr) is keep_value:
            return _COPY, action, value_vr
        return _CHANGE, action, value_vr

    def _changed(
        self,
        tag: int,
        vr: str | None,
        value_vr: str | None,
        length: int,
        value: int,
        action: Action,
        context: PseudonymContext,
        *,
        cache: bool = True,
    ) -> tuple[bytes, str]:
        """The encoded element after its action, remembered for files that share the value.

        A series repeats most changed values (patient, study, dates) in every instance; the
        result depends only on the key below, so it is computed once. Contextual elements
        (``cache=False``) are not remembered: the key does not hold their action.
        """
        if not cache or length == UNDEFINED_LENGTH or length > _VALUE_CACHE_MAX_BYTES:
            chunk, text, counts = self._apply(tag, vr, value_vr, length, value, action, context)
        else:
            key = (tag, vr, self.data[value : value + length], self.value_context)
            values = self.plans.values
            cached = values.get(key)
            if cached is None:
                if len(values) >= _VALUE_CACHE_ENTRIES:
                    values.clear()
                cached = values[key] = self._apply(
                    tag, vr, value_vr, length, value, action, context
                )
            chunk, text, counts = cached
        self.counts.replaced += counts[0]
        self.counts.remapped_uids += counts[1]
        self.counts.emptied += counts[2]
        return chunk, text

    def _apply(
        self,
        tag: int,
        vr: str | None,
        value_vr: str | None,
        length: int,
        value: int,
        action: Action,
        context: PseudonymContext,
    ) -> tuple[bytes, str, tuple[int, int, int]]:
        """Apply ``action`` with the reference engine's strategies; return chunk, text, counts."""
        strategy = self._strategy(action, value_vr)
        if (
            strategy is not None
            and value_vr in _PLAIN_TEXT_VRS
            and len(self.encodings) == 1
            and length != UNDEFINED_LENGTH
        ):
            rewritten = self._rewrite_text(tag, value_vr, length, value, strategy, context)
            if rewritten is not None:
                chunk, text = rewritten
                counts = (int(action is Action.REPLACE), int(action is Action.REMAP_UID), 0)
                return chunk, text, counts
        if action is Action.EMPTY:
            element = self._decode(tag, vr, 0, value)
            delta = ChangeCounts(emptied=1)
        else:
            if length == UNDEFINED_LENGTH:
                raise FastPathUnsupported("undefined length value to change")
            element = self._decode(tag, vr, length, value)
            delta = ChangeCounts()
            walk = None
            if action is Action.CLEAN:
                identifiers = self._instance_identifiers()
                walk = Walk(context, delta, self.plans.sop_class, identifiers)
            self.pseudonymiser.apply(element, action, context, delta, walk=walk)
        counts = (delta.replaced, delta.remapped_uids, delta.emptied)
        return self._encode(element), str(element.value or ""), counts

    def _sequence(
        self,
        tag: int,
        header: int,
        length: int,
        value: int,
        action: Action,
        out: list[bytes | memoryview],
        context: PseudonymContext,
    ) -> None:
        """Rewrite a sequence item by item; what nothing changes in is copied as it is.

        Code sequences, contour data and the like are often untouched: an item whose elements
        are all kept keeps its bytes, and a sequence whose items all are keeps its own.
        """
        buffer, implicit, plans = self.buffer, self.implicit, self.plans
        group_element = _TAG.pack(tag >> 16, tag & 0xFFFF)
        explicit_header = b"" if implicit else b"SQ\x00\x00"
        if action is Action.EMPTY:
            self.counts.emptied += 1
            out.append(group_element + explicit_header + _UINT32.pack(0))
            return
        first_chunk = len(out)
        out.append(group_element + explicit_header + _UINT32.pack(UNDEFINED_LENGTH))
        end = None if length == UNDEFINED_LENGTH else value + length
        position = value
        unchanged = end is not None
        while end is None or position < end:
            item_start = position
            if position + 8 > len(buffer):
                raise TruncatedFileError(HEADER_TRUNCATED)
            group, element, item_length = _ITEM_HEADER.unpack_from(buffer, position)
            item, item_value = group << 16 | element, position + 8
            if item == SEQUENCE_DELIMITER and end is None:
                break
            if item != ITEM:
                raise FastPathUnsupported("malformed sequence")
            self.depth += 1
            self.parents = (*self.parents, tag)
            if self.depth > MAX_SEQUENCE_DEPTH:
                raise UnsupportedInputError(
                    f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels are refused"
                )
            item_end = -1 if item_length == UNDEFINED_LENGTH else item_value + item_length
            events, position, removed = scan_level(
                buffer, item_value, item_end, implicit, plans.nested, plans.classify_nested, (),
                (plans.nested, plans.classify_nested, MAX_SEQUENCE_DEPTH - self.depth),
            )  # fmt: skip
            if item_end >= 0 and position != item_end:
                raise FastPathUnsupported("item length disagrees with its elements")
            if removed and plans.keeps_private:
                raise FastPathUnsupported(_PRIVATE_KEPT)
            if item_end >= 0 and not removed and _covers(events, item_value, item_end):
                out.append(buffer[item_start:item_end])
            else:
                unchanged = False
                self.counts.removed += removed
                out.append(_ITEM_UNDEFINED)
                self._emit(events, out, context, False)
                out.append(_ITEM_DELIMITER_BYTES)
            self.depth -= 1
            self.parents = self.parents[:-1]
        if end is not None and position != end:
            raise FastPathUnsupported("sequence length disagrees with its items")
        if unchanged:
            del out[first_chunk:]
            out.append(buffer[header:position])
        else:
            out.append(_SEQUENCE_DELIMITER_BYTES)

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
    ) -> tuple[bytes, str] | None:
        """Decode with pydicom's own converter, pseudonymise, encode plain ASCII text.

        Returns None when the result is not plain ASCII, for pydicom to encode.
        """
        data = self.data[value : value + length]
        decoded: Any = None
        if vr == "UI" and strategy == self.pseudonymiser.remap_uid and data.isascii():
            # As pydicom's converter does, without building UID objects that remap_uid would
            # turn back into text: strip trailing padding, split the values, strip each.
            decoded = [uid.strip() for uid in data.decode("ascii").rstrip("\0 ").split("\\")]
            decoded = decoded if len(decoded) > 1 else decoded[0]
        else:
            raw = RawDataElement(BaseTag(tag), vr, length, data, value, False, True)
            decoded = convert_value(vr, raw, self.encodings)
        # One value in most elements: checked first, as MultiValue's ABC check is slow.
        if not isinstance(decoded, str | PersonName) and isinstance(decoded, MultiValue | list):
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
        payload = _pad(payload, b"\x00" if vr == "UI" else b" ")
        if self.implicit:
            return _TAG.pack(tag >> 16, tag & 0xFFFF) + _UINT32.pack(len(payload)) + payload, text
        return _explicit(tag, vr, payload), text

    def _decode(self, tag: int, vr: str | None, length: int, value: int) -> DataElement:
        raw = RawDataElement(
            BaseTag(tag),
            vr,
            length,
            self.data[value : value + length],
            value,
            self.implicit if vr is None else False,
            True,
        )
        element = convert_raw_data_element(raw, encoding=self.encodings)
        if " or " in element.VR:
            raise FastPathUnsupported("ambiguous VR needs the dataset")
        return element

    def _encode(self, element: DataElement) -> bytes:
        stream = DicomBytesIO()
        stream.is_little_endian, stream.is_implicit_VR = True, self.implicit
        write_data_element(stream, element, self.encodings)
        return stream.getvalue()

    def _markers(self, prior: object) -> list[tuple[int, bytes]]:
        key = (self.implicit, str(prior) if prior else None)
        cache = self.plans.markers
        if key not in cache:
            markers = Dataset()
            if prior:
                markers.DeidentificationMethod = prior
            self.pseudonymiser.add_markers(markers)
            cache[key] = sorted((int(e.tag), self._encode(e)) for e in markers)
        return cache[key]

    def _naming_uids(
        self, captured: dict[int, object], context: PseudonymContext
    ) -> dict[str, str]:
        if _SOP_CLASS_UID not in captured or not self.new_uids.get(_SOP_INSTANCE_UID):
            raise FastPathUnsupported("no SOP Class or Instance UID: the reference decides")
        sop_class = str(captured[_SOP_CLASS_UID])
        if self.plans.action(_SOP_CLASS_UID) is Action.REMAP_UID:  # a private SOP class
            sop_class = self.pseudonymiser.remap_uid(sop_class, context)
        uids = {"SOPClassUID": sop_class}
        uids.update((_UID_KEYWORDS[tag], uid) for tag, uid in self.new_uids.items())
        return uids


def _covers(events: list[Event], start: int, end: int) -> bool:
    """Whether ``events`` are one run of kept elements spanning ``start`` to ``end`` (or none)."""
    if not events:
        return start == end
    event = events[0]
    return len(events) == 1 and event[0] == COPY and event[1] == start and event[2] == end


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Encode the file meta group this tool writes (PS3.10 7.1), group length first."""
    before, after = _file_meta_around_instance(sop_class, str(transfer_syntax))
    instance = _explicit(0x00020003, "UI", _pad(sop_instance.encode("ascii"), b"\x00"))
    length = _UINT32.pack(len(before) + len(instance) + len(after))
    return b"".join((_explicit(0x00020000, "UL", length), before, instance, after))


@lru_cache(maxsize=256)
def _file_meta_around_instance(sop_class: str, transfer_syntax: str) -> tuple[bytes, bytes]:
    """The file meta elements before and after the instance UID: the same for a whole series."""
    before = _explicit(0x00020001, "OB", b"\x00\x01") + _explicit(
        0x00020002, "UI", _pad(sop_class.encode("ascii"), b"\x00")
    )
    after = b"".join(
        (
            _explicit(0x00020010, "UI", _pad(transfer_syntax.encode("ascii"), b"\x00")),
            _explicit(0x00020012, "UI", _pad(IMPLEMENTATION_CLASS_UID.encode("ascii"), b"\x00")),
            _explicit(0x00020013, "SH", _pad(IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" ")),
        )
    )
    return before, after


def _pad(data: bytes, padding: bytes) -> bytes:
    return data + padding if len(data) % 2 else data


def _explicit(tag: int, vr: str, payload: bytes) -> bytes:
    head = _TAG.pack(tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_LENGTH_VRS:
        return head + b"\x00\x00" + _UINT32.pack(len(payload)) + payload
    return head + _UINT16.pack(len(payload)) + payload


_ITEM_UNDEFINED = _TAG.pack(0xFFFE, 0xE000) + _UINT32.pack(UNDEFINED_LENGTH)
_ITEM_DELIMITER_BYTES = _TAG.pack(0xFFFE, 0xE00D) + _UINT32.pack(0)
_SEQUENCE_DELIMITER_BYTES = _TAG.pack(0xFFFE, 0xE0DD) + _UINT32.pack(0)
