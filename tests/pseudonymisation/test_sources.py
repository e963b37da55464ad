"""Tests for the pseudonym sources: the keyed recipe and PyMedPhys's recipe."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from airflow_pseudo.pseudonymisation.errors import ConfigurationError
from airflow_pseudo.pseudonymisation.keys import PseudonymKey
from airflow_pseudo.pseudonymisation.sources import (
    PYMEDPHYS_ROOT_UID,
    UID_PATTERN,
    KeyedSource,
    PyMedPhysSource,
)

SAMPLE_UIDS = [
    "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
    "1.2.3",
    "9" * 64,
    "2.25.1",
]

PEPPER = "LZS5jElRYR7nIPpBihq8V6s5Sdie_TYwMrCtrU1dEyA"


class TestKeyedSource:
    @pytest.mark.parametrize("uid", SAMPLE_UIDS)
    def test_uid_is_2_25_decimal_by_default(self, key: PseudonymKey, uid: str):
        """Without a root, new UIDs are 2.25.<decimal of 128 bits>: valid and at most 64 chars."""
        new = KeyedSource(key).uid(uid)
        assert new.startswith("2.25.")
        assert UID_PATTERN.match(new)
        assert len(new) <= 64
        assert int(new[5:]) < 2**128

    @pytest.mark.parametrize("root", ["1.2.826.0.1.3680043.10.999", "1.2.3.4.5.6.7.8.9.10.11.12"])
    @pytest.mark.parametrize("uid", SAMPLE_UIDS)
    def test_uid_under_org_root(self, key: PseudonymKey, root: str, uid: str):
        """With an org root, new UIDs are <root>.<decimal>, valid and cut to 64 characters."""
        new = KeyedSource(key, uid_root=root).uid(uid)
        assert new.startswith(root + ".")
        assert UID_PATTERN.match(new)
        assert len(new) <= 64
        assert not new[len(root) + 1 :].startswith("0")

    @pytest.mark.parametrize("root", ["1.02.3", "1..2", "abc", "1.2." + "3" * 70, "1.2."])
    def test_invalid_root_refused(self, key: PseudonymKey, root: str):
        """A root that cannot prefix valid UIDs is a configuration error."""
        with pytest.raises(ConfigurationError, match="UID root"):
            KeyedSource(key, uid_root=root)

    def test_same_key_same_values(self, key_bytes: bytes):
        """Two sources built from equal keys agree on every derived value."""
        a, b = KeyedSource(PseudonymKey(key_bytes)), KeyedSource(PseudonymKey(key_bytes))
        assert a.text_digest("Doe^John") == b.text_digest("Doe^John")
        assert a.uid(SAMPLE_UIDS[0]) == b.uid(SAMPLE_UIDS[0])
        assert a.date_offset_days("MRN1") == b.date_offset_days("MRN1")
        assert a.age_jitter("MRN1") == b.age_jitter("MRN1")

    def test_other_key_different_values(self, key: PseudonymKey, other_key: PseudonymKey):
        """Another key changes text digests, UIDs and date offsets (over a few patients)."""
        a, b = KeyedSource(key), KeyedSource(other_key)
        assert a.text_digest("Doe^John") != b.text_digest("Doe^John")
        assert a.uid(SAMPLE_UIDS[0]) != b.uid(SAMPLE_UIDS[0])
        patients = [f"MRN{i}" for i in range(20)]
        assert [a.date_offset_days(p) for p in patients] != [
            b.date_offset_days(p) for p in patients
        ]
        assert [a.age_jitter(p) for p in patients] != [b.age_jitter(p) for p in patients]

    def test_text_and_uid_domains_differ(self, key: PseudonymKey):
        """The text digest and the UID of the same string come from different digests."""
        source = KeyedSource(key)
        value = SAMPLE_UIDS[0]
        text_bytes = base64.standard_b64decode(source.text_digest(value) + "=")
        uid_number = int(source.uid(value)[5:])
        assert int.from_bytes(text_bytes[:16], "big") != uid_number

    def test_text_digest_is_43_char_base64(self, key: PseudonymKey):
        """Text digests are unpadded standard base64 of 32 bytes, 43 characters."""
        digest = KeyedSource(key).text_digest("Müller")
        assert len(digest) == 43
        assert len(base64.standard_b64decode(digest + "=")) == 32

    def test_date_offset_within_configured_range(self, key: PseudonymKey):
        """Per-patient offsets stay within the inclusive configured range and vary by patient."""
        source = KeyedSource(key, date_shift_days=(-30, -10))
        offsets = {source.date_offset_days(f"P{i}") for i in range(300)}
        assert offsets <= set(range(-30, -9))
        assert len(offsets) > 10

    def test_default_offset_range_never_zero(self, key: PseudonymKey):
        """The default range shifts every patient by at least a year back, never by zero."""
        source = KeyedSource(key)
        offsets = [source.date_offset_days(f"P{i}") for i in range(300)]
        assert all(-3650 <= o <= -366 for o in offsets)

    @pytest.mark.parametrize("days", [(-10, 10), (-10, 0), (0, 10)])
    def test_range_containing_zero_refused(self, key: PseudonymKey, days: tuple[int, int]):
        """A range that would leave some patients' dates unshifted is a configuration error."""
        with pytest.raises(ConfigurationError, match="contain 0"):
            KeyedSource(key, date_shift_days=days)

    def test_zero_range_keeps_dates(self, key: PseudonymKey):
        """(0, 0) is the explicit way to keep dates as they are."""
        assert KeyedSource(key, date_shift_days=(0, 0)).date_offset_days("P") == 0

    @pytest.mark.parametrize("days", [(1, 30), (-30, -1)])
    def test_offsets_never_zero(self, key: PseudonymKey, days: tuple[int, int]):
        """Ranges wholly after or before 0 always move dates."""
        source = KeyedSource(key, date_shift_days=days)
        assert all(source.date_offset_days(f"P{i}") != 0 for i in range(200))

    def test_reversed_range_refused(self, key: PseudonymKey):
        """A (maximum, minimum) range is a configuration error."""
        with pytest.raises(ConfigurationError):
            KeyedSource(key, date_shift_days=(10, -10))

    def test_age_jitter_small_and_per_patient(self, key: PseudonymKey):
        """Age jitter is one of -2..2 and is the same on every call for one patient."""
        source = KeyedSource(key)
        jitters = [source.age_jitter(f"P{i}") for i in range(100)]
        assert set(jitters) <= {-2, -1, 0, 1, 2}
        assert len(set(jitters)) > 1
        assert source.age_jitter("P1") == source.age_jitter("P1")


