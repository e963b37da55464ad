"""The IOD Type table: regenerated from the standard's JSON, and known facts of PS3.3."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydicom.uid import (
    CTImageStorage,
    EnhancedMRImageStorage,
    RTPlanStorage,
    SegmentationStorage,
)

from airflow_pseudo.pseudonymisation.policy.tables import _iod_table
from airflow_pseudo.pseudonymisation.policy.tables.iod_types import (
    attribute_type,
    is_known_sop_class,
)

REPO_ROOT = Path(__file__).resolve().parents[4]

PER_FRAME = 0x52009230
SHARED = 0x52009229
DERIVATION_IMAGE = 0x00089124
SOURCE_IMAGE = 0x00082112


def _generator():
    path = REPO_ROOT / "tools" / "generate_iod_types.py"
    spec = importlib.util.spec_from_file_location("generate_iod_types", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_equals_a_fresh_generation_from_the_installed_standard() -> None:
    generator = _generator()
    shipped = Path(_iod_table.__file__).read_text(encoding="utf-8")
    assert generator.render() == shipped, "run tools/generate_iod_types.py"


@pytest.mark.parametrize(
    ("keyword_tag", "expected"),
    [
        (0x00100010, "2"),  # PatientName
        (0x00100020, "2"),  # PatientID
        (0x0020000D, "1"),  # StudyInstanceUID
        (0x0020000E, "1"),  # SeriesInstanceUID
        (0x00080018, "1"),  # SOPInstanceUID
        (0x00080050, "2"),  # AccessionNumber
        (0x00080020, "2"),  # StudyDate
        (0x00081111, "3"),  # ReferencedPerformedProcedureStepSequence
        (0x00081140, "3"),  # ReferencedImageSequence
        (0x00200052, "1"),  # FrameOfReferenceUID
        (0x00181030, "3"),  # ProtocolName
        (0x00400555, None),  # AcquisitionContextSequence: not in the CT Image IOD
    ],
)
def test_ct_image_types(keyword_tag: int, expected: str | None) -> None:
    assert attribute_type(CTImageStorage, keyword_tag) == expected


def test_segmentation_source_image_inside_per_frame_derivation() -> None:
    assert attribute_type(SegmentationStorage, DERIVATION_IMAGE, (PER_FRAME,)) == "2"
    assert attribute_type(SegmentationStorage, SOURCE_IMAGE, (PER_FRAME, DERIVATION_IMAGE)) == "2"
    referenced_sop_instance = 0x00081155
    path = (PER_FRAME, DERIVATION_IMAGE, SOURCE_IMAGE)
    assert attribute_type(SegmentationStorage, referenced_sop_instance, path) == "1"
    # The same macro may also be shared by all frames.
    assert attribute_type(SegmentationStorage, SOURCE_IMAGE, (SHARED, DERIVATION_IMAGE)) == "2"
    # At top level the Segmentation IOD defines no Derivation Image Sequence.
    assert attribute_type(SegmentationStorage, DERIVATION_IMAGE) is None


def test_enhanced_mr_acquisition_context_is_required_empty_or_not() -> None:
    assert attribute_type(EnhancedMRImageStorage, 0x00400555) == "2"


def test_sequence_items_are_typed_by_their_own_module() -> None:
    # Treatment Machine Name is Type 2 inside an RT Plan's Beam Sequence, absent at top level.
    beam_sequence, treatment_machine_name = 0x300A00B0, 0x300A00B2
    assert attribute_type(RTPlanStorage, treatment_machine_name, (beam_sequence,)) == "2"
    assert attribute_type(RTPlanStorage, treatment_machine_name) is None


def test_repeating_overlay_groups_share_the_first_groups_types() -> None:
    overlay_rows = 0x60000010
    assert attribute_type(CTImageStorage, overlay_rows) == "1"
    assert attribute_type(CTImageStorage, 0x601E0010) == "1"
    assert attribute_type(CTImageStorage, 0x60010010) is None  # odd groups are private


def test_strictest_type_wins_across_modules() -> None:
    # Image Type is Type 3 in the General Image module and Type 1 in the CT Image module;
    # Instance Number is Type 3 in one and Type 2 in another.
    assert attribute_type(CTImageStorage, 0x00080008) == "1"
    assert attribute_type(CTImageStorage, 0x00200013) == "2"


def test_unknown_sop_class_and_unknown_attribute() -> None:
    assert not is_known_sop_class("1.2.3.4")
    assert attribute_type("1.2.3.4", 0x00100010) is None
    assert is_known_sop_class(CTImageStorage)
    assert attribute_type(CTImageStorage, 0x00990010) is None
    assert attribute_type(CTImageStorage, 0x00100010, (0x00081140,)) is None


def test_every_shipped_sop_class_has_patient_and_study_modules() -> None:
    for uid in _iod_table.SOP_CLASS_IODS:
        assert attribute_type(uid, 0x0020000D) is not None, uid
