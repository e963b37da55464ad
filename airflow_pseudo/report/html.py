"""Render the run report as one self-contained HTML page: inline CSS and SVG, no script, no font.

The page works offline and from a file: it loads nothing. Every value is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

#: Colours of the statuses, shared by the chart and the table.
STATUS_COLOURS: Mapping[str, str] = {
    "published": "#2e7d32",
    "unchanged": "#66bb6a",
    "skipped": "#9e9e9e",
    "quarantined": "#ef6c00",
    "failed": "#c62828",
}
_STATUS_ORDER = tuple(STATUS_COLOURS)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em;color:#222}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .5em}
.meta{color:#555}.meta dt{font-weight:600;float:left;clear:left;width:9em}
.meta dd{margin:0 0 .2em 9.5em}
table{border-collapse:collapse;margin:.3em 0}th,td{padding:.25em .7em;text-align:left;
border-bottom:1px solid #ddd;vertical-align:top}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{font-weight:600}.note{background:#fff8e1;border-left:4px solid #ffb300;padding:.4em .8em}
.cards{display:flex;flex-wrap:wrap;gap:.8em}.card{border:1px solid #ddd;border-radius:6px;
padding:.5em 1em;min-width:6em}.card b{display:block;font-size:1.6em}
svg text{font:12px system-ui,sans-serif}
"""


