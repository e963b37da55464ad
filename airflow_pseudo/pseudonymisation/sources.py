"""Where pseudonyms come from: the keyed recipe (default) or PyMedPhys's recipe.

A source turns an original value into the raw material of its pseudonym (a digest, a UID, a day
offset, an age jitter). The per-VR strategies in :mod:`.strategies` shape that material into valid
DICOM values, so both sources share one set of strategies and differ only here.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from airflow_pseudo.pseudonymisation.errors import ConfigurationError
from airflow_pseudo.pseudonymisation.keys import PseudonymKey

PYMEDPHYS_ROOT_UID = "1.2.826.0.1.3680043.10.188"
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
MAX_UID_LENGTH = 64
AGE_JITTER_STEPS = (-2, -1, 0, 1, 2)


class PseudonymSource(Protocol):
    """The contract every source fulfils; strategies use nothing else."""

    @property
    def name(self) -> str:
        """``keyed`` or ``pymedphys``, recorded in DeidentificationMethod."""

    def text_digest(self, value: str) -> str:
        """Return the unpadded standard base64 of a 32-byte digest of ``value`` (43 characters)."""

    def uid(self, value: str) -> str:
        """Return the pseudonymous UID for an instance UID (valid, at most 64 characters)."""

    def date_offset_days(self, patient: str) -> int:
        """Return the whole-day shift applied to every date of ``patient``."""

    def age_jitter(self, patient: str) -> int:
        """Return the jitter, in the age's own unit, applied to every age of ``patient``."""


def _b64(digest: bytes) -> str:
    return base64.standard_b64encode(digest).decode("ascii").rstrip("=")


def _check_uid_root(root: str) -> str:
    if not UID_PATTERN.match(root) or len(root) > MAX_UID_LENGTH - 2:
        raise ConfigurationError(
            "the UID root must be dot-separated decimal components without leading zeros, "
            f"at most {MAX_UID_LENGTH - 2} characters"
        )
    return root


@dataclass(frozen=True)
class KeyedSource:
    """HMAC-SHA3-256 pseudonyms under a secret project key, one domain label per purpose.

    :param key: the project key.
    :param uid_root: an organisation root for new UIDs; ``None`` gives ``2.25.<decimal>``
        (ISO/IEC 9834-8), which needs no registered root.
    :param date_shift_days: inclusive range of the per-patient day offset. It must not contain 0
        unless both ends are 0, so a shift never leaves dates as they were by accident.
    """

    key: PseudonymKey
    uid_root: str | None = None
    date_shift_days: tuple[int, int] = (-3650, -366)
    name: str = field(default="keyed", init=False)

    def __post_init__(self) -> None:
        low, high = self.date_shift_days
        if low > high:
            raise ConfigurationError(
                "date_shift_days must be (minimum, maximum) with minimum <= maximum"
            )
        if low <= 0 <= high and (low, high) != (0, 0):
            raise ConfigurationError(
                "date_shift_days must not contain 0 (some patients' dates would not move): "
                "use a range wholly before or after 0, or (0, 0) to keep dates"
            )
        if self.uid_root is not None:
            _check_uid_root(self.uid_root)

    def text_digest(self, value: str) -> str:
        return _b64(self.key.derive(b"text", value.encode("utf-8")))

    def uid(self, value: str) -> str:
        number = int.from_bytes(
            self.key.derive(b"uid", value.encode("ascii", "replace"))[:16], "big"
        )
        if self.uid_root is None:
            return f"2.25.{number}"
        room = MAX_UID_LENGTH - len(self.uid_root) - 1
        return f"{self.uid_root}.{str(number)[:room]}"

    def date_offset_days(self, patient: str) -> int:
        low, high = self.date_shift_days
        draw = int.from_bytes(self.key.derive(b"date-shift", patient.encode("utf-8"))[:8], "big")
        return low + draw % (high - low + 1)

    def age_jitter(self, patient: str) -> int:
        draw = self.key.derive(b"age", patient.encode("utf-8"))[0]
        return AGE_JITTER_STEPS[draw % len(AGE_JITTER_STEPS)]


# PyMedPhys 0.41 (lib/pymedphys/_experimental/pseudonymisation/strategy.py): dates move by
# (2000-01-01 + epoch_jitter days) - 2004-04-15, one constant for every patient.
_PYMEDPHYS_EPOCH = datetime.date(2000, 1, 1)
_PYMEDPHYS_EARLIEST_STUDY = datetime.date(2004, 4, 15)


@dataclass(frozen=True)
class PyMedPhysSource:
    """PyMedPhys 0.41's recipe, so a team can keep pseudonyms it already released.

    Text is ``SHA3-256(value || pepper)`` in base64 and UIDs are the unkeyed SHA3 digits under
    PyMedPhys's root, value for value as PyMedPhys computes them. Two of its defects are fixed:
    ages are jittered deterministically per patient (keyed by the pepper), and non-ASCII text is
    hashed as UTF-8 instead of aborting the file.
    """

    pepper: str
    epoch_jitter: int
    name: str = field(default="pymedphys", init=False)

    def __post_init__(self) -> None:
        if not self.pepper:
            raise ConfigurationError("the pymedphys strategy needs a pepper")
        if not 0 <= self.epoch_jitter < 1000:
            raise ConfigurationError(
                "epoch_jitter must be an integer from 0 to 999, as PyMedPhys makes it"
            )

    @classmethod
    def from_config(cls, path: str | Path) -> PyMedPhysSource:
        """Read ``[pseudo] pepper`` and ``epoch_jitter`` from a PyMedPhys ``config.toml``."""
        try:
            config = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            pseudo = config["pseudo"]
            return cls(pepper=str(pseudo["pepper"]), epoch_jitter=int(pseudo["epoch_jitter"]))
        except OSError as exc:
            raise ConfigurationError(f"cannot read the PyMedPhys config ({exc.strerror})") from None
        except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError):
            raise ConfigurationError(
                "the PyMedPhys config has no valid [pseudo] pepper and epoch_jitter"
            ) from None

    def text_digest(self, value: str) -> str:
        return _b64(hashlib.sha3_256(value.encode("utf-8") + self.pepper.encode("utf-8")).digest())

    def uid(self, value: str) -> str:
        return _pymedphys_uid(value)

    def date_offset_days(self, patient: str) -> int:
        shifted_epoch = _PYMEDPHYS_EPOCH + datetime.timedelta(days=self.epoch_jitter)
        return (shifted_epoch - _PYMEDPHYS_EARLIEST_STUDY).days

    def age_jitter(self, patient: str) -> int:
        digest = hashlib.sha3_256(
            b"age\x00" + patient.encode("utf-8") + self.pepper.encode()
        ).digest()
        return AGE_JITTER_STEPS[digest[0] % len(AGE_JITTER_STEPS)]


@lru_cache(maxsize=65536)
def _pymedphys_uid(value: str) -> str:
    digits = MAX_UID_LENGTH - 1 - len(PYMEDPHYS_ROOT_UID)
    hex_prefix = hashlib.sha3_256(value.encode("ascii", "replace")).hexdigest()[:digits]
    return f"{PYMEDPHYS_ROOT_UID}.{str(int(hex_prefix, 16))[:digits]}"
