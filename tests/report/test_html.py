"""Tests for the HTML page: self-contained, escaped, with its rows and charts."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from airflow_pseudo.report import build_report, render_html


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _report() -> dict:
    files = [
        {"source": f"/in/p{i}.dcm", "output": f"/o/2.25.{i}.dcm", "status": "published"}
        for i in range(3)
    ] + [{"source": "/in/x.dcm", "status": "failed", "reason": "<script>alert(1)</script>"}]
    steps = [{"task_id": "pseudonymise", "seconds": 2.0, "files": 4}]
    return build_report(files, counts={"published": 3, "failed": 1}, steps=steps, key_id="abc")


def test_loads_nothing_from_outside():
    """No script, no external stylesheet, font or image: the page works offline."""
    page = render_html(_report())
    parser = _Collector()
    parser.feed(page)
    tags = [tag for tag, _ in parser.tags]
    assert "script" not in tags
    assert "link" not in tags
    assert "img" not in tags
    assert not re.search(r"(src|href)=", page)
    assert "@import" not in page
    assert "url(" not in page


def test_has_a_row_per_file_and_both_charts():
    parser = _Collector()
    parser.feed(render_html(_report()))
    rows = [attrs for tag, attrs in parser.tags if tag == "tr" and attrs.get("class") == "file"]
    assert [r["data-status"] for r in rows] == ["published"] * 3 + ["failed"]
    labels = [attrs.get("aria-label") for tag, attrs in parser.tags if tag == "svg"]
    assert labels == ["Files by status", "Files per second per task"]


def test_values_are_escaped():
    page = render_html(_report())
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_key_id_and_rate_are_shown():
    page = render_html(_report())
    assert "<dt>Key id</dt><dd>abc</dd>" in page
    assert "2.0/s" in page


def test_files_left_for_the_next_run_are_noted():
    """The count of files a capped run left is shown at the top; nothing is said when none."""
    files = [{"source": "/in/p.dcm", "output": "/o/2.25.1.dcm", "status": "published"}]
    capped = render_html(build_report(files, counts={"published": 1}, left_for_next_run=4))
    assert "4 settled file(s) left for the next run (max_files)" in capped
    for left in (0, None):
        page = render_html(build_report(files, counts={"published": 1}, left_for_next_run=left))
        assert "left for the next run" not in page
