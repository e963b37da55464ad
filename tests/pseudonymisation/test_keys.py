"""Tests for the project key: loading, minimum length, secrecy and domain separation."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from airflow_pseudo.pseudonymisation.errors import MissingKeyError
from airflow_pseudo.pseudonymisation.keys import KEY_ENV_VAR, PseudonymKey, load_key


class TestLoadKey:
    def test_missing_key_names_every_way_to_provide_one(self):
        """With no key file and no environment variable, the error says how to provide a key."""
        with pytest.raises(MissingKeyError) as info:
            load_key(environ={})
        message = str(info.value)
        assert "--key-file" in message
        assert KEY_ENV_VAR in message
        assert "16 bytes" in message

    def test_blank_environment_variable_is_missing(self):
        """A whitespace-only AIRFLOW_PSEUDO_KEY counts as no key."""
        with pytest.raises(MissingKeyError, match=KEY_ENV_VAR):
            load_key(environ={KEY_ENV_VAR: "   \n"})

    @pytest.mark.parametrize("length", [0, 1, 15])
    def test_short_key_refused(self, length: int):
        """A key under 16 bytes is a MissingKeyError explaining the minimum."""
        with pytest.raises(MissingKeyError, match="16 bytes"):
            PseudonymKey(b"k" * length)

    def test_sixteen_bytes_accepted(self):
        """Exactly 16 bytes is enough."""
        PseudonymKey(b"k" * 16)

    def test_short_key_from_environment_refused(self):
        """A short key in the environment is refused like a short key file."""
        with pytest.raises(MissingKeyError, match=KEY_ENV_VAR):
            load_key(environ={KEY_ENV_VAR: "short"})

    def test_key_file_is_read_without_trailing_newline(self, tmp_path: Path, key_bytes: bytes):
        """A key file with a trailing newline gives the same key as the environment variable."""
        path = tmp_path / "key"
        path.write_bytes(key_bytes + b"\n")
        from_file = load_key(path, environ={})
        from_env = load_key(environ={KEY_ENV_VAR: key_bytes.decode()})
        assert from_file == from_env == PseudonymKey(key_bytes)

    def test_key_file_wins_over_environment(self, tmp_path: Path, key_bytes: bytes):
        """An explicit key file takes precedence over the environment variable."""
        path = tmp_path / "key"
        path.write_bytes(key_bytes)
        key = load_key(path, environ={KEY_ENV_VAR: "x" * 32})
        assert key == PseudonymKey(key_bytes)

    def test_unreadable_key_file_is_missing_key(self, tmp_path: Path):
        """A key file that cannot be read is a MissingKeyError, not an OSError traceback."""
        with pytest.raises(MissingKeyError, match="--key-file"):
            load_key(tmp_path / "absent", environ={})

    def test_text_key_must_be_bytes(self):
        """Passing text to the constructor is a TypeError that points to from_text."""
        with pytest.raises(TypeError, match="from_text"):
            PseudonymKey("a text key that is long enough")  # type: ignore[arg-type]


class TestSecrecy:
    def test_key_not_in_repr_or_str(self, key_bytes: bytes):
        """repr() and str() show only a key id, never the secret."""
        key = PseudonymKey(key_bytes)
        for text in (repr(key), str(key), f"{key}", repr([key])):
            assert key_bytes.decode() not in text
            assert key_bytes.decode()[:16] not in text
            assert key.key_id in text

    def test_key_not_in_short_key_error(self):
        """The error for a short key does not echo the key."""
        secret = "tiny-secret"
        with pytest.raises(MissingKeyError) as info:
            load_key(environ={KEY_ENV_VAR: secret})
        assert secret not in str(info.value)
        assert secret not in repr(info.value)

    def test_key_id_is_stable_and_reveals_nothing(self, key_bytes: bytes):
        """The key id is 16 hex digits, the same for equal keys, different for other keys."""
        key = PseudonymKey(key_bytes)
        assert key.key_id == PseudonymKey(key_bytes).key_id
        assert len(key.key_id) == 16
        assert key.key_id not in key_bytes.hex()
        assert key.key_id != PseudonymKey(b"y" * 32).key_id

    def test_pickle_round_trip_keeps_key(self, key_bytes: bytes):
        """A pickled key (sent to a worker process) derives the same values."""
        key = PseudonymKey(key_bytes)
        clone = pickle.loads(pickle.dumps(key))
        assert clone == key
        assert clone.derive(b"text", b"v") == key.derive(b"text", b"v")


class TestDerive:
    def test_domains_are_separated(self, key_bytes: bytes):
        """The same data gives unrelated digests in the text, UID, date and age domains."""
        key = PseudonymKey(key_bytes)
        digests = {key.derive(d, b"1.2.3.4") for d in (b"text", b"uid", b"date-shift", b"age")}
        assert len(digests) == 4

    def test_domain_boundary_is_unambiguous(self, key_bytes: bytes):
        """Moving bytes between domain and data changes the digest (the 0x00 separator)."""
        key = PseudonymKey(key_bytes)
        assert key.derive(b"text", b"abc") != key.derive(b"texta", b"bc")

    def test_is_hmac_sha3_256(self, key_bytes: bytes):
        """The derivation is RFC 2104 HMAC over SHA3-256 of domain, 0x00 and data."""
        import hashlib
        import hmac

        expected = hmac.new(key_bytes, b"text\x00value", hashlib.sha3_256).digest()
        assert PseudonymKey(key_bytes).derive(b"text", b"value") == expected

    def test_digests_do_not_carry_over(self, key_bytes: bytes):
        """Each digest starts from the key's state alone: earlier digests leave no trace."""
        import hashlib
        import hmac

        key = PseudonymKey(key_bytes)
        values = [b"1.2.3", b"", b"x" * 500, b"1.2.3"]
        digests = [key.derive(b"uid", value) for value in values]
        expected = [hmac.new(key_bytes, b"uid\x00" + v, hashlib.sha3_256).digest() for v in values]
        assert digests == expected

    def test_other_key_other_digest(self, key_bytes: bytes):
        """Another key gives another digest for the same input."""
        assert PseudonymKey(key_bytes).derive(b"text", b"v") != PseudonymKey(
            key_bytes + b"!"
        ).derive(b"text", b"v")