class TestPyMedPhysSource:
    def test_text_digest_is_sha3_of_value_then_pepper(self):
        """Text is base64(SHA3-256(value || pepper)) without padding, as PyMedPhys 0.41."""
        expected = base64.standard_b64encode(
            hashlib.sha3_256(b"1CT1" + PEPPER.encode()).digest()
        ).decode()[:-1]
        assert PyMedPhysSource(PEPPER, 775).text_digest("1CT1") == expected

    def test_documented_patient_id_example(self):
        """PatientID 1CT1 under the documented pepper gives the documented pseudonym."""
        assert (
            PyMedPhysSource(PEPPER, 775).text_digest("1CT1")
            == "E3jsEqD7ZBj5IWeWD9bEGG9Y5nLWY0Q9x2rtMr5FPLI"
        )

    def test_documented_uid_example(self):
        """StudyInstanceUID of CT_small maps to the documented PyMedPhys UID, under any pepper."""
        uid = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
        expected = f"{PYMEDPHYS_ROOT_UID}.2169514632610846560695043442539410216"
        assert PyMedPhysSource(PEPPER, 775).uid(uid) == expected
        assert PyMedPhysSource("other", 1).uid(uid) == expected

    @pytest.mark.parametrize(("jitter", "days"), [(775, -791), (523, -1043)])
    def test_documented_date_offsets(self, jitter: int, days: int):
        """epoch_jitter 775 shifts by -791 days and 523 by -1043, as PyMedPhys does."""
        assert PyMedPhysSource(PEPPER, jitter).date_offset_days("anyone") == days

    def test_non_ascii_text_hashed(self):
        """Non-ASCII text is hashed (as UTF-8) instead of raising as in PyMedPhys (defect 8)."""
        digest = PyMedPhysSource(PEPPER, 775).text_digest("Müller")
        assert len(digest) == 43

    def test_age_jitter_deterministic_per_patient(self):
        """Ages jitter by a fixed per-patient step, not PyMedPhys's global RNG (defect 5)."""
        source = PyMedPhysSource(PEPPER, 775)
        assert {source.age_jitter("P1") for _ in range(20)} == {source.age_jitter("P1")}

    def test_from_config(self, tmp_path: Path):
        """pepper and epoch_jitter are read from a PyMedPhys config.toml."""
        path = tmp_path / "config.toml"
        path.write_text(f'[pseudo]\npepper = "{PEPPER}"\nepoch_jitter = 775\n')
        assert PyMedPhysSource.from_config(path) == PyMedPhysSource(PEPPER, 775)

    @pytest.mark.parametrize(
        "content", ["", "[pseudo]\npepper = 'x'\n", "[pseudo]\nepoch_jitter = 1\n", "not toml ["]
    )
    def test_bad_config_refused(self, tmp_path: Path, content: str):
        """A config without [pseudo] pepper and epoch_jitter is a configuration error."""
        path = tmp_path / "config.toml"
        path.write_text(content)
        with pytest.raises(ConfigurationError, match="pepper"):
            PyMedPhysSource.from_config(path)

    def test_missing_config_refused(self, tmp_path: Path):
        """A missing config file is a configuration error, not an OSError."""
        with pytest.raises(ConfigurationError, match="config"):
            PyMedPhysSource.from_config(tmp_path / "absent.toml")

    @pytest.mark.parametrize(("pepper", "jitter"), [("", 1), ("p", -1), ("p", 1000)])
    def test_invalid_parameters_refused(self, pepper: str, jitter: int):
        """An empty pepper or a jitter outside 0..999 is a configuration error."""
        with pytest.raises(ConfigurationError):
            PyMedPhysSource(pepper, jitter)
