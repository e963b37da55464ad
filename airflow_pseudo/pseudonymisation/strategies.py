"""Per-VR strategies: small functions that turn one original value into its pseudonym.

``pseudonymisation_dispatch`` maps a VR to its strategy, as in the seed. A strategy receives one
value (the engine splits multi-valued elements and skips empty ones) and a
:class:`PseudonymContext`, and returns a value valid for the VR, or ``""`` when no valid
pseudonym exists, so the element is emptied rather than left identifying.
"""

from __future__ import annotations

import base64
import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cached_property
from types import MappingProxyType
from typing import Any

from pydicom.valuerep import VR, PersonName

from airflow_pseudo.pseudonymisation.sources import PseudonymSource

PN_COMPONENT_LENGTH = 20
MAX_REPORTED_YEARS = 90
MAX_AGE_NUMBER = 999

_DA_PATTERN = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_DT_PATTERN = re.compile(
    r"^(?P<year>\d{4})(?P<month>\d{2})?(?P<day>\d{2})?(?P<rest>(?:\d{2}){0,3}(?:\.\d{1,6})?)"
    r"(?P<offset>[+-]\d{4})?$"
)
_AS_PATTERN = re.compile(r"^(\d{1,3})([DWMY])$")


@dataclass
class PseudonymContext:
    """What a strategy may know besides the value: the source and the dataset's patient.

    :param source: the pseudonym source (keyed or PyMedPhys).
    :param patient: the original PatientID, or StudyInstanceUID when there is none; it selects
        the per-patient date offset and age jitter, so every file of a patient moves together.
    """

    source: PseudonymSource
    patient: str = ""

    @cached_property
    def date_offset(self) -> datetime.timedelta:
        return datetime.timedelta(days=self.source.date_offset_days(self.patient))

    @cached_property
    def age_jitter(self) -> int:
        return self.source.age_jitter(self.patient)


Strategy = Callable[[Any, PseudonymContext], Any]
"""Turns one original value into its pseudonym; ``""`` means "empty the element"."""


def _hashed_text(max_length: int) -> Strategy:
    def strategy(value: Any, context: PseudonymContext) -> str:
        return context.source.text_digest(str(value))[:max_length]

    strategy.__doc__ = f"Base64 digest of the value, cut to {max_length} characters."
    return strategy


def pseudonymise_cs(value: Any, context: PseudonymContext) -> str:
    """Digest in the CS alphabet (upper case, digits, underscore), 15 characters as PyMedPhys."""
    digest = context.source.text_digest(str(value)).upper().replace("+", "").replace("/", "_")
    return digest[:15]


def pseudonymise_pn(value: Any, context: PseudonymContext) -> str:
    """Hash family, given and middle names of the alphabetic group, 20 characters each.

    Empty components stay empty, so an absent middle name does not become a constant shared by
    every patient. Prefixes, suffixes and the ideographic and phonetic groups are dropped: they
    identify, and a pseudonym needs none of them. The group stays within PN's 64 characters.
    """
    name = value if isinstance(value, PersonName) else PersonName(str(value))
    components = [name.family_name, name.given_name, name.middle_name]
    hashed = [
        context.source.text_digest(c).replace("+", "").replace("/", "")[:PN_COMPONENT_LENGTH]
        if c
        else ""
        for c in components
    ]
    return "^".join(hashed).rstrip("^")


def pseudonymise_uid(value: Any, context: PseudonymContext) -> str:
    """Map an instance UID to its pseudonymous UID."""
    return context.source.uid(str(value).strip("\x00 "))


def shift_da(value: Any, context: PseudonymContext) -> str:
    """Shift a date by the patient's offset; an unparseable date is emptied, never passed on."""
    match = _DA_PATTERN.match(str(value).strip())
    if not match:
        return ""
    try:
        date = datetime.date(*(int(part) for part in match.groups()))
        return (date + context.date_offset).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return ""


def shift_dt(value: Any, context: PseudonymContext) -> str:
    """Shift a date-time's date part, keeping its time, precision and UTC offset as given."""
    match = _DT_PATTERN.match(str(value).strip())
    if not match:
        return ""
    month, day = match["month"], match["day"]
    try:
        date = datetime.date(int(match["year"]), int(month or 1), int(day or 1))
        shifted = date + context.date_offset
    except (ValueError, OverflowError):
        return ""
    text = f"{shifted.year:04d}"
    if month:
        text += f"{shifted.month:02d}"
        if day:
            text += f"{shifted.day:02d}"
    return text + match["rest"] + (match["offset"] or "")


def keep_value(value: Any, context: PseudonymContext) -> Any:
    """Leave the value as it is (times of day: dates move by whole days)."""
    return value


def jitter_as(value: Any, context: PseudonymContext) -> str:
    """Jitter an age by the patient's fixed step; 90 years and over are all reported as 090Y.

    The step is the same for every file of a patient, so ages stay consistent; results are never
    negative and always valid AS. An unparseable age is emptied.
    """
    match = _AS_PATTERN.match(str(value).strip())
    if not match:
        return ""
    number, unit = int(match[1]), match[2]
    if unit == "Y" and number >= MAX_REPORTED_YEARS:
        return f"{MAX_REPORTED_YEARS:03d}Y"
    jittered = min(max(number + context.age_jitter, 0), MAX_AGE_NUMBER)
    if unit == "Y":
        jittered = min(jittered, MAX_REPORTED_YEARS)
    return f"{jittered:03d}{unit}"


def hash_ds_digits(value: Any, context: PseudonymContext) -> str:
    """PyMedPhys's digit hash of a decimal, keyed, never failing (only the pymedphys profile).

    Each digit is replaced from the keyed digest while sign, exponent and digit count are kept.
    Where PyMedPhys's integer had too few digits it raised; here it is zero-padded.
    """
    text = getattr(value, "original_string", None) or str(value)
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        return ""
    if not number.is_finite():
        return ""
    sign, digits, exponent = number.as_tuple()
    count = len(digits)
    hex_digest = base64.standard_b64decode(context.source.text_digest(text.strip()) + "=").hex()
    new_digits = str(int(hex_digest[:count], 16))[:count].zfill(count)
    assert isinstance(exponent, int)  # finite numbers have an integer exponent
    result = str(Decimal((sign, tuple(int(d) for d in new_digits), exponent)))
    return result if len(result) <= 16 else ""


def empty_value(value: Any, context: PseudonymContext) -> str:
    """No meaningful pseudonym exists for this VR: the element is emptied."""
    return ""


_TEXT_LIMITS: Mapping[VR, int] = {
    VR.AE: 16,
    VR.SH: 16,
    VR.LO: 64,
    VR.LT: 10240,
    VR.ST: 1024,
    VR.UT: 10240,
    VR.UC: 64,
}

pseudonymisation_dispatch: Mapping[str, Strategy] = MappingProxyType(
    {
        **{vr.value: _hashed_text(limit) for vr, limit in _TEXT_LIMITS.items()},
        VR.CS.value: pseudonymise_cs,
        VR.PN.value: pseudonymise_pn,
        VR.UI.value: pseudonymise_uid,
        VR.DA.value: shift_da,
        VR.DT.value: shift_dt,
        VR.TM.value: keep_value,
        VR.AS.value: jitter_as,
        VR.DS.value: hash_ds_digits,
        VR.US.value: keep_value,
        VR.OB.value: empty_value,
        VR.OW.value: empty_value,
        VR.OB_OW.value: empty_value,
        VR.UN.value: empty_value,
        VR.UR.value: empty_value,
    }
)
"""VR → strategy, the seed's dispatch: the default for every pseudonymised element."""
