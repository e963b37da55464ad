"""Settings: the picklable description of a pseudonymisation run, and what it builds.

Worker processes receive a :class:`Settings` and build their own :class:`Pseudonymiser`, so the
same settings give the same output whatever the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from airflow_pseudo.pseudonymisation.engine import Pseudonymiser
from airflow_pseudo.pseudonymisation.errors import ConfigurationError, MissingKeyError
from airflow_pseudo.pseudonymisation.io.inputs import DEFAULT_LIMITS, InputLimits
from airflow_pseudo.pseudonymisation.keys import HOW_TO_PROVIDE, PseudonymKey
from airflow_pseudo.pseudonymisation.profiles import PROFILES
from airflow_pseudo.pseudonymisation.sources import KeyedSource, PseudonymSource, PyMedPhysSource

STRATEGIES = ("keyed", "pymedphys")
OUTPUT_LAYOUTS = ("uids", "flat", "mirror")
ENGINES = ("auto", "reference")
DURABILITY = ("batch", "file", "none")


@dataclass(frozen=True)
class Settings:
    """How to pseudonymise.

    :param strategy: ``keyed`` (HMAC under the project key, the default) or ``pymedphys``
        (PyMedPhys 0.41's values, from a pepper and epoch_jitter).
    :param key: the project key; required by the keyed strategy.
    :param profile: ``default`` (seed keywords + PS3.15 Basic Profile with the Retain
        Longitudinal Modified Dates and Retain Patient Characteristics options) or ``pymedphys``.
    :param uid_root: organisation root for new UIDs; ``None`` gives ``2.25.<decimal>``.
    :param date_shift_days: inclusive range of the per-patient date offset, in days.
    :param pymedphys_config: a PyMedPhys ``config.toml`` holding ``[pseudo] pepper`` and
        ``epoch_jitter``; ``pepper`` and ``epoch_jitter`` may be given directly instead.
    :param keep_keywords: attributes to keep unchanged, whatever the profile says.
    :param allow_burned_in: publish images whose pixels may identify the patient: BurnedInAnnotation
        YES, RecognizableVisualFeatures YES, or a class listed in
        :data:`.pixels.BURNED_IN_TEXT_LIKELY` without BurnedInAnnotation.
    :param output_layout: ``uids`` names outputs ``<study>/<series>/<instance>.dcm`` by the
        pseudonymised UIDs; ``flat`` names them ``<instance>.dcm``; ``mirror`` keeps the input's
        relative paths (which may hold PHI).
    :param engine: ``auto`` uses the streaming fast path and falls back to the reference engine
        for what it does not support; ``reference`` always uses the reference engine.
    :param durability: when outputs reach stable storage before their names appear. ``batch``
        (the default) syncs the file system once per chunk of files, then links them into place;
        ``file`` fsyncs each output; ``none`` leaves it to the OS: still atomic against a crash of
        the process, but a power cut may lose or empty recent outputs.
    :param input_limits: bounds on one input's size and inflated size; a file over a bound
        fails alone.
    """

    strategy: Literal["keyed", "pymedphys"] | str = "keyed"
    key: PseudonymKey | None = None
    profile: str = "default"
    uid_root: str | None = None
    date_shift_days: tuple[int, int] = (-3650, -366)
    pymedphys_config: str | None = None
    pepper: str | None = None
    epoch_jitter: int | None = None
    keep_keywords: tuple[str, ...] = ()
    allow_burned_in: bool = False
    output_layout: str = "uids"
    engine: str = "auto"
    durability: str = "batch"
    input_limits: InputLimits = DEFAULT_LIMITS

    def check(self) -> None:
        """Build everything once, so a bad setting fails before any file is touched."""
        if self.engine not in ENGINES:
            raise ConfigurationError(f"engine must be one of {', '.join(ENGINES)}")
        if self.durability not in DURABILITY:
            raise ConfigurationError(f"durability must be one of {', '.join(DURABILITY)}")
        if self.output_layout not in OUTPUT_LAYOUTS:
            raise ConfigurationError(f"output_layout must be one of {', '.join(OUTPUT_LAYOUTS)}")
        self.pseudonymiser  # noqa: B018

    @cached_property
    def source(self) -> PseudonymSource:
        if self.strategy == "keyed":
            if self.key is None:
                raise MissingKeyError("the keyed strategy needs a project key: " + HOW_TO_PROVIDE)
            low, high = (int(d) for d in self.date_shift_days)
            return KeyedSource(self.key, self.uid_root, (low, high))
        if self.strategy == "pymedphys":
            if self.pepper is not None and self.epoch_jitter is not None:
                return PyMedPhysSource(self.pepper, int(self.epoch_jitter))
            if self.pymedphys_config:
                return PyMedPhysSource.from_config(self.pymedphys_config)
            raise ConfigurationError(
                "the pymedphys strategy needs a PyMedPhys config.toml (pymedphys_config) "
                "or both pepper and epoch_jitter"
            )
        raise ConfigurationError(f"strategy must be one of {', '.join(STRATEGIES)}")

    @cached_property
    def pseudonymiser(self) -> Pseudonymiser:
        try:
            make_profile = PROFILES[self.profile]
        except KeyError:
            raise ConfigurationError(f"profile must be one of {', '.join(PROFILES)}") from None
        return Pseudonymiser(
            self.source, make_profile(self.keep_keywords), allow_burned_in=self.allow_burned_in
        )

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("source", None)
        state.pop("pseudonymiser", None)
        return state
