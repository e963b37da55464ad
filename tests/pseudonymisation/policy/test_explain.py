"""Tests for explain: the docs' summary table is the command's output; dry runs show no values."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from airflow_pseudo.cli import EXIT_OK, main
from airflow_pseudo.pseudonymisation.policy.explain import dry_run
from airflow_pseudo.pseudonymisation.policy.profile import research_profile

REPO = Path(__file__).parents[3]
START, END = "<!-- explain-summary:start -->", "<!-- explain-summary:end -->"


def explain(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["explain", *argv], stdout=out), out.getvalue()


@pytest.mark.parametrize("document", ["docs/profiles.md", "README.md"])
def test_the_docs_summary_table_equals_explain_summary(document: str):
    """The docs show exactly what ``airflow-pseudo explain --summary`` prints."""
    text = (REPO / document).read_text(encoding="utf-8")
    documented = text.split(START, 1)[1].split(END, 1)[0].strip()
    code, printed = explain("--summary")
    assert code == EXIT_OK
    assert documented == printed.strip()


def test_a_dry_run_names_every_element_and_never_a_value():
    path = get_testdata_file("693_J2KI.dcm")
    dataset = pydicom.dcmread(path)
    code, printed = explain("--profile", "research", path)
    assert code == EXIT_OK
    assert "(0008,2112) SourceImageSequence: remap uid" in printed
    assert "(0008,103E) SeriesDescription: clean" in printed
    values = [str(e.value) for e in dataset.iterall() if e.VR in ("PN", "LO", "UI", "DA", "SH")]
    leaked = [
        v for v in values if len(v) > 3 and v in printed.replace(str(dataset.SOPClassUID), "")
    ]
    assert leaked == []


def test_a_dry_run_follows_the_instance_iod():
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.AcquisitionDate = "20200101"
    lines = list(dry_run(research_profile(), dataset))
    assert any("AcquisitionDate: replace" in line for line in lines)  # dates option wins
    assert lines[0].startswith("Profile 'research'")


def test_explain_without_a_file_lists_every_rule():
    code, printed = explain("--profile", "basic")
    assert code == EXIT_OK
    assert "(0008,0080) InstitutionName: X/Z/D by IOD type" in printed
