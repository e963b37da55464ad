"""The research profile keeps MR research-usable: dcm2niix makes the same data from the output.

For real GE, Siemens and Philips series (tests/data/mr-vendor), dcm2niix converts the input and
the pseudonymised output: the NIfTI voxels and scaling must be equal, the bval/bvec files
identical, and every BIDS sidecar field unchanged except identity fields (dates and times,
institution, station, serial number, names, UIDs, the de-identification record).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation import Settings, pseudonymise_files
from airflow_pseudo.pseudonymisation.policy.private import safe_private_attribute

from .conftest import KEY, SERIES, compare, convert, stage, subject_identifiers


def _pseudonymise(folder: Path, output: Path, profile: str) -> Path:
    settings = Settings(key=KEY, profile=profile)
    files = sorted(folder.iterdir())
    results = pseudonymise_files(files, output, settings=settings)
    failed = [r.reason for r in results if r.status != "ok"]
    assert not failed
    return output


@pytest.mark.slow
@pytest.mark.parametrize("vendor", sorted(SERIES))
def test_research_output_converts_to_the_same_data(
    vendor: str, dcm2niix: str, tmp_path: Path
) -> None:
    staged = stage(SERIES[vendor], tmp_path / "in")
    output = _pseudonymise(staged, tmp_path / "pseudonymised", "research")
    before = convert(dcm2niix, staged, tmp_path / "nifti-in")
    after = convert(dcm2niix, output, tmp_path / "nifti-out")
    assert before, "dcm2niix should convert the input"
    # A description holding the subject's own name (a phantom named after the protocol) is
    # cleaned by design; any other change fails.
    result = compare(before, after, subject_identifiers(staged))
    assert not result.missing_volumes
    assert result.identical_volumes == result.volumes
    assert not result.different_gradients
    assert not result.lost_fields, f"acquisition fields lost: {sorted(result.lost_fields)}"
    assert not result.changed_fields, f"fields changed: {sorted(result.changed_fields)}"


def _keep_only_safe_private(ds: Dataset) -> None:
    """Remove, at every depth, each private element the safe private dictionary does not list."""
    for element in list(ds):
        tag = element.tag
        if tag.is_private and not tag.is_private_creator:
            creator_tag = (tag.group << 16) | (tag.element >> 8)
            creator = str(ds[creator_tag].value) if creator_tag in ds else ""
            if safe_private_attribute(creator, tag.group, tag.element & 0xFF) is None:
                del ds[tag]
                continue
        if element.VR == "SQ":
            for item in element.value:
                _keep_only_safe_private(item)


@pytest.mark.parametrize("vendor", sorted(SERIES))
def test_safe_private_dictionary_keeps_everything_dcm2niix_reads(
    vendor: str, dcm2niix: str, tmp_path: Path
) -> None:
    staged = stage(SERIES[vendor], tmp_path / "in")
    stripped = tmp_path / "safe-private-only"
    stripped.mkdir()
    for path in staged.iterdir():
        ds = pydicom.dcmread(path)
        _keep_only_safe_private(ds)
        ds.save_as(stripped / path.name)
    before = convert(dcm2niix, staged, tmp_path / "nifti-in")
    result = compare(before, convert(dcm2niix, stripped, tmp_path / "nifti-out"))
    assert result.faithful, result


def test_comparison_sees_a_lost_field_and_a_changed_volume(dcm2niix: str, tmp_path: Path) -> None:
    before = convert(dcm2niix, stage(SERIES["Siemens"], tmp_path / "in"), tmp_path / "a")
    assert compare(before, before).faithful
    (name, volume), *_ = before.items()
    lost = {name: type(volume)(**{**volume.__dict__, "sidecar": {}})}
    changed = {name: type(volume)(**{**volume.__dict__, "voxels": "0" * 64})}
    assert compare(before, lost).lost_fields >= {"RepetitionTime", "EchoTime"}
    assert compare(before, changed).identical_volumes == 0
    assert compare(before, {}).missing_volumes == [name]
    renamed = {name: type(volume)(**{**volume.__dict__, "sidecar": {"ProtocolName": "x"}})}
    protocol = str(volume.sidecar["ProtocolName"]).split()[0].lower()
    assert "ProtocolName" in compare(before, renamed).changed_fields
    assert "ProtocolName" in compare(before, renamed, frozenset({protocol})).cleaned_fields
