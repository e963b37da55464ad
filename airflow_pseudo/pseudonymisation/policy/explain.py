"""Explain a profile: its rules, a summary of the shipped profiles, and a dry run over a file.

Nothing here prints a DICOM value: a dry run names each element by tag and keyword and says
which action its rule takes, and why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from airflow_pseudo.pseudonymisation.policy.profile import (
    PRIVATE,
    PRIVATE_CREATOR,
    PROFILES,
    Action,
    Profile,
    Rule,
    describe_rule,
)

_COLUMNS = (
    ("keep", lambda rule: rule.action is Action.KEEP and rule.choices is None),
    ("remove", lambda rule: rule.action is Action.REMOVE and rule.choices is None),
    ("empty", lambda rule: rule.action is Action.EMPTY and rule.choices is None),
    ("pseudonymise", lambda rule: rule.action is Action.REPLACE and rule.choices is None),
    ("remap UID", lambda rule: rule.action is Action.REMAP_UID and rule.choices is None),
    ("clean", lambda rule: rule.action is Action.CLEAN),
    ("by IOD type", lambda rule: rule.choices is not None),
)


def summary_table() -> Iterator[str]:
    """A Markdown table of the shipped profiles: options, rules per action, digest."""
    header = ["profile", "method codes", *(name for name, _ in _COLUMNS), "digest"]
    yield "| " + " | ".join(header) + " |"
    yield "|" + "---|" * len(header)
    for name, make in PROFILES.items():
        profile = make()
        counts: Counter[str] = Counter()
        for rule in profile.rules.values():
            for column, matches in _COLUMNS:
                if matches(rule):
                    counts[column] += 1
        codes = ", ".join(code for code, _ in profile.method_codes()) or "none"
        cells = [f"`{name}`", codes, *(str(counts[c]) for c, _ in _COLUMNS), profile.digest]
        yield "| " + " | ".join(cells) + " |"


def dry_run(profile: Profile, dataset: Dataset) -> Iterator[str]:
    """What ``profile`` would do to each element of ``dataset``, at every depth (no values)."""
    sop_class = str(dataset.get("SOPClassUID", "") or "") or None
    yield f"Profile {profile.name!r} (digest {profile.digest}) on an instance of {sop_class}"
    yield from _level(profile, dataset, sop_class, (), "")


def _level(
    profile: Profile,
    dataset: Dataset,
    sop_class: str | None,
    parents: tuple[int, ...],
    indent: str,
) -> Iterator[str]:
    creators = {
        (tag.group, tag.element): element.value
        for tag, element in ((BaseTag(t), dataset[t]) for t in list(dataset.keys()))
        if tag.is_private and 0x10 <= tag.element <= 0xFF
    }
    kept_blocks = set()
    rules: dict[int, Rule] = {}
    for tag in list(dataset.keys()):
        tag = BaseTag(tag)
        if tag.is_private and tag.element >= 0x1000:
            creator = creators.get((tag.group, tag.element >> 8))
            rule = profile.private_rule(creator if isinstance(creator, str) else None, tag)
            if rule.action is not Action.REMOVE:
                kept_blocks.add((tag.group, tag.element >> 8))
        elif tag.is_private:
            rule = PRIVATE
        else:
            rule = profile.rule_for(tag, sop_class, parents)
        rules[tag] = rule
    for tag in list(dataset.keys()):
        tag = BaseTag(tag)
        rule = rules[tag]
        if tag.is_private and (tag.group, tag.element) in kept_blocks:
            rule = PRIVATE_CREATOR
        keyword = keyword_for_tag(tag) or _unnamed(tag)
        yield f"{indent}{tag} {keyword}: {describe_rule(rule)}"
        element = dataset[tag]
        if element.VR == "SQ" and rule.action not in (Action.REMOVE, Action.EMPTY):
            for number, item in enumerate(element.value, start=1):
                yield f"{indent}  item {number}"
                yield from _level(profile, item, sop_class, (*parents, int(tag)), indent + "    ")


def _unnamed(tag: BaseTag) -> str:
    if tag.element == 0:
        return "GroupLength"
    return "private" if tag.is_private else "unknown"
