"""Tests for the identifiers of an instance: what is derived, and where the matcher finds it."""

from __future__ import annotations

from pathlib import PurePath

import pytest
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation import identifiers as identifiers_module
from airflow_pseudo.pseudonymisation.identifiers import (
    Identifier,
    InstanceIdentifiers,
    _vocabulary,
    encodings_for,
)
from airflow_pseudo.testing import FakePatient, make_instance

PATIENT = FakePatient.for_number(1)


@pytest.fixture
def ct() -> Dataset:
    return make_instance("ct", patient=1)


@pytest.fixture
def identifiers(ct: Dataset) -> InstanceIdentifiers:
    return InstanceIdentifiers.from_dataset(ct, "/archive/Testperson_Alice_scan/pt001.dcm")


def _kinds(identifiers: InstanceIdentifiers, value: str) -> set[str]:
    return {i.kind for i in identifiers.identifiers if i.value == value}


def _found(identifiers: InstanceIdentifiers, text: str) -> list[tuple[str, str, bool]]:
    return [(f.kind, text[f.start : f.end], f.ambiguous) for f in identifiers.find_text(text)]


def test_every_kind_is_derived_from_the_original(ct: Dataset, identifiers: InstanceIdentifiers):
    """Names and components, IDs, dates, addresses, phones, institutions, UIDs and the path."""
    assert _kinds(identifiers, "Testperson") == {"name"}
    assert _kinds(identifiers, "Alice") == {"name"}
    assert _kinds(identifiers, PATIENT.patient_id) == {"id"}
    assert _kinds(identifiers, PATIENT.other_patient_ids[0]) == {"id"}
    assert _kinds(identifiers, ct.AccessionNumber) == {"id"}
    assert _kinds(identifiers, ct.StudyID) == {"id"}
    birth = PATIENT.birth_date
    assert _kinds(identifiers, birth) == {"date"}
    assert _kinds(identifiers, f"{birth[6:]}.{birth[4:6]}.{birth[:4]}") == {"date"}
    assert _kinds(identifiers, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}") == {"date"}
    assert _kinds(identifiers, PATIENT.address) == {"address"}
    assert _kinds(identifiers, PATIENT.phone) == {"phone"}
    assert _kinds(identifiers, PATIENT.institution) == {"institution"}
    assert _kinds(identifiers, ct.StudyInstanceUID) == {"uid"}
    assert _kinds(identifiers, "Testperson_Alice_scan") == {"path"}
    # A name two sequence levels down.
    assert _kinds(identifiers, PATIENT.scheduled_physician.split("^")[0]) == {"name"}


def test_registered_uids_and_short_path_parts_are_not_identifiers(
    ct: Dataset, identifiers: InstanceIdentifiers
):
    """SOP classes and transfer syntaxes are the standard's; ``/archive`` names no one."""
    values = {i.value for i in identifiers.identifiers}
    assert ct.SOPClassUID not in values
    assert ct.file_meta.TransferSyntaxUID not in values
    assert "pt001" not in values


def test_names_match_case_insensitively_on_word_boundaries(identifiers: InstanceIdentifiers):
    assert ("name", "TESTPERSON", False) in _found(identifiers, "seen by TESTPERSON today")
    assert _found(identifiers, "Testpersonal notes") == []
    assert _found(identifiers, "TESTPERSON_MEC") == []  # one word, as in coded values
    assert [k for k, _, _ in _found(identifiers, "for alice testperson")] == ["name", "name"]


def test_a_short_id_matches_only_a_whole_token():
    """A 4-digit ID is found as a value or word, never inside a UID or a longer number."""
    identifiers = InstanceIdentifiers([Identifier("id", "4711")])
    assert _found(identifiers, "patient 4711.") == [("id", "4711", True)]
    assert _found(identifiers, "4711") == [("id", "4711", True)]
    assert _found(identifiers, "2.25.1234711") == []
    assert _found(identifiers, "2.25.4711.3") == []
    assert _found(identifiers, "1.2.4711") == []
    assert _found(identifiers, "147110") == []
    assert _found(identifiers, "A4711") == []


def test_long_ids_and_distinct_names_are_unambiguous_short_and_common_ones_are_not():
    identifiers = InstanceIdentifiers.from_dataset(_patient("Head^Li", "1234567"))
    assert _found(identifiers, "id 1234567") == [("id", "1234567", False)]
    assert _found(identifiers, "Head CT") == [("name", "Head", True)]
    assert _found(identifiers, "Li") == [("name", "Li", True)]
    # A name with an ambiguous component is also searched for whole, in the usual orders.
    assert ("name", "Li Head", False) in _found(identifiers, "Li Head")
    assert ("name", "Head, Li", False) in _found(identifiers, "Head, Li")


