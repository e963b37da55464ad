"""The identifying values of one instance, and text cleaned of them (minimal version).

Collects person names (and their components), identifiers, accession numbers, dates and instance
UIDs from the dataset's top level; :meth:`InstanceIdentifiers.clean_text` removes each from a text.
The validator's complete version replaces this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

_TEXT_KEYWORDS = (
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyID",
    "IssuerOfPatientID",
    "InstitutionName",
    "StationName",
)
_MIN_LENGTH = 3  # shorter fragments (initials) would erase ordinary words


@dataclass(frozen=True)
class InstanceIdentifiers:
    """Values that identify the patient or others in one instance (never logged)."""

    values: tuple[str, ...] = ()
    source_path: str | None = field(default=None, compare=False)

    @classmethod
    def from_dataset(cls, dataset: Dataset, source_path: str | None = None) -> InstanceIdentifiers:
        """Collect the identifying values of ``dataset``'s top level."""
        found: set[str] = set()
        for element in dataset:
            if element.VR == "PN" and element.value:
                for name in _values(element.value):
                    found.update(_name_parts(PersonName(str(name))))
            elif element.VR in ("DA", "DT") and element.value:
                for value in _values(element.value):
                    found.update(_date_forms(str(value)))
            elif element.VR == "UI" and element.value:
                found.update(str(v) for v in _values(element.value))
            elif element.keyword in _TEXT_KEYWORDS and element.value:
                found.update(str(v).strip() for v in _values(element.value))
        kept = sorted((v for v in found if len(v) >= _MIN_LENGTH), key=len, reverse=True)
        return cls(tuple(kept), source_path)

    def clean_text(self, text: str) -> str:
        """Return ``text`` with every identifying value of the instance removed."""
        if not self.values or not text:
            return text
        pattern = re.compile("|".join(re.escape(v) for v in self.values), re.IGNORECASE)
        return pattern.sub("", text)


def _values(value: object) -> list[object]:
    if isinstance(value, list | tuple | MultiValue):
        return list(value)
    return [value]


def _name_parts(name: PersonName) -> set[str]:
    parts = {str(name).strip("^ ")}
    for component in (name.family_name, name.given_name, name.middle_name):
        parts.update(p for p in re.split(r"[\s^,]+", component) if p)
    return parts


def _date_forms(value: str) -> set[str]:
    match = re.match(r"(\d{4})(\d{2})(\d{2})", value)
    if not match:
        return {value}
    year, month, day = match.groups()
    return {value, f"{year}-{month}-{day}", f"{day}/{month}/{year}", f"{day}.{month}.{year}",
            f"{month}/{day}/{year}", f"{year}/{month}/{day}"}  # fmt: skip
