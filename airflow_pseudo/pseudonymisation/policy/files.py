"""Project profile files: a shipped base, options and per-attribute overrides, in YAML.

Example (``docs/profiles.md`` describes every key)::

    name: brain-mri-study
    base: research                 # basic, default or research
    options: [Retain Device Identity]
    date_shift_days: [-400, -30]
    overrides:
      PatientWeight: remove        # by keyword
      (0018,1030): clean           # by tag: ProtocolName
      StudyDescription: {action: replace, value: BRAIN MRI}
    private:                       # by private creator and element offset
      - {creator: SIEMENS CSA HEADER, tag: "(0029,xx10)", action: keep}

A file is validated completely before it is used: any problem is a
:class:`ConfigurationError` whose one line names the file, the line and the key, so no file is
ever processed under a partly applied policy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydicom.datadict import tag_for_keyword

from airflow_pseudo.pseudonymisation.errors import ConfigurationError
from airflow_pseudo.pseudonymisation.policy.profile import (
    CLEANED_TEXT_VRS,
    SHIPPED_OPTIONS,
    Action,
    Option,
    Profile,
    Rule,
    build_profile,
    vr_of,
)

ACTIONS = {
    "keep": Action.KEEP,
    "remove": Action.REMOVE,
    "empty": Action.EMPTY,
    "pseudonymise": Action.REPLACE,
    "remap_uid": Action.REMAP_UID,
    "shift_date": Action.REPLACE,
    "replace": Action.CONSTANT,
    "clean": Action.CLEAN,
}
"""Actions a profile file may name, and what each does."""
PRIVATE_ACTIONS = ("keep", "remove")
_KEYS = ("name", "base", "options", "date_shift_days", "overrides", "private")
_TAG = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?$")
_PRIVATE_TAG = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*[xX]{2}([0-9A-Fa-f]{2})\s*\)?$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,40}$")


class _File:
    """One file being read: where each problem is, for the error message."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, node: yaml.Node | None, key: str, problem: str) -> ConfigurationError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return ConfigurationError(f"{self.path}{line}: {key}: {problem}")

    def scalar(self, node: yaml.Node, key: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, key, "expected a single value")
        return str(node.value).strip()

    def scalars(self, node: yaml.Node, key: str) -> list[str]:
        if isinstance(node, yaml.ScalarNode):
            return [part.strip() for part in str(node.value).split(",") if part.strip()]
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, key, "expected a list")
        return [self.scalar(item, key) for item in node.value]

    def mapping(self, node: yaml.Node, key: str) -> list[tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key, "expected a mapping")
        return list(node.value)


