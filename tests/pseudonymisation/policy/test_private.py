"""The safe private dictionary: matched by private creator and block offset, every row sourced."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import pydicom
import pytest

from airflow_pseudo.pseudonymisation.policy.private import (
    SafePrivateAttribute,
    normalise_creator,
    safe_private_attribute,
)
from airflow_pseudo.pseudonymisation.policy.tables.safe_private import SAFE_PRIVATE_ROWS

MR_VENDOR = Path(__file__).resolve().parents[2] / "data" / "mr-vendor"


def test_lookup_returns_the_documented_attribute() -> None:
    attribute = safe_private_attribute("GEMS_PARM_01", 0x0043, 0x39)
    assert attribute == SafePrivateAttribute(
        creator="GEMS_PARM_01",
        group=0x0043,
        element=0x39,
        vr="IS",
        name="Slop Integer 6 to 9 (first value is the B Value)",
        source="PS3.15 Table E.3.10-1",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        attribute.vr = "LO"  # type: ignore[misc]


@pytest.mark.parametrize("padding", ["", " ", "\0", "  \0"])
def test_creator_padding_is_ignored(padding: str) -> None:
    assert safe_private_attribute("SIEMENS CSA HEADER" + padding, 0x0029, 0x10) is not None
    assert normalise_creator("SIEMENS CSA HEADER" + padding) == "SIEMENS CSA HEADER"


def test_the_block_does_not_matter_only_the_offset() -> None:
    # (0019,1010) and (0019,1110) are both offset 0x10 of whatever block the creator holds.
    assert safe_private_attribute("Philips Imaging DD 001", 0x2001, 0x1003) is not None
    assert safe_private_attribute("Philips Imaging DD 001", 0x2001, 0x03) is not None


def test_element_number_alone_is_never_enough() -> None:
    # Same group and offset as the Siemens b-value, another creator: not safe.
    assert safe_private_attribute("SIEMENS MR HEADER", 0x0019, 0x0C) is not None
    assert safe_private_attribute("GEMS_ACQU_01", 0x0019, 0x0C) is None
    assert safe_private_attribute("SOME OTHER VENDOR", 0x0019, 0x0C) is None
    # Same creator and offset, another group: not safe.
    assert safe_private_attribute("SIEMENS MR HEADER", 0x0021, 0x0C) is None
    # Creators are exact strings.
    assert safe_private_attribute("siemens mr header", 0x0019, 0x0C) is None


def test_every_row_has_a_source_and_is_well_formed() -> None:
    keys = set()
    for creator, group, element, vr, name, source in SAFE_PRIVATE_ROWS:
        documented = ("dcm2niix (measured): ", "dcm2niix (source): ", "nibabel (documentation): ")
        assert source == "PS3.15 Table E.3.10-1" or (
            source.startswith(documented) and not source.endswith(": ")
        ), f"{creator} {group:04X},xx{element:02X}: no source"
        assert creator == normalise_creator(creator) and creator
        assert group % 2 == 1 and group > 0x0008, f"{group:04X} is not a private group"
        assert 0 <= element <= 0xFF
        assert vr in pydicom.valuerep.VR.__members__ and name
        keys.add((creator, group, element))
    assert len(keys) == len(SAFE_PRIVATE_ROWS), "a private attribute is listed twice"


def _private_keys(path: Path) -> set[tuple[str, int, int]]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw), stop_before_pixels=True)
    keys = set()
    for element in ds:
        if element.tag.is_private and not element.tag.is_private_creator:
            creator_tag = (element.tag.group << 16) | (element.tag.element >> 8)
            if creator_tag in ds:
                creator = normalise_creator(str(ds[creator_tag].value))
                keys.add((creator, element.tag.group, element.tag.element & 0xFF))
    return keys


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        ("dcm_qa_nih/GE/mr_0004", {("GEMS_PARM_01", 0x0043, 0x2C), ("GEMS_SERS_01", 0x0025, 0x1B)}),
        ("dcm_qa_nih/Siemens/mr_0003", {("SIEMENS CSA HEADER", 0x0029, 0x10)}),
        ("dcm_qa_philips_dwi/cl", {("Philips MR Imaging DD 001", 0x2005, 0x0E)}),
    ],
)
def test_vendor_acquisition_attributes_of_real_series_are_found(
    series: str, expected: set[tuple[str, int, int]]
) -> None:
    first = sorted((MR_VENDOR / series).iterdir())[0]
    present = _private_keys(first)
    assert expected <= present
    for key in expected:
        assert safe_private_attribute(*key) is not None


def test_identifying_vendor_attributes_are_not_safe() -> None:
    # GE's identification block and Siemens' RIS block carry names and IDs.
    assert safe_private_attribute("GEMS_IDEN_01", 0x0009, 0x02) is None
    assert safe_private_attribute("SIEMENS RIS", 0x0011, 0x30) is None