def test_dates_match_in_common_forms_but_not_inside_numbers():
    identifiers = InstanceIdentifiers.from_dataset(_patient("Doe^Jane", "X1", "19700101"))
    for text in ("19700101", "1970-01-01", "01/01/1970", "01.01.1970", "born 01.01.1970."):
        assert [kind for kind, _, _ in _found(identifiers, text)] == ["date"], text
    assert _found(identifiers, "2.25.119700101") == []


def test_find_searches_bytes_in_the_file_encodings():
    """A Latin-1 name is found in Latin-1 bytes, with offsets into the bytes."""
    identifiers = InstanceIdentifiers.from_dataset(_patient("Müller^Jürgen", "X1"))
    data = b"\x00\x10LO\x0c\x00" + "MÜLLER Jürgen".encode("latin-1")
    encodings = encodings_for("ISO_IR 100")
    assert encodings == ("ascii", "latin_1")
    findings = list(identifiers.find(data, encodings))
    assert {data[f.start : f.end].decode("latin-1").lower() for f in findings} >= {"müller jürgen"}
    assert list(identifiers.find(data)) == []  # in ASCII the umlauts cannot be matched


def test_clean_text_removes_every_identifying_value(identifiers: InstanceIdentifiers):
    cleaned = identifiers.clean_text(
        f"Alice Testperson ({PATIENT.patient_id}), born {PATIENT.birth_date}, "
        f"tel {PATIENT.phone}: no change since last study"
    )
    assert "Testperson" not in cleaned
    assert "Alice" not in cleaned
    assert PATIENT.patient_id not in cleaned
    assert PATIENT.birth_date not in cleaned
    assert PATIENT.phone not in cleaned
    assert cleaned.endswith("no change since last study")
    assert identifiers.clean_text("no identifiers here") == "no identifiers here"


def _patient(name: str, patient_id: str, birth_date: str = "") -> Dataset:
    dataset = Dataset()
    dataset.PatientName = name
    dataset.PatientID = patient_id
    if birth_date:
        dataset.PatientBirthDate = birth_date
    return dataset


def test_a_value_of_the_patient_and_of_the_instance_is_found_once_as_the_most_specific_kind():
    """A folder named after the PatientID: one finding, an ID, as if one automaton held both."""
    identifiers = InstanceIdentifiers(
        [Identifier("id", "12345678"), Identifier("path", "12345678")]
    )
    assert _found(identifiers, "folder 12345678 here") == [("id", "12345678", False)]
    other = InstanceIdentifiers([Identifier("id", "12345678"), Identifier("uid", "1.2.3.4")])
    assert _found(other, "12345678 1.2.3.4") == [
        ("id", "12345678", False),
        ("uid", "1.2.3.4", False),
    ]


def test_an_instances_few_own_forms_are_found_as_an_automaton_finds_them(monkeypatch):
    """Found one by one, the instance's UIDs and path parts come in the automaton's order:
    by end, the longer of two ending together first, overlapping ones and repeats included."""
    identifiers = [
        Identifier("uid", "1.2.3.4"),
        Identifier("path", "xx-1.2.3.4"),
        Identifier("path", "alpha-beta"),
        Identifier("path", "beta-gamma"),
        Identifier("uid", "7.7.7"),
        Identifier("name", "Testperson"),
        Identifier("id", "12345678"),
    ]
    text = "xx-1.2.3.4 alpha-beta-gamma 7.7.7/7.7.7 Testperson 12345678 1.2.3.4.5"
    alone = list(InstanceIdentifiers(identifiers).find_text(text))
    monkeypatch.setattr(identifiers_module, "MAX_FORMS_FOUND_ALONE", 0)
    assert list(InstanceIdentifiers(identifiers).find_text(text)) == alone
    assert [text[f.start : f.end] for f in alone] == [
        "xx-1.2.3.4",
        "1.2.3.4",
        "alpha-beta",
        "beta-gamma",
        "7.7.7",
        "7.7.7",
        "Testperson",
        "12345678",
    ]


def test_path_parts_are_those_pathlib_gives():
    """The folders' parts are remembered apart from the file's name; the parts are the same."""
    for path in (
        "/archive/Testperson_Alice/study/pt001-im0001.dcm",
        "relative/Testperson_Alice/scan.tar.gz",
        "Testperson_Alice.dcm",
        "/archive/Testperson_Alice/",
        "/archive/Testperson_Alice/.",
        "/archive/Testperson_Alice/..",
        "//server/Testperson_Alice/.hidden_file",
        "",
    ):
        pure = PurePath(path)
        expected = [p.strip("/\\") for p in (*pure.parts, pure.stem)]
        expected = [p for p in expected if len(p) >= 6 and p.lower() not in _vocabulary()]
        found = InstanceIdentifiers.from_values([], path).identifiers
        assert [i.value for i in found] == list(dict.fromkeys(expected)), path
