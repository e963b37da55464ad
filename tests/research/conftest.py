"""dcm2niix on a folder and a comparison of what it makes: NIfTI voxels, bval/bvec, sidecars."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest

from airflow_pseudo.pseudonymisation import PseudonymKey
from tests.conftest import require_tool

KEY = PseudonymKey(b"airflow-pseudo research test key, not for production")
MR_VENDOR = Path(__file__).resolve().parent.parent / "data" / "mr-vendor"
SERIES = {
    "GE": MR_VENDOR / "dcm_qa_nih" / "GE" / "mr_0004",
    "Siemens": MR_VENDOR / "dcm_qa_nih" / "Siemens" / "mr_0003",
    "Philips": MR_VENDOR / "dcm_qa_philips_dwi" / "cl",
}

# Sidecar fields that identify the subject, the site, the device or the instance, or that
# record the de-identification itself: they may differ between input and output.
IDENTITY_FIELDS = frozenset(
    {
        "AcquisitionDateTime",
        "AcquisitionTime",
        "AcquisitionDate",
        "SeriesDate",
        "SeriesTime",
        "StudyDate",
        "StudyTime",
        "ContentDate",
        "ContentTime",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientWeight",
        "PatientAge",
        "AccessionNumber",
        "StudyID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "FrameOfReferenceUID",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "PatientIdentityRemoved",
        "ConversionSoftware",
        "ConversionSoftwareVersion",
    }
)


@dataclasses.dataclass(frozen=True)
class Volume:
    """One NIfTI written by dcm2niix, reduced to what research relies on."""

    voxels: str  # SHA-256 of the voxel bytes
    header: tuple[Any, ...]  # dim, datatype, pixdim, scl_slope, scl_inter
    bval: str | None
    bvec: str | None
    sidecar: dict[str, Any]


def stage(series: Path, destination: Path) -> Path:
    """Copy a series into ``destination``, gunzipping ``.gz`` files (dcm2niix reads plain DICOM)."""
    destination.mkdir(parents=True, exist_ok=True)
    for path in sorted(series.iterdir()):
        if path.suffix == ".gz":
            (destination / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
        elif path.is_file() and path.suffix == ".dcm":
            shutil.copyfile(path, destination / path.name)
    return destination


def _nifti(path: Path) -> tuple[str, tuple[Any, ...]]:
    raw = path.read_bytes()
    dim = struct.unpack_from("<8h", raw, 40)
    datatype = struct.unpack_from("<h", raw, 70)[0]
    pixdim = tuple(round(value, 5) for value in struct.unpack_from("<8f", raw, 76))
    vox_offset = int(struct.unpack_from("<f", raw, 108)[0])
    slope, intercept = struct.unpack_from("<2f", raw, 112)
    header = (dim, datatype, pixdim, round(slope, 6), round(intercept, 6))
    return hashlib.sha256(raw[vox_offset:]).hexdigest(), header


def convert(dcm2niix: str, folder: Path, output: Path) -> dict[str, Volume]:
    """Convert every series under ``folder``; return the volumes by dcm2niix's output name.

    Names are built from the series number and dcm2niix's own suffixes (echo, phase...), so
    the same acquisition has the same name before and after pseudonymisation.
    """
    output.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [dcm2niix, "-z", "n", "-b", "y", "-ba", "n", "-f", "%s", "-o", str(output), str(folder)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    volumes = {}
    for nii in sorted(output.glob("*.nii")):
        voxels, header = _nifti(nii)
        bval, bvec = nii.with_suffix(".bval"), nii.with_suffix(".bvec")
        sidecar = nii.with_suffix(".json")
        volumes[nii.stem] = Volume(
            voxels=voxels,
            header=header,
            bval=bval.read_text() if bval.exists() else None,
            bvec=bvec.read_text() if bvec.exists() else None,
            sidecar=json.loads(sidecar.read_text()) if sidecar.exists() else {},
        )
    return volumes


@dataclasses.dataclass
class Comparison:
    """How the conversion of an output differs from the conversion of its input."""

    volumes: int = 0
    identical_volumes: int = 0
    missing_volumes: list[str] = dataclasses.field(default_factory=list)
    different_gradients: list[str] = dataclasses.field(default_factory=list)
    lost_fields: set[str] = dataclasses.field(default_factory=set)
    changed_fields: set[str] = dataclasses.field(default_factory=set)
    cleaned_fields: set[str] = dataclasses.field(default_factory=set)

    @property
    def faithful(self) -> bool:
        """Whether research gets the same data: volumes, gradients, acquisition fields."""
        return (
            self.identical_volumes == self.volumes
            and not self.missing_volumes
            and not self.different_gradients
            and not self.lost_fields
            and not self.changed_fields
        )


def compare(
    before: dict[str, Volume], after: dict[str, Volume], identifiers: frozenset[str] = frozenset()
) -> Comparison:
    """Compare conversions; identity fields may differ, nothing else may.

    :param identifiers: the subject's own identifiers (name components, ID), lower case: a text
        field of the input that holds one of them may be cleaned (listed as ``cleaned_fields``).
    """
    result = Comparison(volumes=len(before))
    for name, volume in before.items():
        other = after.get(name)
        if other is None:
            result.missing_volumes.append(name)
            continue
        if (volume.voxels, volume.header) == (other.voxels, other.header):
            result.identical_volumes += 1
        if (volume.bval, volume.bvec) != (other.bval, other.bvec):
            result.different_gradients.append(name)
        for field, value in volume.sidecar.items():
            if field in IDENTITY_FIELDS:
                continue
            if field not in other.sidecar:
                result.lost_fields.add(field)
            elif other.sidecar[field] != value:
                text = str(value).lower()
                if any(identifier in text for identifier in identifiers):
                    result.cleaned_fields.add(field)
                else:
                    result.changed_fields.add(field)
    return result


@pytest.fixture(scope="session")
def dcm2niix() -> str:
    """The dcm2niix program: the PyPI package's, beside this Python, else from the PATH."""
    beside = Path(sys.executable).parent / "dcm2niix"
    if beside.exists():
        return str(beside)
    return require_tool("dcm2niix", "dcm2niix")


def subject_identifiers(folder: Path) -> frozenset[str]:
    """Return the patient name components and ID of a series, lower case, for ``compare``."""
    first = pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)
    name = first.get("PatientName")
    parts = [str(part) for part in (name.components if name else ())]
    words = {word for part in parts for word in part.replace("^", " ").split()}
    return frozenset(
        word.lower() for word in (*words, str(first.get("PatientID", ""))) if len(word) > 2
    )
