"""Attributes of pydicom's dictionary that identify someone but are not in PS3.15 Table E.1-1.

A minimal subset of the attributes the issue names; the generated table
(tools/generate_identifying_attributes.py) replaces it. Each entry: tag -> (keyword, kind).
"""

from __future__ import annotations

from collections.abc import Mapping

IDENTIFYING_ATTRIBUTES: Mapping[int, tuple[str, str]] = {
    0x00100033: ("PatientBirthDateInAlternativeCalendar", "date"),
    0x00100034: ("PatientDeathDateInAlternativeCalendar", "date"),
    0x0074100A: ("ContactURI", "contact"),
    0x0074100C: ("ContactDisplayName", "person name"),
    0x20000050: ("FilmSessionLabel", "identifier"),
    0x21000160: ("OwnerID", "identifier"),
    0x300A0183: ("PatientSetupLabel", "identifier"),
}
