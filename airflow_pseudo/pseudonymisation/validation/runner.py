"""The runner: read the original and the output once each, run every check, give a verdict.

The output is read as bytes and walked once (:mod:`.layout`); the evidence search scans it once
(:mod:`.evidence`); the release checks read the few values they need (:mod:`.conformance`);
with the key, the anchors' pseudonyms are recomputed and compared (:mod:`.keys`). Without a key
the key-free checks run and the verdict says the key checks were skipped.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from airflow_pseudo.pseudonymisation.errors import MissingKeyError
from airflow_pseudo.pseudonymisation.policy.profile import Action, Profile
from airflow_pseudo.pseudonymisation.strategies import keep_value, pseudonymisation_dispatch
from airflow_pseudo.pseudonymisation.validation.conformance import (
    MARKER_TAGS,
    marker_problems,
    private_problems,
    uid_problems,
    value_problems,
)
from airflow_pseudo.pseudonymisation.validation.evidence import residue_problems
from airflow_pseudo.pseudonymisation.validation.keys import ANCHORS, key_problems
from airflow_pseudo.pseudonymisation.validation.layout import (
    UnreadableOutputError,
    implicit_vr,
    read_layout,
)
from airflow_pseudo.pseudonymisation.validation.original import Original, read_original
from airflow_pseudo.pseudonymisation.validation.quiet import quiet_pydicom

if TYPE_CHECKING:
    from airflow_pseudo.pseudonymisation.engine import Pseudonymiser
    from airflow_pseudo.pseudonymisation.policy.recipe import Settings

KeyChecks = Literal["passed", "failed", "skipped"]
_ANCHOR_TAGS = frozenset(ANCHORS.values())


@dataclass
class Verdict:
    """The problems of one output (empty: valid) and the outcome of the key checks."""

    problems: list[str] = field(default_factory=list)
    key_checks: KeyChecks = "skipped"


@dataclass(frozen=True)
class Expectations:
    """What the output must show: the pseudonymiser (``None`` without a key) and the markers.

    :param method_codes: the CID 7050 codes the profile writes.
    :param profile_digest: the digest of the profile used, when the result record has it.
    """

    pseudonymiser: Pseudonymiser | None
    method_codes: Sequence[str]
    profile_digest: str | None = None
    profile: Profile | None = None
    _written: dict[int, bool] = field(default_factory=dict, compare=False, repr=False)
    _wanted: dict[int, bool] = field(default_factory=dict, compare=False, repr=False)
    plan: dict[int, int] = field(default_factory=dict, compare=False, repr=False)
    """The scanner's plan for outputs, learnt once per tag (see :func:`.read_layout`)."""

    def written(self, tag: int) -> bool:
        """Whether the tool writes the value of an element with this tag (profile or marker)."""
        known = self._written.get(tag)
        if known is None:
            known = self._written[tag] = (
                tag in MARKER_TAGS
                or tag >> 16 == 2
                or _changes(self.profile, self.pseudonymiser, tag)
            )
        return known

    def wanted(self, tag: int) -> bool:
        """Whether a check reads output elements with this tag (see :func:`.read_layout`)."""
        known = self._wanted.get(tag)
        if known is None:
            known = self._wanted[tag] = (
                self.written(tag) or tag in _ANCHOR_TAGS or implicit_vr(tag) == "UI"
            )
        return known

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        method_codes: Sequence[str] | None = None,
        profile_digest: str | None = None,
    ) -> Expectations:
        """Expectations from the run's settings and, when given, its result record's fields."""
        try:
            pseudonymiser: Pseudonymiser | None = settings.pseudonymiser
        except MissingKeyError:
            pseudonymiser = None
        profile = pseudonymiser.profile if pseudonymiser is not None else _keyless_profile(settings)
        if method_codes is None:
            method_codes = [code for code, _ in profile.method_codes()]
        return cls(pseudonymiser, tuple(method_codes), profile_digest, profile)


def validate_output(
    original: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    settings: Settings,
    method_codes: Sequence[str] | None = None,
    profile_digest: str | None = None,
) -> Verdict:
    """Check ``output`` as a pseudonymisation of ``original``; each file is read once.

    :param method_codes: from the result record (``method_codes``); else the profile's.
    :param profile_digest: from the result record (``profile_digest``); else not checked.
    """
    codes = None if method_codes is None else tuple(method_codes)
    expectations = _expectations(settings, codes, profile_digest)
    try:
        data = _read(output)
    except OSError as exc:
        return Verdict([f"output unreadable ({exc.strerror or type(exc).__name__})"])
    try:
        source = read_original(_read(original), os.fspath(original))
    except Exception as exc:
        return Verdict([f"original unreadable ({type(exc).__name__})"])
    return check(source, data, expectations)