def _text(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _status_chart(counts: Mapping[str, int], width: int = 620) -> str:
    """Return a stacked bar of the files by status, with a legend."""
    total = sum(counts.get(status, 0) for status in _STATUS_ORDER)
    parts = []
    x = 0.0
    for status in _STATUS_ORDER:
        n = counts.get(status, 0)
        if not n:
            continue
        w = width * n / total
        parts.append(
            f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="28" '
            f'fill="{STATUS_COLOURS[status]}"><title>{status}: {n}</title></rect>'
        )
        x += w
    legend = []
    for i, status in enumerate(_STATUS_ORDER):
        lx = i * (width // len(_STATUS_ORDER))
        legend.append(
            f'<rect x="{lx}" y="40" width="12" height="12" fill="{STATUS_COLOURS[status]}"/>'
            f'<text x="{lx + 16}" y="51">{status} {counts.get(status, 0)}</text>'
        )
    if not total:
        parts.append(f'<rect x="0" y="0" width="{width}" height="28" fill="#eee"/>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Files by status" '
        f'width="{width}" height="60" viewBox="0 0 {width} 60">{"".join(parts)}'
        f"{''.join(legend)}</svg>"
    )


def _rate_chart(steps: Sequence[Mapping[str, Any]], width: int = 520) -> str:
    """Return a horizontal bar per task of the files it handled per second."""
    rated = [s for s in steps if s.get("files_per_second")]
    if not rated:
        return "<p>No task reported both a duration and a file count.</p>"
    label_width, bar_height = 180, 18
    top = max(float(s["files_per_second"]) for s in rated)
    rows = []
    for i, step in enumerate(rated):
        y = i * (bar_height + 6)
        rate = float(step["files_per_second"])
        w = (width - label_width - 70) * rate / top
        label = str(step["task_id"])
        if step.get("map_index", -1) not in (-1, None):
            label += f" [{step['map_index']}]"
        rows.append(
            f'<text x="0" y="{y + 13}">{_text(label)}</text>'
            f'<rect x="{label_width}" y="{y}" width="{w:.1f}" height="{bar_height}" '
            f'fill="#1565c0"><title>{rate:.2f} files/s</title></rect>'
            f'<text x="{label_width + w + 4:.1f}" y="{y + 13}">{rate:.1f}/s</text>'
        )
    height = len(rated) * (bar_height + 6)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Files per second per '
        f'task" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f"{''.join(rows)}</svg>"
    )


def _changes(changes: Mapping[str, int]) -> str:
    return ", ".join(f"{_text(k)} {int(v)}" for k, v in sorted(changes.items()) if v)


def _file_rows(files: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for row in files:
        status = str(row.get("status"))
        reason = row.get("reason") or "; ".join(row.get("problems") or ())
        seconds = row.get("seconds")
        rows.append(
            f'<tr class="file" data-status="{_text(status)}">'
            f'<td class="num">{int(row["index"])}</td><td>{_text(row.get("name"))}</td>'
            f'<td class="status" style="color:{STATUS_COLOURS.get(status, "#222")}">'
            f"{_text(status)}</td><td>{_text(reason)}</td>"
            f"<td>{_changes(row.get('changes') or {})}</td><td>{_text(row.get('engine'))}</td>"
            f'<td class="num">{"" if seconds is None else f"{float(seconds):.3f}"}</td></tr>'
        )
    return "".join(rows)


def _step_rows(steps: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for step in steps:
        map_index = step.get("map_index", -1)
        seconds = step.get("seconds")
        rows.append(
            f"<tr><td>{_text(step.get('task_id'))}</td>"
            f"<td class='num'>{'' if map_index in (-1, None) else int(map_index)}</td>"
            f"<td>{_text(step.get('state'))}</td>"
            f"<td class='num'>{'' if seconds is None else format(float(seconds), '.1f')}</td>"
            f"<td class='num'>{_text(step.get('files'))}</td>"
            f"<td class='num'>{_text(step.get('files_per_second'))}</td></tr>"
        )
    return "".join(rows)


def _definition_list(items: Sequence[tuple[str, Any]]) -> str:
    return "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in items)


def _steps_table(rows: str) -> str:
    if not rows:
        return "<p>No step durations recorded.</p>"
    return (
        "<table id='steps'><tr><th>Task</th><th>Map index</th><th>State</th><th>Seconds</th>"
        f"<th>Files</th><th>Files/s</th></tr>{rows}</table>"
    )


def render_html(report: Mapping[str, Any]) -> str:
    """Return the report as a self-contained HTML document.

    :param report: as returned by :func:`~airflow_pseudo.report.model.build_report`.
    """
    counts: Mapping[str, int] = report.get("counts", {})
    run: Mapping[str, Any] = report.get("run", {})
    profile: Mapping[str, Any] = report.get("profile") or {}
    tool: Mapping[str, Any] = report.get("tool", {})
    meta = _definition_list(
        [
            ("DAG", run.get("dag_id") or "-"),
            ("Run", run.get("run_id") or "-"),
            ("Created", report.get("created")),
            ("Tool", f"{tool.get('name', '')} {tool.get('version', '')}"),
            ("Key id", report.get("key_id") or "not recorded"),
            ("Profile", profile.get("name") or "not recorded"),
            ("Profile digest", profile.get("digest") or "-"),
            ("Options", ", ".join(profile.get("options") or ()) or "-"),
        ]
    )
    cards = "".join(
        f'<div class="card" data-count="{_text(k)}"><b>{int(v)}</b>{_text(k)}</div>'
        for k, v in counts.items()
    )
    notes = "".join(f'<p class="note">{_text(n)}</p>' for n in report.get("notes") or ())
    if left := report.get("left_for_next_run"):
        notes += (
            f'<p class="note" id="left-for-next-run">{int(left)} settled file(s) left for the '
            "next run (max_files)</p>"
        )
    reasons = "".join(
        f"<tr><td>{_text(r['reason'])}</td><td class='num'>{int(r['files'])}</td></tr>"
        for r in report.get("quarantine_reasons") or ()
    )
    steps = _step_rows(report.get("steps") or ())
    reasons_table = (
        f"<table id='reasons'><tr><th>Reason</th><th>Files</th></tr>{reasons}</table>"
        if reasons
        else "<p>None.</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>De-identification report {_text(run.get("run_id") or "")}</title>
<style>{_CSS}</style></head>
<body>
<h1>De-identification report</h1>
<dl class="meta">{meta}</dl>
{notes}
<h2>Files by status</h2>
<div class="cards">{cards}</div>
{_status_chart(counts)}
<h2>Quarantine reasons</h2>
{reasons_table}
<h2>Steps</h2>
{_steps_table(steps)}
<h3>Files per second per task</h3>
{_rate_chart(report.get("steps") or ())}
<h2>Files</h2>
<table id="files"><tr><th>#</th><th>Name</th><th>Status</th><th>Reason</th><th>Changes</th>
<th>Engine</th><th>Seconds</th></tr>{_file_rows(report.get("files") or ())}</table>
</body></html>
"""
