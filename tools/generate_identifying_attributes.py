"""Regenerate ``airflow_pseudo/pseudonymisation/policy/tables/identifying_attributes.py``.

PS3.15 Table E.1-1 lists the attributes the Basic Profile acts on, but the data dictionary keeps
growing and some attributes that name, contact or locate a person or an organisation are not in
it (dates of birth in an alternative calendar, contact URIs, film session labels, owner IDs...).
This script lists them, so that the policy gives each one a rule.

Derivation, over every attribute of pydicom's installed data dictionary
(``pydicom.datadict.DicomDictionary``, retired ones included, since old files carry them):

1. Attributes that Table E.1-1 (``tools/data/ps3.15-2024e-table-E.1-1.json``, masked rows such
   as ``50xxxxxx`` included) already lists are left out: the table gives them their rule.
2. Command elements (group 0000) are left out: they are never stored in a file.
3. An attribute is kept when it matches the first of ``RULES`` that applies, in order: its VR
   (PN is a person's name; UR locates a resource and may carry identifiers in its query; AE
   names a site's application entity), else a regular expression over its keyword. The rule
   gives its kind: "person name", "contact", "location", "organisation", "identifier", "date".
4. ``EXCLUDED`` removes matches that identify no one (a coded role, an arrangement called
   "organization", a public coding scheme's URL), each with its reason; ``INCLUDED`` adds
   attributes no rule can recognise by name (labels that sites fill with a patient's name),
   each with its kind and reason.

``tests/pseudonymisation/policy/tables/test_identifying_attributes.py`` re-runs this derivation
over the installed dictionary: an attribute added to pydicom that matches a rule but is missing
from the shipped table fails the test until the table is regenerated and reviewed.
Run: ``.venv/bin/python tools/generate_identifying_attributes.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydicom.datadict import DicomDictionary

HERE = Path(__file__).parent
TABLE_E1_1 = HERE / "data" / "ps3.15-2024e-table-E.1-1.json"
TARGET = (
    HERE.parent
    / "airflow_pseudo"
    / "pseudonymisation"
    / "policy"
    / "tables"
    / "identifying_attributes.py"
)
KINDS = ("person name", "contact", "location", "organisation", "identifier", "date")

# (VR or None, keyword pattern or None, kind, why), first match wins.
RULES: tuple[tuple[str | None, str | None, str, str], ...] = (
    ("PN", None, "person name", "a person name VR names a person"),
    (None, r"Telephone|Telecom|ElectronicMail|EMail|Email", "contact", "reaches a person"),
    (None, r"^Contact(?!Method)", "contact", "a contact's name or address"),
    ("UR", None, "location", "a URI locates a site's resource and may carry identifiers"),
    (None, r"Address", "location", "a postal or network address"),
    ("AE", None, "location", "an application entity title names a site's device"),
    (None, r"Birth|Death", "date", "a person's birth or death"),
    (
        None,
        r"Institution|Department|Organi[sz]ation|Facility|Agency|AssigningAuthority"
        r"|IssuerOf|Community|Namespace",
        "organisation",
        "names or identifies an organisation",
    ),
    (
        None,
        r"Owner|Author(?!iz)|Observer|Physician|Person|PatientGroup|GroupOfPatients",
        "identifier",
        "identifies a person or group of persons",
    ),
)

# Keyword -> why it identifies no one although a rule matches it.
EXCLUDED: dict[str, str] = {
    "CodingSchemeURL": "the public URL of a coding scheme",
    "URNCodeValue": "a code value of a public coding scheme",
    "RelativeURIReferenceWithinEncapsulatedDocument": "a reference inside the document itself",
    "CodingSchemeResponsibleOrganization": "the public body that maintains a coding scheme",
    "DimensionOrganizationSequence": "an arrangement of frames, not an organisation",
    "DimensionOrganizationType": "an arrangement of frames, not an organisation",
    "DimensionOrganizationUID": "an arrangement of frames (a UID, remapped by VR)",
    "PixelComponentOrganization": "an arrangement of pixel components",
    "OrganizationalRoleCodeSequence": "a coded role, names no one",
    "ResponsiblePersonRole": "a coded relationship, names no one",
    "ObserverType": "a coded category of observer",
    "OOIOwnerType": "a coded category of owner",
    "OOIOwnerCreationTime": "a time (dates and times have their own rules)",
    "RTPhysicianIntentSequence": "the clinical intent of a treatment, not a physician",
    "RTPhysicianIntentPredecessorSequence": "the clinical intent of a treatment",
    "RTPhysicianIntentIndex": "the index of a clinical intent",
    "ReferencedRTPhysicianIntentIndex": "the index of a clinical intent",
    "RTPhysicianIntentInputInstanceSequence": "instances used by a clinical intent",
    "ReferencedRTPhysicianIntentSequence": "a reference to a clinical intent",
    "RTPhysicianIntentNarrative": "free text, cleaned by the text rules",
    "ObserverContextFlagTrial": "a flag",
    "ApplicableSafetyStandardAgency": "the public body that issues a safety standard",
}

# Keyword -> (kind, why) for attributes no rule recognises by their name.
INCLUDED: dict[str, tuple[str, str]] = {
    "FilmSessionLabel": ("identifier", "print labels are commonly the patient's name or ID"),
    "PatientSetupLabel": ("identifier", "RT setup labels commonly carry the patient's name"),
    "PrinterName": ("location", "names a site's printer, as Station Name names a device"),
    "HangingProtocolUserGroupName": ("organisation", "names a site's group of users"),
    "RetrieveLocationUID": ("location", "identifies the site that holds the instances"),
    "HomeCommunityID": ("organisation", "identifies an organisation's XDS community"),
    "LocalNamespaceEntityID": ("organisation", "identifies the issuer of local identifiers"),
}


def _table_e1_1_patterns() -> list[re.Pattern[str]]:
    rows = json.loads(TABLE_E1_1.read_text(encoding="utf-8"))
    return [
        re.compile(row["id"].lower().replace("x", "[0-9a-f]"))
        for row in rows
        if not row["id"].startswith("gggg")
    ]


def _rule_kind(vr: str, keyword: str) -> str | None:
    for rule_vr, pattern, kind, _why in RULES:
        if rule_vr in (None, vr) and (pattern is None or re.search(pattern, keyword)):
            return kind
    return None


def derive() -> dict[int, tuple[str, str]]:
    """Return tag -> (keyword, kind) for the installed pydicom dictionary, by the rules above."""
    in_table_e1_1 = _table_e1_1_patterns()
    found: dict[int, tuple[str, str]] = {}
    for tag, (vr, _vm, _name, _retired, keyword) in sorted(DicomDictionary.items()):
        if tag >> 16 == 0 or not keyword or keyword in EXCLUDED:
            continue
        if any(pattern.fullmatch(f"{tag:08x}") for pattern in in_table_e1_1):
            continue
        kind = INCLUDED[keyword][0] if keyword in INCLUDED else _rule_kind(vr, keyword)
        if kind is not None:
            found[tag] = (keyword, kind)
    return found


def render() -> str:
    """Return the text of the generated module."""
    import pydicom

    lines = [
        '"""Attributes that name, contact or locate a person or organisation, beyond Table E.1-1.',
        "",
        "Generated by tools/generate_identifying_attributes.py from pydicom"
        f" {pydicom.__version__}'s data",
        "dictionary; do not edit. The generator's docstring says how the list is derived.",
        '"""',
        "",
        "from collections.abc import Mapping",
        "",
        "KINDS = (" + ", ".join(f'"{kind}"' for kind in KINDS) + ")",
        "",
        "# Tag -> (keyword, kind).",
        "IDENTIFYING_ATTRIBUTES: Mapping[int, tuple[str, str]] = {",
        *(
            f'    0x{tag:08X}: ("{keyword}", "{kind}"),'
            for tag, (keyword, kind) in derive().items()
        ),
        "}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
