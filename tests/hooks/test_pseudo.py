"""Tests for PseudoHook: the ``pseudo`` connection to core Settings."""

from __future__ import annotations

import json
import logging

import pytest

from airflow_pseudo.hooks.pseudo import PseudoHook
from airflow_pseudo.pseudonymisation import (
    ConfigurationError,
    MissingKeyError,
    PseudonymKey,
    Settings,
)

CONN_VAR = "AIRFLOW_CONN_PSEUDO_DEFAULT"


def _conn(password: str | None = None, **extra: object) -> str:
    return json.dumps({"conn_type": "pseudo", "password": password, "extra": extra})


class TestGetSettings:
    def test_key_from_password(self, monkeypatch: pytest.MonkeyPatch, key_bytes: bytes):
        """The key is the connection's password; the defaults come from Settings."""
        monkeypatch.setenv(CONN_VAR, _conn(key_bytes.decode()))
        settings = PseudoHook().get_settings()
        assert isinstance(settings, Settings)
        assert settings.key is not None
        assert settings.key.key_id == PseudonymKey(key_bytes).key_id
        assert settings.strategy == "keyed"
        assert settings.date_shift_days == (-3650, -366)

    def test_extras(self, monkeypatch: pytest.MonkeyPatch, key_bytes: bytes):
        """Extras set the strategy options; empty form values count as unset."""
        monkeypatch.setenv(
            CONN_VAR,
            _conn(
                key_bytes.decode(),
                uid_root="1.2.826.0.1.3680043.9.9999",
                date_shift_min_days="-100",
                date_shift_max_days=-10,
                profile="",
                pymedphys_config=None,
            ),
        )
        settings = PseudoHook().get_settings()
        assert settings.uid_root == "1.2.826.0.1.3680043.9.9999"
        assert settings.date_shift_days == (-100, -10)
        assert settings.profile == "default"

    def test_date_shift_range_extra(self, monkeypatch: pytest.MonkeyPatch, key_bytes: bytes):
        """A date_shift_days range may be given as "min,max"."""
        monkeypatch.setenv(CONN_VAR, _conn(key_bytes.decode(), date_shift_days="-50,-20"))
        assert PseudoHook().get_settings().date_shift_days == (-50, -20)

    def test_overrides_win_and_none_is_ignored(
        self, monkeypatch: pytest.MonkeyPatch, key_bytes: bytes
    ):
        """Keyword overrides replace the connection's values; None leaves them in place."""
        monkeypatch.setenv(CONN_VAR, _conn(key_bytes.decode(), uid_root="1.2.3"))
        settings = PseudoHook().get_settings(uid_root=None, date_shift_days=(-9, -1))
        assert settings.uid_root == "1.2.3"
        assert settings.date_shift_days == (-9, -1)

    def test_other_conn_id(self, monkeypatch: pytest.MonkeyPatch, key_bytes: bytes):
        """pseudo_conn_id selects the connection."""
        monkeypatch.setenv("AIRFLOW_CONN_SITE_B", _conn(key_bytes.decode()))
        assert PseudoHook(pseudo_conn_id="site_b").get_settings().key is not None

    def test_empty_password_falls_back_to_env_key(
        self, monkeypatch: pytest.MonkeyPatch, key_bytes: bytes
    ):
        """Without a password the key comes from $AIRFLOW_PSEUDO_KEY."""
        monkeypatch.setenv(CONN_VAR, _conn(None))
        monkeypatch.setenv("AIRFLOW_PSEUDO_KEY", key_bytes.decode())
        assert PseudoHook().get_settings().key is not None

    def test_no_key_at_all(self, monkeypatch: pytest.MonkeyPatch):
        """The keyed strategy without any key raises MissingKeyError saying how to provide one."""
        monkeypatch.setenv(CONN_VAR, _conn(None))
        monkeypatch.delenv("AIRFLOW_PSEUDO_KEY", raising=False)
        with pytest.raises(MissingKeyError):
            PseudoHook().get_settings()

    def test_short_key(self, monkeypatch: pytest.MonkeyPatch):
        """A key shorter than 16 bytes is refused."""
        monkeypatch.setenv(CONN_VAR, _conn("short"))
        with pytest.raises(MissingKeyError):
            PseudoHook().get_settings()

    def test_bad_extra(self, monkeypatch: pytest.MonkeyPatch, key_bytes: bytes):
        """A malformed extra is a ConfigurationError naming the connection."""
        monkeypatch.setenv(CONN_VAR, _conn(key_bytes.decode(), date_shift_min_days="-5"))
        with pytest.raises(ConfigurationError, match="pseudo_default"):
            PseudoHook().get_settings()

    def test_bad_strategy(self, monkeypatch: pytest.MonkeyPatch, key_bytes: bytes):
        """An unknown strategy fails at once, before any file is touched."""
        monkeypatch.setenv(CONN_VAR, _conn(key_bytes.decode(), strategy="rot13"))
        with pytest.raises(ConfigurationError, match="strategy"):
            PseudoHook().get_settings()


