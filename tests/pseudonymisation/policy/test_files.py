"""Tests for project profile files: what they change, and one clear line for each mistake."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pydicom.tag import Tag

from airflow_pseudo.cli import EXIT_USAGE, main
from airflow_pseudo.pseudonymisation import ConfigurationError, PseudonymKey, build_recipe
from airflow_pseudo.pseudonymisation.policy.files import load_profile_file
from airflow_pseudo.pseudonymisation.policy.profile import Action, Option, default_profile

GOOD = """\
name: brain-mri
base: default
options: [Clean Descriptors, Retain Device Identity]
date_shift_days: [-400, -30]
overrides:
  PatientWeight: remove
  (0018,1030): clean
  StudyDescription: {action: replace, value: BRAIN MRI}
  ConcatenationUID: keep
private:
  - {creator: SIEMENS CSA HEADER, tag: "(0029,xx10)", action: keep}
"""


def write(tmp_path: Path, text: str, name: str = "project.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def rule(profile, keyword: str):  # type: ignore[no-untyped-def]
    tag = tag_for_keyword(keyword)
    assert tag is not None
    return profile.rule_for(Tag(tag))


def test_a_profile_file_sets_base_options_overrides_private_rules_and_dates(tmp_path: Path):
    profile = load_profile_file(write(tmp_path, GOOD))
    assert profile.name == "brain-mri"
    assert Option.CLEAN_DESCRIPTORS in profile.options
    assert Option.RETAIN_DEVICE_IDENTITY in profile.options
    assert rule(profile, "PatientWeight").action is Action.REMOVE  # default keeps it
    assert rule(profile, "ProtocolName").action is Action.CLEAN
    constant = rule(profile, "StudyDescription")
    assert (constant.action, constant.value) == (Action.CONSTANT, "BRAIN MRI")
    assert rule(profile, "ConcatenationUID").action is Action.KEEP
    assert profile.private_rule("SIEMENS CSA HEADER ", Tag(0x00291010)).action is Action.KEEP
    assert profile.date_shift_days == (-400, -30)
    assert profile.digest != default_profile().digest


def test_the_file_range_applies_unless_the_job_sets_one(tmp_path: Path):
    path = write(tmp_path, GOOD)
    key = PseudonymKey(b"profile file test key, 32 bytes.")
    assert build_recipe(key=key, profile=path).date_shift_days == (-400, -30)
    assert build_recipe(key=key, profile=path, date_shift_days="-9,-2").date_shift_days == (-9, -2)


def test_a_constant_and_a_cleaned_description_reach_the_output(tmp_path: Path):
    key = PseudonymKey(b"profile file test key, 32 bytes.")
    recipe = build_recipe(key=key, profile=write(tmp_path, GOOD))
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    dataset.StudyDescription = "anything"
    dataset.ProtocolName = f"scan of {dataset.PatientID} axial"
    recipe.pseudonymiser.pseudonymise_in_place(dataset)
    assert dataset.StudyDescription == "BRAIN MRI"
    assert "axial" in dataset.ProtocolName
    assert str(pydicom.dcmread(get_testdata_file("MR_small.dcm")).PatientID) not in (
        dataset.ProtocolName
    )
    assert "PatientWeight" not in dataset


@pytest.mark.parametrize(
    ("text", "line", "key", "problem"),
    [
        ("overrides:\n  PatientNme: remove\n", 2, "PatientNme", "not a DICOM keyword"),
        ("overrides:\n  (0010,0010): obliterate\n", 2, "(0010,0010)", "unknown action"),
        (
            "overrides:\n  PatientName: keep\n  (0010,0010): remove\n",
            3,
            "(0010,0010)",
            "contradicts the rule for PatientName on line 2",
        ),
        ("options: [Clean Pixel Data]\n", None, "options", "cannot be honoured"),
        ("options: [Make Anonymous]\n", 1, "options", "unknown option"),
        ("base: pymedphys\n", 1, "base", "must be one of"),
        ("name: x\nmystery: 1\n", 2, "mystery", "unknown key"),
        ("overrides:\n  StudyDate: remap_uid\n", 2, "StudyDate", "remap_uid applies to UIDs"),
        ("overrides:\n  PatientName: {action: replace}\n", 2, "PatientName", "needs a value"),
        ("overrides:\n  (0029,1010): keep\n", 2, "(0029,1010)", "private"),
        ("date_shift_days: [-1]\n", 1, "date_shift_days", "two integers"),
        (
            "private:\n  - creator: X\n    tag: (0010,xx10)\n    action: keep\n",
            3,
            "tag",
            "private tag",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_file_line_and_key(
    tmp_path: Path, text: str, line: int | None, key: str, problem: str
):
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        load_profile_file(path)
    message = str(caught.value)
    where = f"{path}:{line}: " if line else f"{path}: "
    assert message.startswith(where + key + ": "), message
    assert key in message and problem in message and "\n" not in message


def test_unreadable_and_invalid_files_are_named(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="cannot read the profile file"):
        load_profile_file(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigurationError, match=r"bad\.yaml:2: not valid YAML"):
        load_profile_file(write(tmp_path, "name: x\n  - : [\n", "bad.yaml"))


def test_a_bad_profile_file_stops_the_cli_before_any_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_bytes: bytes
):
    """Exit 2, one line, and no output folder: nothing runs under a partly applied policy."""
    key_file = tmp_path / "k"
    key_file.write_bytes(key_bytes)
    profile = write(tmp_path, "overrides:\n  PatientNme: remove\n")
    source = get_testdata_file("CT_small.dcm")
    output = tmp_path / "out"
    code = main(["pseudonymise", source, "-o", str(output), "--key-file", str(key_file),
                 "--profile", profile])  # fmt: skip
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and err.count("\n") == 1 and ":2: PatientNme:" in err
    assert not output.exists()
