"""The ``pymedphys`` strategy against real PyMedPhys 0.41, element by element.

PyMedPhys reads its pepper and epoch_jitter from ``~/.pymedphys/config.toml`` and caches them per
process, so each test points HOME at a temporary folder holding a known config and clears those
caches before and after.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from airflow_pseudo.pseudonymisation import (
    Settings,
    get_default_pseudonymisation_keywords,
    is_valid_strategy_for_keywords,
)
from airflow_pseudo.testing import make_instance

pymedphys_pseudo = pytest.importorskip("pymedphys.experimental.pseudonymisation")
from pymedphys._experimental.pseudonymisation import strategy as pymedphys_strategy  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

PEPPER = "LZS5jElRYR7nIPpBihq8V6s5Sdie_TYwMrCtrU1dEyA"
JITTER = 775
BUNDLED = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "rtstruct.dcm"]
TEXT_VRS = {"AE", "CS", "LO", "LT", "SH", "ST"}
COMPARED_VRS = TEXT_VRS | {"PN", "UI", "DA", "DT"}
# PyMedPhys hashes PatientSex by mistake (list("PatientSex")): the seed says it is kept.
PYMEDPHYS_DEFECT_KEYWORDS = {"PatientSex"}


# pymedphys.experimental.pseudonymisation.pseudonymise needs these at run time (its unknown-tag
# scan uses numpy, its config reader toml), though PyMedPhys's base install does not pull them in.
RUNTIME_DEPENDENCIES = ("numpy", "toml")


@pytest.fixture
def pymedphys_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """HOME with a known PyMedPhys config; PyMedPhys's per-process caches cleared around use."""
    missing = [name for name in RUNTIME_DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(f"real PyMedPhys needs {', '.join(missing)}: install the test extra")
    config_dir = tmp_path / "home" / ".pymedphys"
    config_dir.mkdir(parents=True)
    config = config_dir / "config.toml"
    config.write_text(f'[pseudo]\npepper = "{PEPPER}"\nepoch_jitter = {JITTER}\n')
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    pymedphys_strategy._get_pepper.cache_clear()
    pymedphys_strategy._get_epoch_jitter.cache_clear()
    assert pymedphys_strategy._get_pepper() == PEPPER.encode()
    assert pymedphys_strategy._get_epoch_jitter() == JITTER
    yield config
    pymedphys_strategy._get_pepper.cache_clear()
    pymedphys_strategy._get_epoch_jitter.cache_clear()


def bundled(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    assert isinstance(path, str)
    return pydicom.dcmread(path, force=True)


def _is_ascii(value: object) -> bool:
    return str(value).isascii()


def compare(
    original: Dataset, ours: Dataset, theirs: Dataset, path: str = ""
) -> Iterator[tuple[str, str, str, str, str]]:
    """Yield (path, VR, original, ours, theirs) for every comparable element, at every depth.

    Comparable: a seed identifying keyword of a compared VR, single-valued, non-empty and ASCII
    in the original, where PyMedPhys has no documented defect.
    """
    keywords = set(get_default_pseudonymisation_keywords())
    for element in original:
        keyword = element.keyword
        where = f"{path}{keyword or element.tag}"
        if element.VR == "SQ":
            if keyword in ours and keyword in theirs:
                for i, item in enumerate(element.value):
                    if i < len(ours[keyword].value) and i < len(theirs[keyword].value):
                        yield from compare(
                            item, ours[keyword].value[i], theirs[keyword].value[i], f"{where}[{i}]."
                        )
            continue
        if keyword not in keywords or element.VR not in COMPARED_VRS:
            continue
        if keyword in PYMEDPHYS_DEFECT_KEYWORDS:
            continue
        value = element.value
        if value in (None, "") or isinstance(value, MultiValue) or not _is_ascii(value):
            continue
        assert keyword in ours, f"{where} missing from our output"
        assert keyword in theirs, f"{where} missing from PyMedPhys output"
        yield where, element.VR, str(value), str(ours[keyword].value), str(theirs[keyword].value)


def check_equal(vr: str, original: str, ours: str, theirs: str) -> None:
    """Assert our value is PyMedPhys's, up to the documented PN and DT fixes."""
    if vr == "PN":
        ours_parts = [*ours.split("^"), "", "", ""][:3]
        theirs_parts = theirs.split("^")[:3]
        original_parts = [*original.split("=")[0].split("^"), "", "", ""][:3]
        for mine, pymedphys, before in zip(ours_parts, theirs_parts, original_parts, strict=True):
            assert mine == (pymedphys[:20] if before else "")
    elif vr == "DT":
        assert ours[:8] == theirs[:8]
        time = ours[8:].split("+")[0].split("-")[0]
        assert theirs[8:].startswith(time.split(".")[0])
    else:
        assert ours == theirs


def run_both(ds: Dataset) -> tuple[Dataset, Dataset]:
    settings = Settings(
        strategy="pymedphys", profile="pymedphys", pepper=PEPPER, epoch_jitter=JITTER
    )
    theirs = pymedphys_pseudo.pseudonymise(copy.deepcopy(ds))
    ours = settings.pseudonymiser.pseudonymise_dataset(ds)[0]
    return ours, theirs


@pytest.mark.usefixtures("pymedphys_config")
class TestAgainstPyMedPhys:
    @pytest.mark.parametrize("name", BUNDLED)
    def test_bundled_file_values_match(self, name: str):
        """Text, PN, UI, DA values equal PyMedPhys 0.41's for each bundled file."""
        ds = bundled(name)
        ours, theirs = run_both(ds)
        compared = list(compare(ds, ours, theirs))
        assert len(compared) >= 5, "too few comparable elements: the comparison proves nothing"
        assert {"UI"} <= {vr for _, vr, *_ in compared}
        for where, vr, original, mine, pymedphys in compared:
            try:
                check_equal(vr, original, mine, pymedphys)
            except AssertionError:
                pytest.fail(f"{name} {where} ({vr}): ours {mine!r} != PyMedPhys {pymedphys!r}")

    def test_all_compared_vrs_covered(self):
        """Over the bundled files plus a generated instance, every compared VR is exercised."""
        seen: set[str] = set()
        datasets = [bundled(name) for name in BUNDLED]
        generated = make_instance("ct", patient=1)
        del generated.OtherPatientIDs  # multi-valued: PyMedPhys collapses it (defect 9)
        generated.AcquisitionDateTime = "20161117094353"
        generated.StationName = "CT01_OC0"
        generated.SmokingStatus = "NO"
        generated.PatientSexNeutered = "ALTERED"
        generated.PerformedStationAETitle = "CT_SCANNER_01"
        generated.AdditionalPatientHistory = "History text"
        generated.ImageComments = "Comment text"
        datasets.append(generated)
        for ds in datasets:
            ours, theirs = run_both(ds)
            for where, vr, original, mine, pymedphys in compare(ds, ours, theirs):
                seen.add(vr)
                try:
                    check_equal(vr, original, mine, pymedphys)
                except AssertionError:
                    pytest.fail(f"{where} ({vr}): ours {mine!r} != PyMedPhys {pymedphys!r}")
        assert seen == COMPARED_VRS

    @pytest.mark.parametrize(
        "value", ["20161117094353", "20161117094353.123456", "20161117094353+1100", "201611170943"]
    )
    def test_dt_date_and_time_match(self, value: str):
        """DT's shifted date and time equal PyMedPhys's; ours also keeps precision and offset."""
        ds = make_instance("ct", patient=1)
        del ds.OtherPatientIDs
        ds.AcquisitionDateTime = value
        ours, theirs = run_both(ds)
        check_equal("DT", value, str(ours.AcquisitionDateTime), str(theirs.AcquisitionDateTime))
        assert len(str(ours.AcquisitionDateTime)) == len(value)

    def test_documented_ct_small_values(self):
        """CT_small's PatientID, StudyDate and StudyInstanceUID equal the documented run."""
        ours, theirs = run_both(bundled("CT_small.dcm"))
        assert ours.PatientID == theirs.PatientID == "E3jsEqD7ZBj5IWeWD9bEGG9Y5nLWY0Q9x2rtMr5FPLI"
        assert ours.StudyDate == theirs.StudyDate == "20011119"
        assert ours.StudyInstanceUID == theirs.StudyInstanceUID
        assert ours.StudyID == theirs.StudyID == "E3jsEqD7ZBj5IWeW"

    def test_pn_within_64_where_pymedphys_overflows(self):
        """PyMedPhys writes a 127-char PN for CT_small (defect 7); ours is <= 64 and its prefix."""
        ours, theirs = run_both(bundled("CT_small.dcm"))
        assert len(str(theirs.PatientName)) > 64
        assert len(str(ours.PatientName)) <= 64
        family, given = str(ours.PatientName).split("^")
        assert str(theirs.PatientName).startswith(family)
        assert str(theirs.PatientName).split("^")[1].startswith(given)

    def test_patient_sex_kept_where_pymedphys_hashes_it(self):
        """PyMedPhys hashes PatientSex (defect 1: list('PatientSex')); ours keeps it."""
        ds = bundled("CT_small.dcm")
        ours, theirs = run_both(ds)
        assert theirs.PatientSex != ds.PatientSex
        assert ours.PatientSex == ds.PatientSex

    def test_file_meta_consistent_where_pymedphys_leaks(self, tmp_path: Path):
        """PyMedPhys keeps the original MediaStorageSOPInstanceUID (defect 3); ours follows."""
        ds = bundled("CT_small.dcm")
        ours, theirs = run_both(ds)
        assert theirs.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ours.file_meta.MediaStorageSOPInstanceUID == ours.SOPInstanceUID
        assert ours.SOPInstanceUID == theirs.SOPInstanceUID

    def test_non_ascii_handled_where_pymedphys_raises(self):
        """PyMedPhys raises on non-ASCII text (defect 8); ours pseudonymises it."""
        ds = make_instance("ct", patient=3)
        with pytest.raises(UnicodeEncodeError):
            pymedphys_pseudo.pseudonymise(copy.deepcopy(ds))
        settings = Settings(
            strategy="pymedphys", profile="pymedphys", pepper=PEPPER, epoch_jitter=JITTER
        )
        out = settings.pseudonymiser.pseudonymise_dataset(ds)[0]
        assert "Müller" not in str(out.PatientName)

    def test_config_file_gives_same_values(self, pymedphys_config: Path):
        """Reading the same config.toml gives the same values as passing pepper and jitter."""
        ds = bundled("CT_small.dcm")
        from_file = Settings(
            strategy="pymedphys", profile="pymedphys", pymedphys_config=str(pymedphys_config)
        )
        out = from_file.pseudonymiser.pseudonymise_dataset(ds)[0]
        theirs = pymedphys_pseudo.pseudonymise(copy.deepcopy(ds))
        assert out.PatientID == theirs.PatientID and out.StudyDate == theirs.StudyDate


def test_seed_keywords_equal_pymedphys():
    """Our seed keyword list is exactly PyMedPhys 0.41's get_default_pseudonymisation_keywords()."""
    theirs = pymedphys_pseudo.get_default_pseudonymisation_keywords()
    assert sorted(set(theirs)) == get_default_pseudonymisation_keywords()
    assert len(get_default_pseudonymisation_keywords()) == 204


def test_strategy_valid_for_seed_keywords_as_in_pymedphys():
    """Both implementations report their dispatch valid for the seed's keywords."""
    assert pymedphys_pseudo.is_valid_strategy_for_keywords() is True
    assert is_valid_strategy_for_keywords() is True


def test_pymedphys_logging_not_needed(caplog: pytest.LogCaptureFixture):
    """Our pymedphys strategy logs no warning for CS keywords (PyMedPhys warns on every one)."""
    caplog.set_level(logging.WARNING)
    settings = Settings(
        strategy="pymedphys", profile="pymedphys", pepper=PEPPER, epoch_jitter=JITTER
    )
    settings.pseudonymiser.pseudonymise_dataset(bundled("CT_small.dcm"))
    assert not [r for r in caplog.records if r.name.startswith("airflow_pseudo")]
