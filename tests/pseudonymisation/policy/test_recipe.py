"""Tests for the recipe: one parsed description of a job, built by one function."""

from __future__ import annotations

import pickle

import pytest

from airflow_pseudo.pseudonymisation import (
    ConfigurationError,
    PseudonymKey,
    Recipe,
    Settings,
    build_recipe,
)
from airflow_pseudo.pseudonymisation.policy.profile import Option
from airflow_pseudo.pseudonymisation.policy.recipe import parse_date_shift_days

KEY = PseudonymKey(b"recipe test key, thirty-two bytes")


@pytest.mark.parametrize(
    "value", [(-10, -1), [-10, -1], "-10,-1", "-10..-1", " -10 , -1 ", ("-10", "-1")]
)
def test_every_form_of_the_date_range_parses_the_same(value: object):
    assert parse_date_shift_days(value) == (-10, -1)


@pytest.mark.parametrize("value", ["-10", "a,b", (1, 2, 3), (-1, -10), 5])
def test_a_bad_date_range_is_a_configuration_error(value: object):
    with pytest.raises(ConfigurationError, match="date_shift_days"):
        parse_date_shift_days(value)


def test_settings_is_the_recipe():
    """Code written against ``Settings`` keeps working: it is the same class."""
    assert Settings is Recipe
    assert isinstance(Settings(key=KEY), Recipe)


def test_build_recipe_ignores_unset_values_and_parses_everything_once():
    recipe = build_recipe(
        key=KEY,
        profile=None,
        date_shift_min_days="-20",
        date_shift_max_days=-2,
        keep_keywords="PatientSex, StudyDate",
        options=["Clean Descriptors"],
    )
    assert recipe.profile == "default" and recipe.date_shift_days == (-20, -2)
    assert recipe.keep_keywords == ("PatientSex", "StudyDate")
    assert Option.CLEAN_DESCRIPTORS in recipe.resolved_profile.options
    assert recipe.pseudonymiser.record_fields()["method_codes"] == [
        "113100", "113105", "113107", "113108"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"colour": "blue"}, "unknown setting"),
        ({"date_shift_min_days": -3}, "set both"),
        ({"profile": "nonesuch"}, "profile must be one of"),
        ({"options": ["Clean Pixel Data"]}, "cannot be honoured"),
        ({"options": ["Make It Anonymous"]}, "unknown option"),
        ({"profile": "pymedphys", "options": ["Retain UIDs"]}, "takes no Annex E options"),
    ],
)
def test_build_recipe_refuses_bad_values(values: dict[str, object], message: str):
    with pytest.raises(ConfigurationError, match=message):
        build_recipe(key=KEY, **values)


def test_a_recipe_survives_pickling_for_worker_processes():
    recipe = build_recipe(key=KEY, profile="research", date_shift_days="-9,-3")
    copy = pickle.loads(pickle.dumps(recipe))
    assert copy == recipe
    assert copy.resolved_profile.digest == recipe.resolved_profile.digest
