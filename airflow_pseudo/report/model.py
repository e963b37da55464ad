"""Build the run report from the records of a run, and write it beside the manifest."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, Protocol

from airflow_pseudo import __version__

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
SCHEMA_VERSION = 1

#: DICOM CID 7050 "De-identification Method": the code values this tool may write.
METHOD_MEANINGS: Mapping[str, str] = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113102": "Clean Recognizable Visual Features Option",
    "113103": "Clean Graphics Option",
    "113104": "Clean Structured Content Option",
    "113105": "Clean Descriptors Option",
    "113106": "Retain Longitudinal Temporal Information Full Dates Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113110": "Retain UIDs Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain Institution Identity Option",
}

#: A pseudonymised output name: UIDs only (digits and dots), so it cannot carry a person's name.
_UID_NAME = re.compile(r"^[0-9][0-9.]*(\.dcm)?$")
#: Path parts this short are too common to be worth hiding from reasons ("a", "in", ...).
_MIN_HIDDEN_PART = 3


class _Writable(Protocol):
    """A folder to write into: ``pathlib.Path`` or ``airflow.sdk.ObjectStoragePath``."""

    def __truediv__(self, other: str) -> Any: ...


def neutral_name(output: str | None, index: int) -> str:
    """Return a name for a file that reveals nothing of the original.

    The output's own name is used when it is made of UIDs only (the ``uids`` layout names outputs
    by their new SOP Instance UID); otherwise, as for a failed input or the ``mirror`` layout that
    keeps the original names, the file's position in the run.

    :param output: the pseudonymised output path, if any.
    :param index: the file's position in the run, from 1.
    """
    if output:
        name = os.path.basename(output)
        if _UID_NAME.match(name):
            return name
    return f"file-{index:05d}"


def _hidden_parts(source: str | None) -> list[str]:
    """Return the original path and its parts, longest first, for removal from free text."""
    if not source:
        return []
    path = PurePath(source)
    parts = {source, str(path), path.name, path.stem, *path.parts}
    return sorted((p for p in parts if len(p) >= _MIN_HIDDEN_PART), key=len, reverse=True)


def scrub(text: str | None, source: str | None) -> str | None:
    """Remove the original path and each of its parts from `text` (a reason or a problem).

    :param text: free text from the pipeline; never holds a DICOM value, but may name a path.
    :param source: the original path of the file the text is about.
    """
    if text is None:
        return None
    for part in _hidden_parts(source):
        text = text.replace(part, "<input>")
    return text


def _profile(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Return the profile the records name (the most common one), or ``None`` if they do not."""
    named = [r for r in records if r.get("profile")]
    if not named:
        return None
    name, _ = Counter(str(r["profile"]) for r in named).most_common(1)[0]
    first = next(r for r in named if r["profile"] == name)
    codes = sorted({str(c) for r in named for c in r.get("method_codes") or ()})
    return {
        "name": name,
        "digest": first.get("profile_digest"),
        "method_codes": codes,
        "options": [METHOD_MEANINGS.get(code, code) for code in codes],
        "profiles_in_run": sorted({str(r["profile"]) for r in named}),
    }


def _step(step: Mapping[str, Any]) -> dict[str, Any]:
    seconds = step.get("seconds")
    files = step.get("files")
    rate = files / seconds if files is not None and seconds else None
    return {
        "task_id": step.get("task_id"),
        "map_index": step.get("map_index", -1),
        "operator": step.get("operator"),
        "state": step.get("state"),
        "seconds": None if seconds is None else round(float(seconds), 3),
        "files": files,
        "files_per_second": None if rate is None else round(rate, 2),
    }


