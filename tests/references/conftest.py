"""A CT series and the objects that reference it, built with highdicom and pydicom."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import RTStructureSetStorage, generate_uid

from airflow_pseudo.pseudonymisation import PseudonymKey

KEY = PseudonymKey(b"airflow-pseudo references test key, not for production")
SLICES = 3
DEVICE = {
    "manufacturer": "airflow-pseudo tests",
    "manufacturer_model_name": "reference builder",
    "software_versions": "1",
    "device_serial_number": "0",
}


def _ct_series() -> list[Dataset]:
    """Three slices of pydicom's CT_small, one study, series and frame of reference."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    slices = []
    for index in range(SLICES):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        x, y, z = (float(v) for v in template.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * index]
        ds.SliceLocation = z + 5.0 * index
        slices.append(ds)
    return slices


def _segmentation(ct: list[Dataset]) -> Dataset:
    mask = np.zeros((len(ct), ct[0].Rows, ct[0].Columns), dtype=bool)
    mask[:, 40:90, 30:80] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    return hd.seg.Segmentation(
        source_images=ct,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        **DEVICE,
    )


def _structured_report(ct: list[Dataset]) -> Dataset:
    """A TID 1500 measurement report with a planar ROI on the first slice."""
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
        graphic_data=np.array([[50.0, 50.0], [60.0, 50.0]]),
        source_image=hd.sr.SourceImageForRegion.from_source_image(ct[0]),
    )
    roi = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="lesion 1"),
        referenced_region=region,
        finding_type=codes.SCT.Neoplasm,
        measurements=[
            hd.sr.Measurement(
                name=codes.SCT.Area,
                value=78.5,
                unit=codes.UCUM.SquareMillimeter,
            )
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name="Reader^Test"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[roi],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=ct,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=200,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=DEVICE["manufacturer"],
    )


def _key_objects(ct: list[Dataset]) -> Dataset:
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest, referenced_objects=ct[:2]
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=ct[:2],
        content=content,
        series_instance_uid=generate_uid(),
        series_number=300,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=DEVICE["manufacturer"],
    )


def _presentation_state(ct: list[Dataset]) -> Dataset:
    return hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=ct,
        series_instance_uid=generate_uid(),
        series_number=400,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        content_label="WINDOW",
        voi_lut_transformations=[
            hd.pr.SoftcopyVOILUTTransformation(window_center=40.0, window_width=400.0)
        ],
        **DEVICE,
    )


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _structure_set(ct: list[Dataset]) -> Dataset:
    """An RT Structure Set with one closed contour per CT slice (pydicom: highdicom has none)."""
    first = ct[0]
    ds = Dataset()
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        setattr(ds, keyword, first.get(keyword, ""))
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 500
    ds.InstanceNumber = 1
    ds.Manufacturer = DEVICE["manufacturer"]
    ds.OperatorsName = "Planner^Test"
    ds.StructureSetLabel = "CT structures"
    ds.StructureSetDate, ds.StructureSetTime = first.StudyDate, first.StudyTime
    contour_images = [
        _item(ReferencedSOPClassUID=s.SOPClassUID, ReferencedSOPInstanceUID=s.SOPInstanceUID)
        for s in ct
    ]
    ds.ReferencedFrameOfReferenceSequence = Sequence(
        [
            _item(
                FrameOfReferenceUID=first.FrameOfReferenceUID,
                RTReferencedStudySequence=Sequence(
                    [
                        _item(
                            ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
                            ReferencedSOPInstanceUID=first.StudyInstanceUID,
                            RTReferencedSeriesSequence=Sequence(
                                [
                                    _item(
                                        SeriesInstanceUID=first.SeriesInstanceUID,
                                        ContourImageSequence=Sequence(contour_images),
                                    )
                                ]
                            ),
                        )
                    ]
                ),
            )
        ]
    )
    ds.StructureSetROISequence = Sequence(
        [
            _item(
                ROINumber=1,
                ReferencedFrameOfReferenceUID=first.FrameOfReferenceUID,
                ROIName="lesion",
                ROIGenerationAlgorithm="MANUAL",
            )
        ]
    )
    contours = []
    for s in ct:
        x, y, z = (float(v) for v in s.ImagePositionPatient)
        contours.append(
            _item(
                ContourImageSequence=Sequence(
                    [
                        _item(
                            ReferencedSOPClassUID=s.SOPClassUID,
                            ReferencedSOPInstanceUID=s.SOPInstanceUID,
                        )
                    ]
                ),
                ContourGeometricType="CLOSED_PLANAR",
                NumberOfContourPoints=3,
                ContourData=[x + 10, y + 10, z, x + 30, y + 10, z, x + 20, y + 30, z],
            )
        )
    ds.ROIContourSequence = Sequence(
        [_item(ReferencedROINumber=1, ROIDisplayColor=[255, 0, 0], ContourSequence=contours)]
    )
    ds.RTROIObservationsSequence = Sequence(
        [_item(ObservationNumber=1, ReferencedROINumber=1, RTROIInterpretedType="GTV")]
    )
    ds.ApprovalStatus = "UNAPPROVED"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


@pytest.fixture(scope="module")
def reference_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Write the CT slices and every referencing object; return their paths by name."""
    folder = tmp_path_factory.mktemp("references")
    ct = _ct_series()
    objects: dict[str, Dataset] = {f"ct{index}": ds for index, ds in enumerate(ct)}
    objects |= {
        "seg": _segmentation(ct),
        "sr": _structured_report(ct),
        "ko": _key_objects(ct),
        "pr": _presentation_state(ct),
        "rtstruct": _structure_set(ct),
    }
    paths = {}
    for name, ds in objects.items():
        paths[name] = folder / f"{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)
    return paths
