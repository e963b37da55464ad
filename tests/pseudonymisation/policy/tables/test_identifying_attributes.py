"""Identifying attributes beyond Table E.1-1: derived by documented rules, kept up to date."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword

from airflow_pseudo.pseudonymisation.policy.tables import identifying_attributes
from airflow_pseudo.pseudonymisation.policy.tables.identifying_attributes import (
    IDENTIFYING_ATTRIBUTES,
    KINDS,
)

REPO_ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    path = REPO_ROOT / "tools" / "generate_identifying_attributes.py"
    spec = importlib.util.spec_from_file_location("generate_identifying_attributes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_attribute_of_the_installed_dictionary_slips_through(generator: ModuleType) -> None:
    derived = generator.derive()
    missing = {
        f"{keyword} ({tag:08X})": kind
        for tag, (keyword, kind) in derived.items()
        if tag not in IDENTIFYING_ATTRIBUTES
    }
    assert not missing, "run tools/generate_identifying_attributes.py and review the new rows"
    assert derived == dict(IDENTIFYING_ATTRIBUTES)


def test_shipped_module_equals_a_fresh_generation(generator: ModuleType) -> None:
    shipped = Path(identifying_attributes.__file__).read_text(encoding="utf-8")
    assert generator.render() == shipped


@pytest.mark.parametrize(
    ("keyword", "kind"),
    [
        ("PatientBirthDateInAlternativeCalendar", "date"),
        ("PatientDeathDateInAlternativeCalendar", "date"),
        ("ContactURI", "contact"),
        ("ContactDisplayName", "contact"),
        ("FilmSessionLabel", "identifier"),
        ("OwnerID", "identifier"),
        ("PatientSetupLabel", "identifier"),
        ("RetrieveURL", "location"),
        ("EvaluatorName", "person name"),
        ("AssigningFacilitySequence", "organisation"),
    ],
)
def test_known_blind_spots_of_table_e1_1_are_listed(keyword: str, kind: str) -> None:
    assert IDENTIFYING_ATTRIBUTES[tag_for_keyword(keyword)] == (keyword, kind)


def test_nothing_listed_twice_with_table_e1_1() -> None:
    rows = json.loads((REPO_ROOT / "tools/data/ps3.15-2024e-table-E.1-1.json").read_text())
    table_tags = {
        int(row["id"], 16) for row in rows if len(row["id"]) == 8 and "x" not in row["id"]
    }
    assert not table_tags & set(IDENTIFYING_ATTRIBUTES)
    # Examples the table already rules on are not repeated here.
    assert tag_for_keyword("PatientName") not in IDENTIFYING_ATTRIBUTES
    assert tag_for_keyword("InstitutionName") not in IDENTIFYING_ATTRIBUTES


def test_every_entry_is_a_dictionary_attribute_of_a_known_kind() -> None:
    for tag, (keyword, kind) in IDENTIFYING_ATTRIBUTES.items():
        assert kind in KINDS
        assert tag_for_keyword(keyword) == tag


def test_every_reviewed_exception_still_means_something(generator: ModuleType) -> None:
    for keyword, reason in generator.EXCLUDED.items():
        assert keyword in keyword_dict, keyword
        assert reason
        # An exclusion that no rule matches is stale.
        assert generator._rule_kind(dictionary_VR(keyword_dict[keyword]), keyword), keyword
    for keyword, (kind, reason) in generator.INCLUDED.items():
        assert keyword in keyword_dict and kind in KINDS and reason, keyword
