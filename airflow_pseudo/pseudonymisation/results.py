"""Per-file result records: JSON-native, one per input, never holding a DICOM value or the key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "skipped", "failed"]


@dataclass
class FileResult:
    """What happened to one input file.

    :param source: the input path.
    :param output: the written output path, when ``status`` is ``ok``.
    :param status: ``ok``, ``skipped`` (not DICOM) or ``failed``.
    :param reason: why it was skipped or failed; never contains a DICOM value.
    :param quarantine: where a copy of a failed input was put, with its reason beside it.
    :param engine: which engine produced the output (``reference``).
    :param changes: element counts per action (replaced, remapped_uids, emptied, removed).
    :param profile: the name of the profile applied.
    :param profile_digest: 16 hex digits identifying the profile's resolved rules.
    :param method_codes: the CID 7050 codes written to DeidentificationMethodCodeSequence.
    :param seconds: wall time spent on the file (read, pseudonymise, write), to the millisecond.
    """

    source: str
    output: str | None = None
    status: Status = "ok"
    reason: str | None = None
    quarantine: str | None = None
    engine: str = "reference"
    changes: dict[str, int] = field(default_factory=dict)
    profile: str | None = None
    profile_digest: str | None = None
    method_codes: list[str] = field(default_factory=list)
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> FileResult:
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in record.items() if k in names})


@dataclass
class ValidationResult:
    """The verdict on one output checked against its original.

    :param problems: what is wrong, each naming an attribute by keyword or tag, never by value.
    :param key_checks: ``passed`` or ``failed`` (the anchors' pseudonyms recomputed with the
        key), ``skipped`` (no key given, or nothing validated).
    """

    source: str
    output: str | None
    status: Status
    problems: list[str] = field(default_factory=list)
    quarantine: str | None = None
    key_checks: str = "skipped"

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


def _as_dict(record: FileResult | ValidationResult) -> dict[str, Any]:
    """The record's fields, its lists and dicts copied (:func:`dataclasses.asdict` deep-copies
    every value, which costs more than the rest of a record's trip through XCom)."""
    out: dict[str, Any] = {}
    for name in record.__dataclass_fields__:
        value = getattr(record, name)
        out[name] = value.copy() if isinstance(value, dict | list) else value
    return out
