"""Tests for the per-VR strategies: every output valid for its VR, whatever the input."""

from __future__ import annotations

import datetime
import warnings
from decimal import Decimal

import pytest
from pydicom import config as pydicom_config
from pydicom.valuerep import PersonName, validate_value

from airflow_pseudo.pseudonymisation.keys import PseudonymKey
from airflow_pseudo.pseudonymisation.sources import KeyedSource, PyMedPhysSource
from airflow_pseudo.pseudonymisation.strategies import (
    PN_COMPONENT_LENGTH,
    PseudonymContext,
    hash_ds_digits,
    jitter_as,
    pseudonymisation_dispatch,
    pseudonymise_cs,
    pseudonymise_pn,
    shift_da,
    shift_dt,
)


def valid(vr: str, value: object) -> bool:
    """Whether pydicom accepts ``value`` for ``vr`` without a warning."""
    try:
        validate_value(vr, value, pydicom_config.RAISE)
    except ValueError:
        return False
    return True


@pytest.fixture
def context(key: PseudonymKey) -> PseudonymContext:
    """A keyed context for patient MRN000001."""
    return PseudonymContext(KeyedSource(key), "MRN000001")


def with_jitter(context: PseudonymContext, jitter: int) -> PseudonymContext:
    """The same context with a forced age jitter."""
    forced = PseudonymContext(context.source, context.patient)
    forced.__dict__["age_jitter"] = jitter
    return forced


class TestText:
    @pytest.mark.parametrize(
        ("vr", "limit"), [("AE", 16), ("SH", 16), ("LO", 64), ("LT", 10240), ("ST", 1024)]
    )
    def test_text_within_vr_limit_and_valid(self, context: PseudonymContext, vr: str, limit: int):
        """Text VRs give a deterministic digest no longer than the VR allows, valid for the VR."""
        strategy = pseudonymisation_dispatch[vr]
        out = strategy("JFK IMAGING CENTER", context)
        assert out == strategy("JFK IMAGING CENTER", context)
        assert 0 < len(out) <= limit
        assert out != "JFK IMAGING CENTER"
        if vr != "AE":  # AE may contain '+' and '/' (PyMedPhys compatible): checked below
            assert valid(vr, out)

    def test_cs_alphabet_and_length(self, context: PseudonymContext):
        """CS output is at most 15 of A-Z, 0-9 and underscore."""
        for value in ["O", "F", "ROUTINE", "Müller"]:
            out = pseudonymise_cs(value, context)
            assert 0 < len(out) <= 15
            assert valid("CS", out), out

    def test_non_ascii_text_hashed(self, context: PseudonymContext):
        """Non-ASCII values are hashed, not rejected (PyMedPhys defect 8: ASCII only)."""
        out = pseudonymisation_dispatch["LO"]("Klinikum Großstadt", context)
        assert out.isascii() and len(out) == 43

    def test_distinct_inputs_distinct_outputs(self, context: PseudonymContext):
        """Different values give different pseudonyms (no collisions over a small sample)."""
        lo = pseudonymisation_dispatch["LO"]
        assert len({lo(f"MRN{i:06d}", context) for i in range(500)}) == 500


class TestPersonName:
    def test_components_hashed_and_within_64(self, context: PseudonymContext):
        """Family, given and middle names are hashed to 20 chars each; the group stays <= 64."""
        out = pseudonymise_pn("Testperson^Alice^Q^Dr^PhD", context)
        parts = out.split("^")
        assert len(parts) == 3
        assert all(len(p) == PN_COMPONENT_LENGTH for p in parts)
        assert len(out) <= 64
        assert valid("PN", out)
        assert "Testperson" not in out and "Dr" not in parts and "PhD" not in parts

    def test_long_name_stays_within_64(self, context: PseudonymContext):
        """PyMedPhys's 127-character output (defect 7) cannot happen: 3 x 20 + 2 carets."""
        out = pseudonymise_pn("CompressedSamples^CT1", context)
        assert len(out) <= 64
        assert valid("PN", out)

    def test_empty_components_stay_empty(self, context: PseudonymContext):
        """A missing given or middle name stays empty instead of becoming a shared constant."""
        assert "^" not in pseudonymise_pn("Doe", context)
        out = pseudonymise_pn("Doe^^Middle", context)
        family, given, middle = out.split("^")
        assert family and middle and given == ""

    def test_same_component_same_hash(self, context: PseudonymContext):
        """Components are hashed independently: a shared family name shares its pseudonym."""
        a = pseudonymise_pn("Doe^John", context).split("^")
        b = pseudonymise_pn("Doe^Jane", context).split("^")
        assert a[0] == b[0] and a[1] != b[1]

    def test_ideographic_and_phonetic_groups_dropped(self, context: PseudonymContext):
        """Only the alphabetic group survives, hashed; other groups are dropped."""
        value = "Yamada^Tarou=山田^太郎=やまだ^たろう"
        out = pseudonymise_pn(value, context)
        assert "=" not in out and out.isascii()
        assert out == pseudonymise_pn("Yamada^Tarou", context)
        assert pseudonymise_pn(PersonName(value), context) == out

    def test_pn_alphabet_excludes_plus_and_slash(self, context: PseudonymContext):
        """Components contain no '+' or '/' over many names."""
        outs = [pseudonymise_pn(f"Name{i}^Given{i}", context) for i in range(200)]
        assert not any("+" in o or "/" in o for o in outs)


