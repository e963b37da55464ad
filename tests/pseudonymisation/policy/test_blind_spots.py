"""Identifiers the old blacklist missed leave no trace, in either engine, under every profile."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from airflow_pseudo.pseudonymisation import PseudonymKey, build_recipe, pseudonymise_files

PLANTED = {
    "PatientBirthDateInAlternativeCalendar": "19450317 BIRTHCAL",
    "PatientDeathDateInAlternativeCalendar": "20190911 DEATHCAL",
    "FilmSessionLabel": "FILMLABEL-QX77",
    "OwnerID": "OWNER-ZZ91",
    "PatientSetupLabel": "SETUP-LABEL-KK3",
}
ROOT_UID = "1.2.840.10008.999.4242.1"  # under the DICOM root, registered nowhere
CONCATENATION = "1.3.6.1.4.1.99999.77.1"
URL_UID = "1.3.6.1.4.1.99999.77.2"


def _planted(tmp_path: Path) -> Path:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.SOPInstanceUID = ROOT_UID
    for keyword, value in PLANTED.items():
        setattr(dataset, keyword, value)
    contact = Dataset()
    contact.ContactDisplayName = "Contact Quentin Xavier"
    contact.ContactURI = "mailto:quentin.xavier@hospital.example"
    contact.ConcatenationUID = CONCATENATION
    dataset.ReferencedSeriesSequence = Sequence([contact])
    dataset.RetrieveURL = f"https://pacs.example/wado?studyUID={URL_UID}&patientID=PX-4411"
    dataset.add_new(0x60200010, "US", 1)  # overlay rows in a repeating group past 601E
    dataset.add_new(0x60204000, "LT", "OVERLAY COMMENT QX")
    path = tmp_path / "in" / "planted.dcm"
    path.parent.mkdir()
    dataset.save_as(path)
    return path


@pytest.mark.parametrize("engine", ["auto", "reference"])
@pytest.mark.parametrize("profile", ["basic", "default", "research"])
def test_no_planted_value_survives(tmp_path: Path, profile: str, engine: str):
    source = _planted(tmp_path)
    recipe = build_recipe(
        key=PseudonymKey(b"blind spot test key, 32 bytes..."), profile=profile, engine=engine
    )
    (result,) = pseudonymise_files([source], tmp_path / "out", settings=recipe)
    assert result.status == "ok", result.reason
    data = Path(result.output).read_bytes()  # type: ignore[arg-type]
    secrets = [*PLANTED.values(), "Quentin", "Xavier", "PX-4411", "OVERLAY COMMENT"]
    secrets += [ROOT_UID, CONCATENATION, URL_UID]
    found = [secret for secret in secrets if secret.encode() in data]
    assert found == []
    assert ROOT_UID not in Path(result.output).name  # type: ignore[arg-type]
    output = pydicom.dcmread(result.output)
    inner = output.ReferencedSeriesSequence[0]
    assert inner.ConcatenationUID.startswith("2.25.")  # remapped, not removed: references hold
