"""The recipe: the one parsed, picklable description of a pseudonymisation job.

The CLI, the hook (and so the operators), the Python API and the validator all build a
:class:`Recipe` with :func:`build_recipe`, so a job's profile, key, date-shift range and options
are parsed in one place. Worker processes receive the recipe and build their own
:class:`Pseudonymiser`, so the same recipe gives the same output whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, Literal

from airflow_pseudo.pseudonymisation.engine import Pseudonymiser
from airflow_pseudo.pseudonymisation.errors import ConfigurationError, MissingKeyError
from airflow_pseudo.pseudonymisation.io.inputs import DEFAULT_LIMITS, InputLimits
from airflow_pseudo.pseudonymisation.keys import HOW_TO_PROVIDE, PseudonymKey
from airflow_pseudo.pseudonymisation.policy.profile import Profile, resolve_profile
from airflow_pseudo.pseudonymisation.sources import KeyedSource, PseudonymSource, PyMedPhysSource

STRATEGIES = ("keyed", "pymedphys")
OUTPUT_LAYOUTS = ("uids", "flat", "mirror")
ENGINES = ("auto", "reference")
DURABILITY = ("batch", "file", "none")
DEFAULT_DATE_SHIFT_DAYS = (-3650, -366)


def parse_date_shift_days(value: Any) -> tuple[int, int]:
    """The per-patient date-shift range from ``(min, max)``, ``[min, max]``, ``"min,max"``
    or ``"min..max"``, in days; the only parser of this range.

    :raises ConfigurationError: unless two integers with ``min <= max``.
    """
    if isinstance(value, str):
        parts: list[Any] = [p for p in value.replace("..", ",").split(",") if p.strip()]
    else:
        try:
            parts = list(value)
        except TypeError:
            parts = [value]
    if len(parts) != 2:
        raise ConfigurationError(
            f"date_shift_days must be two integers MIN,MAX (days), got {len(parts)} value(s)"
        )
    try:
        low, high = (int(str(part).strip()) for part in parts)
    except ValueError:
        raise ConfigurationError("date_shift_days must be two integers MIN,MAX (days)") from None
    if low > high:
        raise ConfigurationError("date_shift_days: MIN must not be greater than MAX")
    return low, high


@dataclass(frozen=True)
class Recipe:
    """How to pseudonymise: one job's complete description.

    :param strategy: ``keyed`` (HMAC under the project key, the default) or ``pymedphys``
        (PyMedPhys 0.41's values, from a pepper and epoch_jitter).
    :param key: the project key; required by the keyed strategy.
    :param profile: a shipped profile's name (``basic``, ``default``, ``research``,
        ``pymedphys``) or the path of a project profile file (YAML).
    :param options: PS3.15 Annex E options added to the profile's own, by name.
    :param uid_root: organisation root for new UIDs; ``None`` gives ``2.25.<decimal>``.
    :param date_shift_days: inclusive range of the per-patient date offset, in days; unset,
        the profile file's range, else -3650..-366.
    :param pymedphys_config: a PyMedPhys ``config.toml`` holding ``[pseudo] pepper`` and
        ``epoch_jitter``; ``pepper`` and ``epoch_jitter`` may be given directly instead.
    :param keep_keywords: attributes to keep unchanged, whatever the profile says.
    :param allow_burned_in: pseudonymise files whose BurnedInAnnotation is YES.
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
    date_shift_days: tuple[int, int] | None = None
    pymedphys_config: str | None = None
    pepper: str | None = None
    epoch_jitter: int | None = None
    keep_keywords: tuple[str, ...] = ()
    allow_burned_in: bool = False
    output_layout: str = "uids"
    engine: str = "auto"
    durability: str = "batch"
    options: tuple[str, ...] = ()
    input_limits: InputLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if self.date_shift_days is not None:
            days = parse_date_shift_days(self.date_shift_days)
        else:  # the profile file's range, else the default: resolving the profile checks it
            days = self.resolved_profile.date_shift_days or DEFAULT_DATE_SHIFT_DAYS
        object.__setattr__(self, "date_shift_days", days)
        object.__setattr__(self, "keep_keywords", tuple(self.keep_keywords))
        object.__setattr__(self, "options", tuple(self.options))

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
            days = self.date_shift_days or DEFAULT_DATE_SHIFT_DAYS  # set by __post_init__
            return KeyedSource(self.key, self.uid_root, days)
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
    def resolved_profile(self) -> Profile:
        """The profile with the recipe's options and keep list, resolved once."""
        return resolve_profile(self.profile, self.keep_keywords, self.options)

    @cached_property
    def pseudonymiser(self) -> Pseudonymiser:
        return Pseudonymiser(
            self.source, self.resolved_profile, allow_burned_in=self.allow_burned_in
        )

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        for derived in ("source", "pseudonymiser", "resolved_profile"):
            state.pop(derived, None)
        return state


_FIELDS = frozenset(f.name for f in fields(Recipe))


def build_recipe(*, check: bool = True, **values: Any) -> Recipe:
    """Build a recipe from loosely typed values (CLI arguments, connection extras, operator
    arguments); the one place a job's description is parsed.

    ``None`` or a blank string means unset. ``date_shift_days`` takes any form
    :func:`parse_date_shift_days` does; ``date_shift_min_days`` and ``date_shift_max_days``
    may be given instead, both or neither.
    ``keep_keywords`` and ``options`` take any iterable (a string is one name).

    :param check: build the pseudonymiser now, so a bad value fails before any file is read.
    :raises ConfigurationError: for an unknown field or an invalid value.
    """
    given = {name: value for name, value in values.items() if not _unset(value)}
    low, high = given.pop("date_shift_min_days", None), given.pop("date_shift_max_days", None)
    if low is not None or high is not None:
        if low is None or high is None:
            raise ConfigurationError(
                "set both date_shift_min_days and date_shift_max_days, or neither"
            )
        given["date_shift_days"] = (low, high)
    for name in ("keep_keywords", "options"):
        if name in given:
            given[name] = _names(given[name])
    unknown = sorted(given.keys() - _FIELDS)
    if unknown:
        raise ConfigurationError(f"unknown setting(s): {', '.join(unknown)}")
    recipe = Recipe(**given)
    if check:
        recipe.check()
    return recipe


def _unset(value: Any) -> bool:
    """None or a blank string (an empty form field, a DAG param left empty) sets nothing."""
    return value is None or (isinstance(value, str) and not value.strip())


def _names(value: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(part) for part in value)


Settings = Recipe
"""The recipe's former name, kept for code and pickles that use it."""
