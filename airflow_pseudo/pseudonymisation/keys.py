"""The project key and the keyed derivations built on it.

Every value the ``keyed`` strategy derives is ``HMAC-SHA3-256(key, domain || 0x00 || data)``
(RFC 2104 over FIPS 202), with one domain label per purpose, so a text pseudonym can never be
replayed as a UID or a date offset. This module is the only holder of the secret: its ``repr``,
``str`` and pickled form are the only places the bytes travel, and none of them is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from airflow_pseudo.pseudonymisation.errors import MissingKeyError

KEY_ENV_VAR = "AIRFLOW_PSEUDO_KEY"
MINIMUM_KEY_BYTES = 16

HOW_TO_PROVIDE = (
    f"provide a key of at least {MINIMUM_KEY_BYTES} bytes with --key-file FILE, the environment "
    f"variable {KEY_ENV_VAR}, or the password of the Airflow connection 'pseudo_default' "
    "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
)


class PseudonymKey:
    """A secret project key. Same key, same pseudonyms; another key, unlinkable pseudonyms."""

    __slots__ = ("_keyed", "_secret")

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes | bytearray):
            raise TypeError("the key must be bytes; use PseudonymKey.from_text() for text")
        if len(secret) < MINIMUM_KEY_BYTES:
            raise MissingKeyError(
                f"the project key is shorter than {MINIMUM_KEY_BYTES} bytes: " + HOW_TO_PROVIDE
            )
        self._secret = bytes(secret)
        # The key's HMAC state, computed once: each digest copies it instead of re-deriving the
        # padded inner and outer keys (half the cost of a short message's digest).
        self._keyed = hmac.new(self._secret, digestmod=hashlib.sha3_256)

    @classmethod
    def from_text(cls, text: str) -> PseudonymKey:
        """Build a key from text as stored in a file, an environment variable or a connection.

        :raises MissingKeyError: if the text is not valid UTF-8 (e.g. an environment variable
            holding raw bytes); the message never quotes the key.
        """
        try:
            secret = text.strip().encode("utf-8")
        except UnicodeEncodeError:
            # Python's codec error would quote the offending character: a byte of the key.
            raise MissingKeyError(
                "the project key is not valid UTF-8 text: " + HOW_TO_PROVIDE
            ) from None
        return cls(secret)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PseudonymKey:
        """Read a key file; surrounding whitespace (a trailing newline) is not part of the key."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise MissingKeyError(
                f"cannot read the key file ({exc.strerror}): " + HOW_TO_PROVIDE
            ) from None
        return cls(data.strip())

    def derive(self, domain: bytes, data: bytes) -> bytes:
        """Return the 32-byte keyed digest of ``data`` in the given domain."""
        keyed = self._keyed.copy()
        keyed.update(domain + b"\x00" + data)
        return keyed.digest()

    @property
    def key_id(self) -> str:
        """A short public identifier of the key, for manifests: it reveals nothing of the key."""
        return self.derive(b"key-id", b"").hex()[:16]

    def __repr__(self) -> str:
        return f"PseudonymKey(key_id={self.key_id})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PseudonymKey) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __reduce__(self) -> tuple[type[PseudonymKey], tuple[bytes]]:
        return (PseudonymKey, (self._secret,))


def load_key(
    key_file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
) -> PseudonymKey:
    """Find the project key: the key file if given, else ``$AIRFLOW_PSEUDO_KEY``.

    :raises MissingKeyError: with a message that says how to provide a key.
    """
    if key_file is not None:
        return PseudonymKey.from_file(key_file)
    text = environ.get(KEY_ENV_VAR, "")
    if not text.strip():
        raise MissingKeyError("no project key: " + HOW_TO_PROVIDE)
    return PseudonymKey.from_text(text)