class TestAge:
    @pytest.mark.parametrize("jitter", [-2, -1, 0, 1, 2])
    @pytest.mark.parametrize("unit", ["D", "W", "M", "Y"])
    def test_always_valid_never_negative(self, context: PseudonymContext, jitter: int, unit: str):
        """Every conformant age in every unit gives a valid, non-negative AS (defect 5)."""
        forced = with_jitter(context, jitter)
        for number in range(0, 1000):
            out = jitter_as(f"{number:03d}{unit}", forced)
            assert len(out) == 4 and out[:3].isdigit() and out[3] == unit, out
            assert valid("AS", out)

    @pytest.mark.parametrize("jitter", [-2, -1, 0, 1, 2])
    def test_ninety_and_over_reported_as_090y(self, context: PseudonymContext, jitter: int):
        """Ages of 90 years and over all become 090Y, and no jittered age exceeds 90Y."""
        forced = with_jitter(context, jitter)
        for number in range(90, 1000):
            assert jitter_as(f"{number:03d}Y", forced) == "090Y"
        assert all(int(jitter_as(f"{n:03d}Y", forced)[:3]) <= 90 for n in range(90))

    def test_zero_years_not_negative(self, context: PseudonymContext):
        """000Y with a negative jitter stays 000Y (PyMedPhys gave -01M/-02M, defect 5)."""
        assert jitter_as("000Y", with_jitter(context, -2)) == "000Y"

    def test_small_day_ages_do_not_crash(self, context: PseudonymContext):
        """D ages of 10 or less work (PyMedPhys raised UnboundLocalError, defect 5)."""
        for number in range(11):
            assert valid("AS", jitter_as(f"{number:03d}D", context))

    def test_deterministic_per_patient(self, key: PseudonymKey):
        """The same patient's age jitters the same way on every call and in every file."""
        source = KeyedSource(key)
        outs = {jitter_as("045Y", PseudonymContext(source, "MRN000001")) for _ in range(10)}
        assert len(outs) == 1
        assert abs(int(outs.pop()[:3]) - 45) <= 2

    def test_jitter_differs_between_patients(self, key: PseudonymKey):
        """Different patients get different jitters (over a sample)."""
        source = KeyedSource(key)
        outs = {jitter_as("045Y", PseudonymContext(source, f"P{i}")) for i in range(50)}
        assert len(outs) > 1

    @pytest.mark.parametrize("value", ["45Y", "1Y"])
    def test_short_age_normalised(self, context: PseudonymContext, value: str):
        """A non-padded age such as 45Y becomes a valid 4-character AS (PyMedPhys raised)."""
        assert valid("AS", jitter_as(value, context))

    @pytest.mark.parametrize("value", ["045X", "Y045", "-01M", "abcd", "04 5Y", "045", "1234Y", ""])
    def test_unparseable_age_is_empty(self, context: PseudonymContext, value: str):
        """An age that is not n digits and a unit is emptied."""
        assert jitter_as(value, context) == ""


