"""Regenerate ``airflow_pseudo/pseudonymisation/policy/tables/_iod_table.py`` from the standard.

Input: the JSON tables of DICOM PS3.3 and PS3.4 published by the MIT-licensed
innolitics/dicom-standard project, as installed by its PyPI package ``dicom-standard`` 0.1.0
(``sops.json``, ``ciods.json``, ``ciod_to_modules.json``, ``module_to_attributes.json``, and for
the multi-frame functional groups ``ciod_to_fg_macros.json`` and ``macro_to_attributes.json``).
Run: ``.venv/bin/python tools/generate_iod_types.py``.

Each module and functional group macro becomes a tree keyed by the chain of enclosing sequence
tags. For every IOD named by a SOP class, the table lists the trees of all its modules (mandatory,
conditional and user optional: an attribute's Type applies whenever its module is present) and
of its functional group macros, each placed inside both Shared and Per-Frame Functional Groups
Sequence items. ``iod_types.attribute_type`` walks them all; where one path is defined by
several modules or macros, the strictest Type wins (1, 1C, 2, 2C, 3).
Repeating groups (``60xx`` overlays) are stored under their first group (6000).
Identical subtrees are stored once, so the shipped table stays small: each node is a tuple of
``(tag, Type, child node or -1)`` and each IOD is a tuple of root node indexes.
"""

from __future__ import annotations

import json
import textwrap
from functools import cache
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
TARGET = HERE.parent / "airflow_pseudo" / "pseudonymisation" / "policy" / "tables" / "_iod_table.py"
PACKAGE = "dicom-standard"
STRICTNESS = ("1", "1C", "2", "2C", "3")
FUNCTIONAL_GROUP_SEQUENCES = (0x52009229, 0x52009230)
LINE_LENGTH = 100  # as ruff; the generated data is filled, so it is marked fmt: off

# A tree: tag -> [Type, subtree].
Tree = dict[int, list[Any]]
Node = tuple[tuple[int, str, int], ...]


@cache
def _standard_file(name: str) -> Path:
    """Return the path of one JSON table installed by the ``dicom-standard`` package."""
    dist = distribution(PACKAGE)
    for file in dist.files or ():
        if file.name == name and file.parent.name == "standard":
            return Path(str(dist.locate_file(file)))
    raise FileNotFoundError(f"{name} is not installed by {PACKAGE}")


def _load(name: str) -> Any:
    return json.loads(_standard_file(name).read_text(encoding="utf-8"))


def _stricter(first: str | None, second: str) -> str:
    if first is None:
        return second
    return min(first, second, key=STRICTNESS.index)


def _insert(tree: Tree, path: list[int], type_: str) -> None:
    for tag in path[:-1]:
        tree = tree.setdefault(tag, [None, {}])[1]
    entry = tree.setdefault(path[-1], [None, {}])
    if type_ in STRICTNESS:
        entry[0] = _stricter(entry[0], type_)


def _merge(into: Tree, tree: Tree) -> None:
    for tag, (type_, children) in tree.items():
        entry = into.setdefault(tag, [None, {}])
        if type_ is not None:
            entry[0] = _stricter(entry[0], type_)
        _merge(entry[1], children)


def _tag(text: str) -> int:
    """Return the tag of a path part; a repeating group such as ``60xx`` is stored as ``6000``."""
    return int(text.replace("x", "0"), 16)


def _owner_trees(rows: list[dict[str, Any]], owner_key: str) -> dict[str, Tree]:
    trees: dict[str, Tree] = {}
    for row in rows:
        path = [_tag(part) for part in row["path"].split(":")[1:]]
        _insert(trees.setdefault(row[owner_key], {}), path, row["type"])
    return trees


def build() -> tuple[dict[str, str], dict[str, tuple[int, ...]], list[Node]]:
    """Return (SOP class UID -> IOD, IOD -> root nodes, nodes) from the installed package.

    An IOD's root nodes are those of its modules, then those of its functional group macros
    wrapped in the two functional groups sequences.
    """
    ciod_ids = {ciod["name"]: ciod["id"] for ciod in _load("ciods.json")}
    sop_classes = {sop["id"]: ciod_ids[sop["ciod"]] for sop in _load("sops.json")}
    modules = _owner_trees(_load("module_to_attributes.json"), "moduleId")
    macros = _owner_trees(_load("macro_to_attributes.json"), "macroId")
    iods = sorted(set(sop_classes.values()))
    parts: dict[str, list[Tree]] = {iod: [] for iod in iods}
    for row in _load("ciod_to_modules.json"):
        if row["ciodId"] in parts and row["moduleId"] in modules:
            parts[row["ciodId"]].append(modules[row["moduleId"]])
    for row in _load("ciod_to_fg_macros.json"):
        if row["ciodId"] in parts and row["macroId"] in macros:
            macro = macros[row["macroId"]]
            parts[row["ciodId"]] += [{seq: [None, macro]} for seq in FUNCTIONAL_GROUP_SEQUENCES]

    nodes: dict[Node, int] = {}

    def intern(tree: Tree) -> int:
        key = tuple(
            (tag, type_ or "", intern(children) if children else -1)
            for tag, (type_, children) in sorted(tree.items())
        )
        return nodes.setdefault(key, len(nodes))

    roots = {iod: tuple(sorted({intern(tree) for tree in parts[iod]})) for iod in iods}
    return dict(sorted(sop_classes.items())), roots, list(nodes)


def _wrapped(opening: str, items: list[str], closing: str) -> list[str]:
    """Return the lines of one indented literal, its items filled up to the line length."""
    text = " ".join([opening, *items]).replace("( ", "(") + closing
    return textwrap.wrap(
        text,
        LINE_LENGTH,
        initial_indent="    ",
        subsequent_indent="        ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def render() -> str:
    """Return the text of the generated module."""
    sop_classes, roots, nodes = build()
    version = distribution(PACKAGE).version
    lines = [
        '"""Type of each attribute in each IOD of DICOM PS3.3, generated by'
        " tools/generate_iod_types.py.",
        "",
        "Do not edit. Source: innolitics/dicom-standard (MIT licence), PyPI package"
        f" dicom-standard {version}.",
        "Read it through :mod:`airflow_pseudo.pseudonymisation.policy.tables.iod_types`.",
        '"""',
        "",
        f'SOURCE = "{PACKAGE} {version}"',
        "",
        "# SOP Class UID -> IOD identifier.",
        "# fmt: off",
        "SOP_CLASS_IODS: dict[str, str] = {",
    ]
    for uid, iod in sop_classes.items():
        lines += _wrapped(f'"{uid}":', [f'"{iod}",'], "")
    lines += [
        "}",
        "",
        "# IOD identifier -> root nodes (its modules and functional group macros) in NODES.",
        "IOD_ROOTS: dict[str, tuple[int, ...]] = {",
    ]
    for iod, root in roots.items():
        lines += _wrapped(f'"{iod}": (', [f"{node}," for node in root], "),")
    lines += [
        "}",
        "",
        "# Each node lists the attributes of one level: (tag, Type, child node or -1);",
        '# Type "" marks a sequence that only encloses the attributes of a functional group macro.',
        "NODES: tuple[tuple[tuple[int, str, int], ...], ...] = (",
    ]
    for node in nodes:
        entries = [f'(0x{tag:08X}, "{type_}", {child}),' for tag, type_, child in node]
        lines += _wrapped("(", entries, "),")
    lines += [")", "# fmt: on", ""]
    return "\n".join(lines)


def main() -> None:
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
