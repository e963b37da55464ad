"""Tests for result files: whole JSON lines, readable by their owner only."""

from __future__ import annotations

import json
from pathlib import Path

from airflow_pseudo.pseudonymisation.io.records import ResultsFile


def test_records_are_whole_lines_in_a_private_file(tmp_path: Path):
    path = tmp_path / "results.jsonl"
    path.write_text("old content that is longer than what follows\n" * 10)
    path.chmod(0o644)
    with ResultsFile(path) as results:
        results.write({"source": "a\nb.dcm", "status": "ok"})
        results.write({"source": "c.dcm", "status": "failed"})
        assert results.written == 2
    lines = path.read_text().splitlines()
    assert [json.loads(line)["source"] for line in lines] == ["a\nb.dcm", "c.dcm"]
    assert path.stat().st_mode & 0o777 == 0o600
