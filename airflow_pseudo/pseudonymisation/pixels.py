"""The pixel risk gate, until pixel cleaning exists: what the header rules cannot reach.

Two things identify a patient from pixel data whatever the header says:

- **text hidden in compressed frames**: JPEG comment (COM) and application (APPn) segments, and
  JPEG 2000 comment (COM) marker segments and XML/UUID boxes, carry free text (a name, a birth
  date, EXIF data) next to the image. None is needed to decode the image except the Adobe APP14
  segment (it says whether colours were transformed) and JPEG-LS's APP8 colour transform:
  :func:`strip_frame` removes every other one, and decoding gives the same pixels.
- **text or faces in the image itself**: :func:`pixel_risk` refuses images flagged
  RecognizableVisualFeatures=YES, and images of the classes listed in
  :data:`BURNED_IN_TEXT_LIKELY` whose BurnedInAnnotation is absent (a sender that checked says NO).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

from airflow_pseudo.pseudonymisation.io.inputs import dataset_offset, transfer_syntax_of
from airflow_pseudo.pseudonymisation.scanner import (
    ELEMENT,
    KEEP,
    REPORT,
    UNDEFINED_LENGTH,
    FastPathUnsupported,
    TruncatedFileError,
)

try:
    from airflow_pseudo.pseudonymisation._scanner import scan_level
except ImportError:  # not built: the reference implementation
    from airflow_pseudo.pseudonymisation.scanner import scan_level

_SECONDARY_CAPTURE = (
    "Secondary Capture: screenshots, scanned documents and exported views, which usually show "
    "the patient's name or ID in the image"
)
_ULTRASOUND = "ultrasound: the scanner burns the patient's name, ID and date into the image"
_PHOTOGRAPH = "visible-light photograph: may show a face, tattoos, wristbands or labels"
_DOCUMENT = "encapsulated document: text and images this tool cannot inspect"

BURNED_IN_TEXT_LIKELY: Mapping[str, str] = {
    "1.2.840.10008.5.1.4.1.1.7": _SECONDARY_CAPTURE,
    "1.2.840.10008.5.1.4.1.1.7.1": _SECONDARY_CAPTURE,  # multi-frame single bit
    "1.2.840.10008.5.1.4.1.1.7.2": _SECONDARY_CAPTURE,  # multi-frame grayscale byte
    "1.2.840.10008.5.1.4.1.1.7.3": _SECONDARY_CAPTURE,  # multi-frame grayscale word
    "1.2.840.10008.5.1.4.1.1.7.4": _SECONDARY_CAPTURE,  # multi-frame true colour
    "1.2.840.10008.5.1.4.1.1.6": _ULTRASOUND,  # ultrasound (retired)
    "1.2.840.10008.5.1.4.1.1.6.1": _ULTRASOUND,
    "1.2.840.10008.5.1.4.1.1.6.2": _ULTRASOUND,  # enhanced volume
    "1.2.840.10008.5.1.4.1.1.3": _ULTRASOUND,  # multi-frame (retired)
    "1.2.840.10008.5.1.4.1.1.3.1": _ULTRASOUND,  # multi-frame
    "1.2.840.10008.5.1.4.1.1.77.1.1": _PHOTOGRAPH,  # VL endoscopic
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": _PHOTOGRAPH,  # video endoscopic
    "1.2.840.10008.5.1.4.1.1.77.1.2": _PHOTOGRAPH,  # VL microscopic
    "1.2.840.10008.5.1.4.1.1.77.1.2.1": _PHOTOGRAPH,  # video microscopic
    "1.2.840.10008.5.1.4.1.1.77.1.3": _PHOTOGRAPH,  # VL slide-coordinates microscopic
    "1.2.840.10008.5.1.4.1.1.77.1.4": _PHOTOGRAPH,  # VL photographic
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": _PHOTOGRAPH,  # video photographic
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": _PHOTOGRAPH,  # ophthalmic photography 8 bit
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": _PHOTOGRAPH,  # ophthalmic photography 16 bit
    "1.2.840.10008.5.1.4.1.1.77.1.5.5": _PHOTOGRAPH,  # wide field ophthalmic photography
    "1.2.840.10008.5.1.4.1.1.77.1.7": _PHOTOGRAPH,  # dermoscopic photography
    "1.2.840.10008.5.1.4.1.1.104.1": _DOCUMENT,  # encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.104.2": _DOCUMENT,  # encapsulated CDA
}
"""SOP classes whose images are likely to show identifying text or features, with the reason."""

# Transfer syntaxes whose frames are JPEG (ISO 10918 and JPEG-LS) or JPEG 2000 codestreams.
JPEG_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
     "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
)  # fmt: skip
JPEG_2000_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
     "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
)  # fmt: skip
# Byte pairs that start a segment this module strips: in a frame's entropy-coded data a 0xFF
# is always followed by 0x00 or a marker, so their absence from a file means nothing to strip.
_JPEG_STRIPPED_MARKERS = (b"\xff\xfe", *(bytes((0xFF, code)) for code in range(0xE0, 0xF0)))
_J2K_STRIPPED_MARKERS = (b"\xff\x64", b"xml ", b"uuid")

_RECOGNIZABLE = (
    "RecognizableVisualFeatures is YES: the image may show the patient's face or another "
    "identifying feature"
)
_HOW_TO_ALLOW = "(allow_burned_in / --allow-burned-in to publish it anyway)"


def pixel_risk(
    sop_class_uid: object, burned_in_annotation: object, recognizable_visual_features: object
) -> str | None:
    """Why an image must not be published as it is, or None.

    :param sop_class_uid: the SOPClassUID.
    :param burned_in_annotation: the BurnedInAnnotation value, None when absent (YES is refused
        by the engines themselves).
    :param recognizable_visual_features: the RecognizableVisualFeatures value, None when absent.
    """
    if _flag(recognizable_visual_features) == "YES":
        return f"{_RECOGNIZABLE} {_HOW_TO_ALLOW}"
    likely = BURNED_IN_TEXT_LIKELY.get(str(sop_class_uid or "").strip())
    if likely and not _flag(burned_in_annotation):
        return f"BurnedInAnnotation is absent and this is a {likely} {_HOW_TO_ALLOW}"
    return None


def _flag(value: object) -> str:
    return str(value or "").strip().upper()


def may_need_stripping(transfer_syntax: object, data: bytes | memoryview) -> bool:
    """Whether a whole file's bytes may hold segments :func:`strip_frame` removes (cheap)."""
    syntax = str(transfer_syntax or "")
    if syntax in JPEG_TRANSFER_SYNTAXES:
        markers = _JPEG_STRIPPED_MARKERS
    elif syntax in JPEG_2000_TRANSFER_SYNTAXES:
        markers = _J2K_STRIPPED_MARKERS
    else:
        return False
    content = bytes(data)
    return any(marker in content for marker in markers)


