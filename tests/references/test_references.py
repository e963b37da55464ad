"""References between instances survive pseudonymisation, remapped to the pseudonymised targets.

A CT series is referenced by a Segmentation, a TID 1500 Comprehensive 3D SR, a Key Object
Selection, a Grayscale Softcopy Presentation State and an RT Structure Set. After
pseudonymising the whole set with the default profile, every place where an input held a UID of
the CT series (instance, series, study, frame of reference) holds, in the output, the UID that
the CT's own output received.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation import Settings, pseudonymise_files

from .conftest import KEY, SLICES

REFERENCING = ("seg", "sr", "ko", "pr", "rtstruct")
TARGET_ATTRIBUTES = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")

Path_ = tuple[int | str, ...]


def uid_occurrences(ds: Dataset, path: Path_ = ()) -> Iterator[tuple[Path_, str]]:
    """Yield (path, value) for every UI value at every depth; a path is tags and item indexes."""
    for element in ds:
        if element.VR == "UI" and element.value:
            values = element.value if element.VM > 1 else [element.value]
            for value in values:
                yield (*path, element.tag), str(value)
        elif element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from uid_occurrences(item, (*path, element.tag, index))


def describe(path: Path_) -> str:
    """Name a path by keywords and item indexes, never by value."""
    return "/".join(
        str(step)
        if isinstance(step, int) and step < 0x10000
        else keyword_for_tag(step) or f"{step:08X}"
        for step in path
    )


@pytest.fixture(scope="module")
def pseudonymised(
    reference_set: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Pseudonymise the whole set at once (default profile); return the outputs by name."""
    output = tmp_path_factory.mktemp("pseudonymised")
    names = list(reference_set)
    results = pseudonymise_files(
        [reference_set[name] for name in names], output / "out", settings=Settings(key=KEY)
    )
    failed = {name: r.reason for name, r in zip(names, results, strict=True) if r.status != "ok"}
    assert not failed
    return {name: Path(str(r.output)) for name, r in zip(names, results, strict=True)}


@pytest.fixture(scope="module")
def target_map(reference_set: dict[str, Path], pseudonymised: dict[str, Path]) -> dict[str, str]:
    """Original UID -> pseudonymised UID, for the CT instances, series, study, frame."""
    mapping: dict[str, str] = {}
    for index in range(SLICES):
        before = pydicom.dcmread(reference_set[f"ct{index}"], stop_before_pixels=True)
        after = pydicom.dcmread(pseudonymised[f"ct{index}"], stop_before_pixels=True)
        for keyword in (*TARGET_ATTRIBUTES, "FrameOfReferenceUID"):
            original, new = str(before[keyword].value), str(after[keyword].value)
            assert mapping.setdefault(original, new) == new, f"{keyword} remapped inconsistently"
            assert new != original
    return mapping


@pytest.mark.parametrize(
    "name",
    [
        # The Basic Profile's X/Z/U* on Source Image and Referenced Image Sequences.
        "seg",
        "sr",
        "ko",
        "pr",
        "rtstruct",
    ],
)
def test_every_reference_resolves_to_the_pseudonymised_target(
    name: str,
    reference_set: dict[str, Path],
    pseudonymised: dict[str, Path],
    target_map: dict[str, str],
) -> None:
    before = pydicom.dcmread(reference_set[name], stop_before_pixels=True)
    after = dict(uid_occurrences(pydicom.dcmread(pseudonymised[name], stop_before_pixels=True)))
    references = [(path, uid) for path, uid in uid_occurrences(before) if uid in target_map]
    assert references, "the input should reference the CT series"
    broken = [describe(path) for path, uid in references if after.get(path) != target_map[uid]]
    assert not broken, f"{len(broken)} of {len(references)} references lost or not remapped"


def test_no_original_uid_of_the_set_survives(
    reference_set: dict[str, Path], pseudonymised: dict[str, Path], target_map: dict[str, str]
) -> None:
    for name in REFERENCING:
        output = pydicom.dcmread(pseudonymised[name], stop_before_pixels=True)
        survivors = [describe(path) for path, uid in uid_occurrences(output) if uid in target_map]
        assert not survivors, f"{name}: original UIDs at {survivors}"


def test_highdicom_reads_the_segmentation_back_with_its_sources(
    pseudonymised: dict[str, Path], target_map: dict[str, str], reference_set: dict[str, Path]
) -> None:
    segmentation = hd.seg.segread(pseudonymised["seg"])
    expected = set()
    for index in range(SLICES):
        ct = pydicom.dcmread(pseudonymised[f"ct{index}"], stop_before_pixels=True)
        expected.add(tuple(str(ct[keyword].value) for keyword in TARGET_ATTRIBUTES[::-1]))
    sources = {tuple(str(uid) for uid in triple) for triple in segmentation.get_source_image_uids()}
    assert sources == expected
    assert segmentation.number_of_segments == 1
    frames = segmentation.get_volume() if hasattr(segmentation, "get_volume") else None
    assert frames is None or frames.array.any()