class TestDates:
    def test_da_shift_by_patient_offset(self, context: PseudonymContext):
        """DA moves by exactly the patient's offset."""
        days = context.source.date_offset_days(context.patient)
        expected = (datetime.date(2022, 3, 4) + datetime.timedelta(days=days)).strftime("%Y%m%d")
        assert shift_da("20220304", context) == expected
        assert valid("DA", expected)

    def test_da_intervals_preserved(self, context: PseudonymContext):
        """Two dates of one patient keep their interval (birth date to study date)."""
        birth = datetime.datetime.strptime(shift_da("19761222", context), "%Y%m%d")
        study = datetime.datetime.strptime(shift_da("20220304", context), "%Y%m%d")
        assert (study - birth).days == (
            datetime.date(2022, 3, 4) - datetime.date(1976, 12, 22)
        ).days

    def test_da_accepts_old_style_dots(self, context: PseudonymContext):
        """The ACR-NEMA form YYYY.MM.DD is shifted like YYYYMMDD."""
        assert shift_da("2004.01.19", context) == shift_da("20040119", context)

    @pytest.mark.parametrize("value", ["2004", "200401", "20041301", "20040230", "garbage", "0"])
    def test_unparseable_da_emptied(self, context: PseudonymContext, value: str):
        """A date that is not a real calendar day is emptied, not passed through (defect 4)."""
        assert shift_da(value, context) == ""

    def test_da_overflow_emptied(self, key: PseudonymKey):
        """A shift that leaves the calendar empties the date instead of crashing."""
        context = PseudonymContext(KeyedSource(key, date_shift_days=(-3650, -3650)), "P")
        assert shift_da("00010101", context) == ""

    @pytest.mark.parametrize(
        "value",
        [
            "2016",
            "201611",
            "20161117",
            "2016111709",
            "201611170943",
            "20161117094353",
            "20161117094353.1",
            "20161117094353.123456",
            "20161117094353+1100",
            "20161117094353.123-0500",
            "2016+0000",
        ],
    )
    def test_dt_keeps_time_precision_and_offset(self, context: PseudonymContext, value: str):
        """DT shifts the date and keeps its time, precision and UTC offset (defect 4)."""
        out = shift_dt(value, context)
        assert len(out) == len(value)
        date_len = min(8, len(value.split("+")[0].split("-")[0]))
        assert out[date_len:] == value[date_len:]
        assert out[:date_len] != value[:date_len]
        assert valid("DT", out)

    def test_dt_date_matches_da(self, context: PseudonymContext):
        """The date part of a DT shifts exactly like the same DA."""
        assert shift_dt("20161117094353+1100", context)[:8] == shift_da("20161117", context)

    @pytest.mark.parametrize("value", ["20161317", "2016-11-17T09:43", "garbage", "20161117+11"])
    def test_unparseable_dt_emptied(self, context: PseudonymContext, value: str):
        """A DT that does not parse is emptied."""
        assert shift_dt(value, context) == ""

    def test_tm_kept(self, context: PseudonymContext):
        """Times of day are kept: dates move by whole days."""
        assert pseudonymisation_dispatch["TM"]("072730", context) == "072730"


class TestDecimal:
    def test_never_crashes_on_sweep(self, key: PseudonymKey):
        """0.0 to 199.9 all hash to valid DS, incl. '1.0' (PyMedPhys ValueError, defect 6)."""
        for source in (KeyedSource(key), PyMedPhysSource("pepper", 1)):
            context = PseudonymContext(source, "P")
            for tenths in range(2000):
                value = f"{tenths / 10:.1f}"
                out = hash_ds_digits(value, context)
                assert valid("DS", out), (value, out)
                assert Decimal(out).as_tuple().exponent == Decimal(value).as_tuple().exponent

    @pytest.mark.parametrize(
        "value", ["1.0", "-1.5e3", "0.000000", "123456", "73.2", "-0", "1E+10", "  7.5 "]
    )
    def test_sign_and_exponent_kept(self, context: PseudonymContext, value: str):
        """The digit hash keeps sign, exponent and digit count, and is valid DS."""
        out = hash_ds_digits(value, context)
        before, after = Decimal(value.strip()).as_tuple(), Decimal(out).as_tuple()
        assert (after.sign, after.exponent, len(after.digits)) == (
            before.sign,
            before.exponent,
            len(before.digits),
        )
        assert valid("DS", out)

    @pytest.mark.parametrize("value", ["abc", "NaN", "Infinity", ""])
    def test_non_numbers_emptied(self, context: PseudonymContext, value: str):
        """Values that are not finite decimals are emptied."""
        assert hash_ds_digits(value, context) == ""

    def test_keyed_digits_depend_on_key(self, key: PseudonymKey, other_key: PseudonymKey):
        """Keyed DS hashes differ by key (PyMedPhys's had no pepper, defect 2)."""
        values = [f"{i}.{i % 10}" for i in range(50, 90)]
        a = [hash_ds_digits(v, PseudonymContext(KeyedSource(key), "P")) for v in values]
        b = [hash_ds_digits(v, PseudonymContext(KeyedSource(other_key), "P")) for v in values]
        assert a != b


class TestDispatch:
    def test_dispatch_is_read_only(self):
        """The seed's dispatch table cannot be changed by accident."""
        with pytest.raises(TypeError):
            pseudonymisation_dispatch["PN"] = lambda v, c: v  # type: ignore[index]

    def test_has_the_seed_vrs(self):
        """Every VR of PyMedPhys's 18-key dispatch has a strategy here."""
        seed_vrs = {"AE", "AS", "CS", "DA", "DS", "DT", "LO", "LT", "OB", "OB or OW", "OW", "PN"}
        seed_vrs |= {"SH", "ST", "TM", "UI", "US"}
        assert seed_vrs <= set(pseudonymisation_dispatch)

    @pytest.mark.parametrize("vr", ["OB", "OW", "OB or OW", "UN", "UR"])
    def test_binary_and_url_emptied(self, context: PseudonymContext, vr: str):
        """Binary values and URLs have no pseudonym: they are emptied."""
        with warnings.catch_warnings():
            assert pseudonymisation_dispatch[vr](b"\x01\x02", context) == ""