def _read(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes, unbuffered: read whole, a buffer would only copy them."""
    with open(path, "rb", buffering=0) as file:
        return file.read()


def check(original: Original, output: bytes, expectations: Expectations) -> Verdict:
    """Every check of one output (its bytes) against what its original holds."""
    try:
        layout = read_layout(output, expectations.wanted, expectations.plan)
    except UnreadableOutputError as exc:
        return Verdict([f"output unreadable ({exc})"])
    problems = list(residue_problems(layout, original.identifiers))
    problems += uid_problems(layout)
    problems += private_problems(layout, expectations.method_codes)
    problems += marker_problems(layout, expectations.method_codes, expectations.profile_digest)
    key_checks: KeyChecks = "skipped"
    with quiet_pydicom("output and the original's anchors"):
        problems += value_problems(layout, expectations.written)
        if expectations.pseudonymiser is not None:
            wrong = list(key_problems(original.anchors, layout, expectations.pseudonymiser))
            problems += wrong
            key_checks = "failed" if wrong else "passed"
    return Verdict(list(dict.fromkeys(problems)), key_checks)


def validate_file(
    original: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    settings: Settings,
) -> list[str]:
    """Return the problems of ``output`` as a pseudonymisation of ``original`` (empty: valid)."""
    return validate_output(original, output, settings=settings).problems


def validate_dataset(original: Dataset, output: Dataset, pseudonymiser: Pseudonymiser) -> list[str]:
    """Return the problems of ``output`` as a pseudonymisation of ``original`` (empty: valid).

    Both are encoded as files first, so the checks see exactly the bytes a file would hold.
    """
    profile = pseudonymiser.profile
    codes = tuple(code for code, _ in profile.method_codes())
    expectations = Expectations(pseudonymiser, codes, None, profile)
    return check(read_original(_encoded(original)), _encoded(output), expectations).problems


def _encoded(dataset: Dataset) -> bytes:
    """The dataset as a file; file meta as it is when complete (pydicom would correct it)."""
    buffer = io.BytesIO()
    meta = getattr(dataset, "file_meta", None)
    complete = getattr(dataset, "preamble", None) is not None and "TransferSyntaxUID" in (
        meta or {}
    )
    with quiet_pydicom("output"):
        dataset.save_as(buffer, enforce_file_format=not complete)
    return buffer.getvalue()


_EXPECTATIONS: dict[int, tuple[Settings, dict[tuple[object, ...], Expectations]]] = {}
_EXPECTATIONS_KEPT = 16


def _expectations(
    settings: Settings, method_codes: tuple[str, ...] | None, profile_digest: str | None
) -> Expectations:
    """One :class:`Expectations` per run's settings and record markers, its caches reused.

    Keyed by the settings' identity (hashing them hashes the key, an HMAC each time); the
    settings are held, so their identity is not reused while the entry lives.
    """
    held = _EXPECTATIONS.get(id(settings))
    if held is None or held[0] is not settings:
        if len(_EXPECTATIONS) >= _EXPECTATIONS_KEPT:
            _EXPECTATIONS.clear()
        held = _EXPECTATIONS[id(settings)] = (settings, {})
    key = (method_codes, profile_digest)
    expectations = held[1].get(key)
    if expectations is None:
        expectations = held[1][key] = Expectations.from_settings(
            settings, method_codes=method_codes, profile_digest=profile_digest
        )
    return expectations


def _changes(profile: Profile | None, pseudonymiser: Pseudonymiser | None, tag: int) -> bool:
    """Whether the profile changes an element with this tag (removal aside)."""
    if profile is None:
        return False
    action = profile.rule_for(BaseTag(tag)).action
    if action is Action.REPLACE:
        dispatch = (
            pseudonymiser.dispatch if pseudonymiser is not None else pseudonymisation_dispatch
        )
        return dispatch.get(implicit_vr(tag)) is not keep_value
    return action in (Action.REMAP_UID, Action.EMPTY)


def _keyless_profile(settings: Settings) -> Profile:
    """The run's profile, which needs no key (the pseudonymiser does)."""
    return settings.resolved_profile