def strip_pixel_data(dataset: Dataset) -> int:
    """Remove the non-image segments of every frame of an encapsulated PixelData, in place.

    :returns: how many segments were removed (0: the PixelData is left untouched).
    """
    meta = getattr(dataset, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if "PixelData" not in dataset or syntax not in (
        JPEG_TRANSFER_SYNTAXES | JPEG_2000_TRANSFER_SYNTAXES
    ):
        return 0
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    cleaned: list[bytes] = []
    removed = 0
    for frame in generate_frames(dataset.PixelData, number_of_frames=frames):
        stripped, count = strip_frame(frame, jpeg_2000=syntax in JPEG_2000_TRANSFER_SYNTAXES)
        cleaned.append(stripped)
        removed += count
    if removed:
        dataset.PixelData = encapsulate(cleaned, has_bot=len(cleaned) > 1)
        dataset["PixelData"].is_undefined_length = True
    return removed


def strip_file(data: bytes) -> bytes | None:
    """A whole file's bytes with :func:`strip_pixel_data` applied, for the fast path to rewrite.

    The top-level encapsulated PixelData is found by the element scanner and its frames are
    stripped and encapsulated again exactly as :func:`strip_pixel_data` does; every other byte is
    kept. ``data`` itself when it holds nothing to strip (:func:`may_need_stripping`); ``None``
    when only the reference engine can tell: no file meta group length, a structure the scanner
    refuses, an extended offset table, frames pydicom cannot split.
    """
    syntax = transfer_syntax_of(data) or ""
    if not may_need_stripping(syntax, data):
        return data
    start = dataset_offset(data, deflated=False)
    if start >= len(data):
        return None
    try:
        events, _, _ = scan_level(data, start, len(data), False, _PLAN, _report_pixel_elements)
    except (FastPathUnsupported, TruncatedFileError):
        return None
    found = {event[1]: event for event in events if event[0] == ELEMENT}
    if _EXTENDED_OFFSET_TABLE in found:
        return None
    pixel_data = found.get(_PIXEL_DATA)
    if pixel_data is None or pixel_data[3] != UNDEFINED_LENGTH:
        return data  # nothing encapsulated: no segment to strip
    value, end = pixel_data[5], pixel_data[6] - 8  # the items, without the sequence delimiter
    frames_element = found.get(_NUMBER_OF_FRAMES)
    try:
        frames = int(data[frames_element[5] : frames_element[6]]) if frames_element else 1
    except ValueError:
        return None
    cleaned: list[bytes] = []
    removed = 0
    jpeg_2000 = syntax in JPEG_2000_TRANSFER_SYNTAXES
    try:
        for frame in generate_frames(data[value:end], number_of_frames=max(frames, 1)):
            stripped, count = strip_frame(frame, jpeg_2000=jpeg_2000)
            cleaned.append(stripped)
            removed += count
    except ValueError:  # items pydicom cannot split into frames: the reference engine's to judge
        return None
    if not removed:
        return data
    return data[:value] + encapsulate(cleaned, has_bot=len(cleaned) > 1) + data[end:]


_PIXEL_DATA, _NUMBER_OF_FRAMES, _EXTENDED_OFFSET_TABLE = 0x7FE00010, 0x00280008, 0x7FE00001
_PLAN: dict[int, int] = {}
"""The scanner's plan for :func:`strip_file`, filled once per tag."""


def _report_pixel_elements(tag: int) -> int:
    """The scanner's plan: report what :func:`strip_file` reads, skip the rest at C speed."""
    return REPORT if tag in (_PIXEL_DATA, _NUMBER_OF_FRAMES, _EXTENDED_OFFSET_TABLE) else KEEP


def strip_frame(frame: bytes, *, jpeg_2000: bool) -> tuple[bytes, int]:
    """A frame without its comment and application segments, and how many were removed."""
    if jpeg_2000:
        if frame[:4] == b"\x00\x00\x00\x0c":  # a JP2 file (boxes) rather than a bare codestream
            return _strip_jp2_boxes(frame)
        return _strip_j2k_codestream(frame)
    return _strip_jpeg(frame)


# --- JPEG (ISO 10918-1 and JPEG-LS) ------------------------------------------------------------

_SOI, _EOI, _SOS, _COM = 0xD8, 0xD9, 0xDA, 0xFE
_STANDALONE = frozenset({0x01, _SOI, _EOI, *range(0xD0, 0xD8)})
_KEPT_APPLICATION = {0xEE: b"Adobe", 0xE8: b"mrfx"}  # needed to decode colour correctly


def _strip_jpeg(frame: bytes) -> tuple[bytes, int]:
    if frame[:2] != b"\xff\xd8":
        return frame, 0
    kept: list[bytes] = []
    removed = 0
    for start, end, marker in _jpeg_segments(frame):
        if marker == _COM or (
            0xE0 <= marker <= 0xEF
            and not frame[start + 4 : end].startswith(_KEPT_APPLICATION.get(marker, b"\x00\x00"))
        ):
            removed += 1
            continue
        kept.append(frame[start:end])
    return (b"".join(kept), removed) if removed else (frame, 0)


def _jpeg_segments(frame: bytes) -> Iterator[tuple[int, int, int]]:
    """(start, end, marker) of every piece of the frame, entropy-coded data with its SOS."""
    position, size = 0, len(frame)
    while position < size:
        if frame[position] != 0xFF or position + 1 >= size:
            yield position, size, -1  # trailing bytes after EOI: kept as they are
            return
        marker = frame[position + 1]
        if marker == 0xFF:  # fill byte
            yield position, position + 1, -1
            position += 1
            continue
        if marker in _STANDALONE:
            yield position, position + 2, marker
            position += 2
            continue
        (length,) = struct.unpack_from(">H", frame, position + 2)
        end = position + 2 + length
        if marker == _SOS:
            end = _end_of_entropy_coded_data(frame, end)
        yield position, end, marker
        position = end


def _end_of_entropy_coded_data(frame: bytes, position: int) -> int:
    """Where the next marker (other than a stuffed 0xFF00 or a restart marker) starts."""
    while True:
        position = frame.find(b"\xff", position)
        if position < 0 or position + 1 >= len(frame):
            return len(frame)
        following = frame[position + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            position += 1
            continue
        return position


# --- JPEG 2000 -------------------------------------------------------------------------------

_J2K_SOC, _J2K_SOT, _J2K_SOD, _J2K_EOC, _J2K_COM = 0xFF4F, 0xFF90, 0xFF93, 0xFFD9, 0xFF64


def _strip_j2k_codestream(frame: bytes) -> tuple[bytes, int]:
    """Drop COM marker segments from the main header and every tile-part header."""
    if frame[:2] != b"\xff\x4f":
        return frame, 0
    out = [frame[:2]]
    position, removed = 2, 0
    while position + 4 <= len(frame):
        (marker,) = struct.unpack_from(">H", frame, position)
        if marker == _J2K_EOC:
            break
        if marker == _J2K_SOT:
            tile_part, count, position = _strip_tile_part(frame, position)
            out.append(tile_part)
            removed += count
            continue
        (length,) = struct.unpack_from(">H", frame, position + 2)
        end = position + 2 + length
        if marker == _J2K_COM:
            removed += 1
        else:
            out.append(frame[position:end])
        position = end
    out.append(frame[position:])
    return (b"".join(out), removed) if removed else (frame, 0)


def _strip_tile_part(frame: bytes, start: int) -> tuple[bytes, int, int]:
    """One tile-part without COM segments in its header, its Psot corrected; and where next."""
    _, _, _, psot = struct.unpack_from(">HHHI", frame, start)
    end = start + psot if psot else len(frame) - 2  # Psot 0: up to the EOC marker
    header = [frame[start : start + 12]]
    position, removed = start + 12, 0
    while position < end:
        (marker,) = struct.unpack_from(">H", frame, position)
        if marker == _J2K_SOD:
            break
        (length,) = struct.unpack_from(">H", frame, position + 2)
        if marker == _J2K_COM:
            removed += 1
        else:
            header.append(frame[position : position + 2 + length])
        position += 2 + length
    body = frame[position:end]
    if removed and psot:
        new_length = sum(map(len, header)) + len(body)
        header[0] = header[0][:6] + struct.pack(">I", new_length) + header[0][10:]
    return b"".join(header) + body, removed, end


def _strip_jp2_boxes(frame: bytes) -> tuple[bytes, int]:
    """Drop XML and UUID boxes of a JP2 file; strip the codestream box's COM segments."""
    out: list[bytes] = []
    position, removed = 0, 0
    while position + 8 <= len(frame):
        (length,) = struct.unpack_from(">I", frame, position)
        kind = frame[position + 4 : position + 8]
        header = 8
        if length == 1:
            (length,) = struct.unpack_from(">Q", frame, position + 8)
            header = 16
        elif length == 0:
            length = len(frame) - position
        box = frame[position : position + length]
        if kind in (b"xml ", b"uuid"):
            removed += 1
        elif kind == b"jp2c":
            codestream, count = _strip_j2k_codestream(box[header:])
            if count:
                removed += count
                box = struct.pack(">I", 8 + len(codestream)) + kind + codestream
            out.append(box)
        else:
            out.append(box)
        position += length
    out.append(frame[position:])
    return (b"".join(out), removed) if removed else (frame, 0)