class TestTestConnection:
    def test_ok_without_revealing_the_key(self, monkeypatch: pytest.MonkeyPatch, key_bytes: bytes):
        """test_connection reports success with the key id, never the key."""
        monkeypatch.setenv(CONN_VAR, _conn(key_bytes.decode()))
        ok, message = PseudoHook().test_connection()
        assert ok, message
        assert PseudonymKey(key_bytes).key_id in message
        assert key_bytes.decode() not in message

    def test_failure_message(self, monkeypatch: pytest.MonkeyPatch):
        """A missing key gives (False, a message saying what is wrong)."""
        monkeypatch.setenv(CONN_VAR, _conn(None))
        monkeypatch.delenv("AIRFLOW_PSEUDO_KEY", raising=False)
        ok, message = PseudoHook().test_connection()
        assert not ok
        assert "MissingKeyError" in message

    def test_missing_connection(self, monkeypatch: pytest.MonkeyPatch):
        """An undefined connection is reported, not raised."""
        monkeypatch.delenv(CONN_VAR, raising=False)
        ok, message = PseudoHook(pseudo_conn_id="nope").test_connection()
        assert not ok
        assert "nope" in message


def test_key_is_masked(monkeypatch: pytest.MonkeyPatch, key_bytes: bytes):
    """Reading the key registers it with Airflow's secrets masker."""
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    monkeypatch.setenv(CONN_VAR, _conn(key_bytes.decode()))
    PseudoHook().get_key()
    masker = _secrets_masker()
    assert masker.redact(f"key={key_bytes.decode()}") == "key=***"


def test_key_never_logged(
    monkeypatch: pytest.MonkeyPatch, key_bytes: bytes, caplog: pytest.LogCaptureFixture
):
    """Nothing the hook logs contains the key."""
    monkeypatch.setenv(CONN_VAR, _conn(key_bytes.decode()))
    with caplog.at_level(logging.DEBUG):
        PseudoHook().test_connection()
    assert key_bytes.decode() not in caplog.text


def test_connection_attributes():
    """The hook declares the connection contract Airflow's UI and discovery read."""
    assert PseudoHook.conn_type == "pseudo"
    assert PseudoHook.default_conn_name == "pseudo_default"
    assert PseudoHook.conn_name_attr == "pseudo_conn_id"
    assert "get_connection_form_widgets" not in PseudoHook.__dict__
    assert "get_ui_field_behaviour" not in PseudoHook.__dict__


class TestTestConnectionChecks:
    """The UI's Test button: the key's length, then the profile, each named in the message."""

    def test_short_key(self, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setenv(CONN_VAR, _conn("too short"))
        ok, message = PseudoHook().test_connection()
        assert not ok
        assert "shorter than 16 bytes" in message
        assert "too short" not in message

    def test_unknown_profile(self, monkeypatch: pytest.MonkeyPatch, key_bytes: bytes):
        monkeypatch.setenv(CONN_VAR, _conn(key_bytes.decode(), profile="no-such-profile"))
        ok, message = PseudoHook().test_connection()
        assert not ok
        assert "profile" in message

    def test_names_what_it_checked(self, monkeypatch: pytest.MonkeyPatch, key_bytes: bytes):
        monkeypatch.setenv(CONN_VAR, _conn(key_bytes.decode(), profile="pymedphys"))
        ok, message = PseudoHook().test_connection()
        assert ok, message
        assert "key of at least 16 bytes" in message
        assert "profile pymedphys loads" in message


class TestKeyErrors:
    """A key that is not valid UTF-8 is refused with a message that quotes none of its bytes."""

    RAW = b"abc\xff\xfe-secret-part-0123456789"

    def _assert_no_key_bytes(self, message: str) -> None:
        text = self.RAW.decode("utf-8", "surrogateescape")
        assert "not valid UTF-8" in message
        for fragment in ("\\xff", "\\udcff", "\udcff", "secret-part", text[:3] + text[3]):
            assert fragment not in message

    def test_environment_key_not_utf8(self, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setenv(CONN_VAR, _conn(None))
        monkeypatch.setenv("AIRFLOW_PSEUDO_KEY", self.RAW.decode("utf-8", "surrogateescape"))
        with pytest.raises(MissingKeyError) as exc:
            PseudoHook().get_settings()
        self._assert_no_key_bytes(str(exc.value))
        assert exc.value.__cause__ is None and exc.value.__suppress_context__

    def test_connection_password_not_utf8(self):
        """E.g. from a secrets backend that decodes with surrogateescape."""
        from airflow.sdk import Connection

        hook = PseudoHook()
        hook.connection = Connection(
            conn_id="pseudo_default",
            conn_type="pseudo",
            password=self.RAW.decode("utf-8", "surrogateescape"),
        )
        ok, message = hook.test_connection()
        assert not ok
        self._assert_no_key_bytes(message)


def test_environment_key_is_masked(monkeypatch: pytest.MonkeyPatch):
    """A key read from $AIRFLOW_PSEUDO_KEY is registered with the secrets masker too."""
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    secret = "a distinct environment key, 0123456789"
    monkeypatch.setenv(CONN_VAR, _conn(None))
    monkeypatch.setenv("AIRFLOW_PSEUDO_KEY", secret)
    PseudoHook().get_key()
    assert _secrets_masker().redact(f"key={secret}") == "key=***"