def build_report(
    files: Sequence[Mapping[str, Any]],
    *,
    counts: Mapping[str, int],
    steps: Iterable[Mapping[str, Any]] = (),
    key_id: str | None = None,
    run: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    left_for_next_run: int | None = None,
) -> dict[str, Any]:
    """Return the report as a JSON-native dict.

    :param files: one record per input: ``source``, ``output``, ``status`` (as published),
        ``reason``, ``problems``, ``changes``, ``engine`` and, when the records carry them,
        ``seconds``, ``profile``, ``profile_digest`` and ``method_codes``. ``source`` is read
        only to remove it from reasons; it is not in the report.
    :param counts: the publish counts by status.
    :param steps: the run's tasks: ``task_id``, ``map_index``, ``operator``, ``state``,
        ``seconds`` (duration) and ``files`` (files the task handled, if known).
    :param key_id: the fingerprint of the key (never the key).
    :param run: ``dag_id``, ``run_id`` and the like.
    :param notes: sentences about the run as a whole.
    :param left_for_next_run: how many settled files the run left for the next one because it
        was capped at ``max_files`` (``None``: not known).
    """
    rows: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    for index, record in enumerate(files, start=1):
        source = record.get("source")
        reason = scrub(record.get("reason"), source)
        problems = [scrub(str(p), source) or "" for p in record.get("problems") or ()]
        if record.get("status") in {"quarantined", "failed"}:
            reasons[reason or (problems[0] if problems else "unknown")] += 1
        rows.append(
            {
                "index": index,
                "name": neutral_name(record.get("output"), index),
                "status": record.get("status"),
                "reason": reason,
                "problems": problems,
                "changes": dict(record.get("changes") or {}),
                "engine": record.get("engine"),
                "seconds": record.get("seconds"),
            }
        )
    return {
        "report": "airflow-pseudo run report",
        "schema": SCHEMA_VERSION,
        "tool": {"name": "airflow-pseudo", "version": __version__},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": dict(run or {}),
        "key_id": key_id,
        "profile": _profile(files),
        "counts": {"files": len(rows), **counts},
        "quarantine_reasons": [
            {"reason": reason, "files": n} for reason, n in sorted(reasons.items())
        ],
        "steps": [_step(step) for step in steps],
        "notes": list(notes),
        "left_for_next_run": left_for_next_run,
        "files": rows,
    }


def write_report(report: Mapping[str, Any], folder: _Writable) -> tuple[Any, Any]:
    """Write ``report.json`` and ``report.html`` into `folder`; return their paths.

    :param report: as returned by :func:`build_report`.
    :param folder: a ``pathlib.Path`` or an ``ObjectStoragePath``.
    """
    from airflow_pseudo.report.html import render_html

    json_path = folder / REPORT_JSON
    html_path = folder / REPORT_HTML
    for path, text in (
        (json_path, json.dumps(report, indent=1, sort_keys=True) + "\n"),
        (html_path, render_html(report)),
    ):
        with path.open("w", encoding="utf-8") as handle:
            handle.write(text)
    return json_path, html_path


def steps_with_files(
    breadcrumbs: Iterable[Mapping[str, Any]],
    files_by_task: Mapping[tuple[str, int], int],
) -> list[dict[str, Any]]:
    """Join Airflow's task breadcrumbs (task, map index, duration) with files handled per task.

    :param breadcrumbs: ``task_id``, ``map_index``, ``operator``, ``state``, ``duration``.
    :param files_by_task: files handled, keyed by ``(operator, map_index)``.
    """
    steps = []
    for crumb in breadcrumbs:
        map_index = -1 if crumb.get("map_index") is None else int(crumb["map_index"])
        operator = str(crumb.get("operator") or "")
        steps.append(
            {
                "task_id": crumb.get("task_id"),
                "map_index": map_index,
                "operator": operator,
                "state": crumb.get("state"),
                "seconds": crumb.get("duration"),
                "files": files_by_task.get((operator, map_index)),
            }
        )
    return sorted(steps, key=lambda s: (str(s["task_id"]), s["map_index"]))


def files_by_batch(operator: str, value: Any) -> dict[tuple[str, int], int]:
    """Count the records of a (possibly mapped) task's XCom per map index.

    A list of lists is a mapped task's output, in map-index order; a flat list is one task.

    :param operator: the operator's class name, as in Airflow's breadcrumbs.
    :param value: the task's XCom ``return_value``.
    """
    if not value:
        return {}
    items = list(value)
    if all(isinstance(item, Mapping) for item in items):
        return {(operator, -1): len(items)}
    return {
        (operator, index): len(item) if isinstance(item, Sequence) else 0
        for index, item in enumerate(items)
        if item is not None
    }