def load_profile_file(
    path: str, keep_keywords: Iterable[str] = (), extra_options: Iterable[Option] = ()
) -> Profile:
    """Read, validate and resolve a project profile file.

    :param path: the YAML file.
    :param keep_keywords: the caller's keep list, which wins over the file.
    :param extra_options: options added to the file's (from the job's recipe).
    :raises ConfigurationError: naming file, line and key, for any problem.
    """
    from airflow_pseudo.pseudonymisation.policy.recipe import parse_date_shift_days

    source = _File(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigurationError(f"{path}: cannot read the profile file: {reason}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigurationError(f"{path}{line}: not valid YAML: {problem}") from None
    if root is None:
        raise ConfigurationError(f"{path}: the profile file is empty")
    name, base = Path(path).stem, "default"
    options: list[Option] = []
    dates: tuple[int, int] | None = None
    overrides: dict[int, Rule] = {}
    private: dict[tuple[str, int, int], Rule] = {}
    seen: set[str] = set()
    for key_node, value in source.mapping(root, "profile"):
        key = source.scalar(key_node, "profile")
        if key not in _KEYS:
            raise source.error(key_node, key, f"unknown key (expected one of {', '.join(_KEYS)})")
        if key in seen:
            raise source.error(key_node, key, "given twice")
        seen.add(key)
        if key == "name":
            name = source.scalar(value, key)
            if not _NAME.match(name):
                raise source.error(value, key, "use 1-40 letters, digits, '.', '_' or '-'")
        elif key == "base":
            base = source.scalar(value, key)
            if base not in SHIPPED_OPTIONS:
                raise source.error(value, key, f"must be one of {', '.join(SHIPPED_OPTIONS)}")
        elif key == "options":
            for option in source.scalars(value, key):
                try:
                    options.append(Option.parse(option))
                except ConfigurationError as exc:
                    raise source.error(value, key, str(exc)) from None
        elif key == "date_shift_days":
            raw: Any = source.scalars(value, key)
            try:
                dates = parse_date_shift_days(raw)
            except ConfigurationError as exc:
                raise source.error(value, key, str(exc)) from None
        elif key == "overrides":
            overrides = _overrides(source, value)
        else:
            private = _private(source, value)
    base_options, seed = SHIPPED_OPTIONS[base]
    chosen = tuple(dict.fromkeys((*base_options, *options, *extra_options)))
    try:
        profile = build_profile(
            name,
            chosen,
            seed_keywords=seed,
            keep_keywords=keep_keywords,
            overrides=overrides,
            private_overrides=private,
            date_shift_days=dates,
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: options: {exc}") from None
    return profile


def _overrides(source: _File, node: yaml.Node) -> dict[int, Rule]:
    rules: dict[int, Rule] = {}
    where: dict[int, str] = {}
    for key_node, value in source.mapping(node, "overrides"):
        key = source.scalar(key_node, "overrides")
        tag = _tag(key)
        if tag is None:
            raise source.error(key_node, key, "not a DICOM keyword or tag (gggg,eeee)")
        if tag >> 16 & 1:
            raise source.error(
                key_node, key, "a private tag: list it under 'private' with its creator"
            )
        rule = _rule(source, key, value, tag)
        if tag in rules and rules[tag] != rule:
            raise source.error(key_node, key, f"contradicts the rule for {where[tag]}")
        rules[tag], where[tag] = rule, f"{key} on line {key_node.start_mark.line + 1}"
    return rules


def _rule(source: _File, key: str, node: yaml.Node, tag: int) -> Rule:
    value: str | None = None
    if isinstance(node, yaml.MappingNode):
        fields = {source.scalar(k, key): v for k, v in node.value}
        unknown = fields.keys() - {"action", "value"}
        if unknown or "action" not in fields:
            raise source.error(node, key, "expected {action: ..., value: ...}")
        name = source.scalar(fields["action"], key)
        if "value" in fields:
            value = source.scalar(fields["value"], key)
    else:
        name = source.scalar(node, key)
    action = ACTIONS.get(name)
    if action is None:
        raise source.error(node, key, f"unknown action {name!r} (one of {', '.join(ACTIONS)})")
    vr = vr_of(tag)
    problem = None
    if (action is Action.CONSTANT) != (value is not None):
        problem = "'replace' needs a value, and only 'replace' takes one"
    elif name == "remap_uid" and vr != "UI":
        problem = f"remap_uid applies to UIDs, this attribute is {vr}"
    elif name == "shift_date" and vr not in ("DA", "DT"):
        problem = f"shift_date applies to dates (DA, DT), this attribute is {vr}"
    elif name == "clean" and vr not in CLEANED_TEXT_VRS | {"SQ"}:
        problem = f"clean applies to text and sequences, this attribute is {vr}"
    elif name == "replace" and vr == "SQ":
        problem = "a sequence cannot be replaced by a constant"
    if problem:
        raise source.error(node, key, problem)
    if name == "pseudonymise" and vr == "UI":
        action = Action.REMAP_UID
    return Rule(action, f"project profile: {name}", value=value)


def _private(source: _File, node: yaml.Node) -> dict[tuple[str, int, int], Rule]:
    if not isinstance(node, yaml.SequenceNode):
        raise source.error(node, "private", "expected a list of {creator, tag, action}")
    rules: dict[tuple[str, int, int], Rule] = {}
    for item in node.value:
        fields = {source.scalar(k, "private"): v for k, v in source.mapping(item, "private")}
        if fields.keys() != {"creator", "tag", "action"}:
            raise source.error(item, "private", "expected exactly creator, tag and action")
        creator = source.scalar(fields["creator"], "creator")
        pattern = source.scalar(fields["tag"], "tag")
        match = _PRIVATE_TAG.match(pattern)
        if not match or not int(match.group(1), 16) & 1:
            raise source.error(fields["tag"], "tag", "expected a private tag like (0029,xx10)")
        action = source.scalar(fields["action"], "action")
        if action not in PRIVATE_ACTIONS:
            raise source.error(fields["action"], "action", "private attributes: keep or remove")
        key = (creator, int(match.group(1), 16), int(match.group(2), 16))
        rule = Rule(ACTIONS[action], f"project profile: {action} ({creator})")
        if key in rules and rules[key] != rule:
            raise source.error(item, "private", f"contradicts an earlier rule for {pattern}")
        rules[key] = rule
    return rules


def _tag(key: str) -> int | None:
    match = _TAG.match(key)
    if match:
        return int(match.group(1), 16) << 16 | int(match.group(2), 16)
    if re.fullmatch(r"(0x)?[0-9A-Fa-f]{8}", key):
        return int(key, 16)
    return tag_for_keyword(key)
