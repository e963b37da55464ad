"""Tests for the seed API: same names and meanings as PyMedPhys's pseudonymisation module."""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation import (
    KEY_ENV_VAR,
    MissingKeyError,
    PseudonymisationError,
    anonymise_dataset,
    get_default_pseudonymisation_keywords,
    is_valid_strategy_for_keywords,
    pseudonymisation_dispatch,
    pseudonymise,
)
from airflow_pseudo.testing import make_instance, write_corpus

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class TestKeywords:
    def test_204_sorted_keywords(self):
        """The default list is the seed's 204 keywords, sorted, without sequences."""
        keywords = get_default_pseudonymisation_keywords()
        assert len(keywords) == 204 == len(set(keywords))
        assert keywords == sorted(keywords)
        assert not any(k.endswith("Sequence") for k in keywords)
        assert {"PatientName", "PatientID", "SOPInstanceUID", "PatientSex"} <= set(keywords)

    def test_valid_strategy_defaults(self):
        """The default dispatch covers every default keyword."""
        assert is_valid_strategy_for_keywords() is True

    def test_invalid_strategy_detected(self):
        """A dispatch lacking a keyword's VR is reported invalid."""
        assert is_valid_strategy_for_keywords(["PatientID"], {"PN": lambda v: v}) is False
        assert is_valid_strategy_for_keywords(["CodingSchemeURL", "PatientID"]) is True

    def test_unknown_keyword_raises(self):
        """An unknown keyword raises KeyError, as in PyMedPhys."""
        with pytest.raises(KeyError):
            is_valid_strategy_for_keywords(["NotAKeyword"])


class TestDataset:
    def test_dataset_in_new_dataset_out(self, key_bytes: bytes, ct: Dataset):
        """pseudonymise(Dataset) returns a new pseudonymised Dataset and leaves the input alone."""
        before = copy.deepcopy(ct)
        out = pseudonymise(ct, key=key_bytes)
        assert isinstance(out, Dataset) and out is not ct
        assert ct == before
        assert out.PatientID != ct.PatientID and out.PatientIdentityRemoved == "YES"

    def test_key_from_environment(
        self, key_bytes: bytes, ct: Dataset, monkeypatch: pytest.MonkeyPatch
    ):
        """Without a key argument the key comes from AIRFLOW_PSEUDO_KEY."""
        monkeypatch.setenv(KEY_ENV_VAR, key_bytes.decode())
        assert pseudonymise(ct).PatientID == pseudonymise(ct, key=key_bytes).PatientID

    def test_key_file(self, key_bytes: bytes, ct: Dataset, tmp_path: Path):
        """key_file= reads the key from a file."""
        path = tmp_path / "key"
        path.write_bytes(key_bytes + b"\n")
        assert (
            pseudonymise(ct, key_file=path).PatientID == pseudonymise(ct, key=key_bytes).PatientID
        )

    def test_no_key_is_clear_error(self, ct: Dataset, monkeypatch: pytest.MonkeyPatch):
        """With no key anywhere the keyed default fails with a MissingKeyError."""
        monkeypatch.delenv(KEY_ENV_VAR, raising=False)
        with pytest.raises(MissingKeyError, match=KEY_ENV_VAR):
            pseudonymise(ct)

    def test_pymedphys_strategy_needs_no_key(self, ct: Dataset, monkeypatch: pytest.MonkeyPatch):
        """The pymedphys strategy runs from pepper and epoch_jitter, without a project key."""
        monkeypatch.delenv(KEY_ENV_VAR, raising=False)
        out = pseudonymise(ct, strategy="pymedphys", pepper="p", epoch_jitter=1)
        assert str(out.SOPInstanceUID).startswith("1.2.826.0.1.3680043.10.188.")

    def test_anonymise_dataset_with_keywords(self, key_bytes: bytes, ct: Dataset):
        """anonymise_dataset with identifying_keywords changes exactly those keywords."""
        out = anonymise_dataset(ct, identifying_keywords=["PatientID"], key=key_bytes)
        assert out.PatientID != ct.PatientID
        assert out.PatientName == ct.PatientName
        assert out.StudyInstanceUID == ct.StudyInstanceUID

    def test_anonymise_dataset_custom_strategy(self, key_bytes: bytes, ct: Dataset):
        """A PyMedPhys-style replacement strategy (value only) is applied per VR."""
        dispatch = dict(pseudonymisation_dispatch, PN=lambda value: "ANONYMOUS^PATIENT")
        out = anonymise_dataset(ct, replacement_strategy=dispatch, key=key_bytes)
        assert out.PatientName == "ANONYMOUS^PATIENT"

    def test_keywords_to_leave_unchanged(self, key_bytes: bytes, ct: Dataset):
        """keywords_to_leave_unchanged keeps those attributes."""
        out = anonymise_dataset(ct, keywords_to_leave_unchanged=["PatientID"], key=key_bytes)
        assert out.PatientID == ct.PatientID and out.PatientName != ct.PatientName

    def test_settings_and_options_exclusive(self, key_bytes: bytes, ct: Dataset, settings):
        """Passing settings= with individual options is a TypeError."""
        with pytest.raises(TypeError):
            pseudonymise(ct, settings=settings, key=key_bytes)


class TestPaths:
    def test_file_returns_output_path_in_given_folder(self, key_bytes: bytes, tmp_path: Path):
        """A file returns its output path, inside output_path treated as a folder (defect 10)."""
        source = tmp_path / "in" / "ct.dcm"
        source.parent.mkdir()
        pydicom.dcmwrite(source, make_instance("ct"), enforce_file_format=True)
        out = pseudonymise(source, tmp_path / "out", key=key_bytes)
        assert isinstance(out, str)
        assert Path(out).parent == (tmp_path / "out").resolve()
        assert pydicom.dcmread(out).PatientIdentityRemoved == "YES"

    def test_failed_file_raises_with_reason(self, key_bytes: bytes, tmp_path: Path):
        """A single file that cannot be pseudonymised raises with its reason."""
        ds = make_instance("ct")
        ds.BurnedInAnnotation = "YES"
        source = tmp_path / "ct.dcm"
        pydicom.dcmwrite(source, ds, enforce_file_format=True)
        with pytest.raises(PseudonymisationError, match="BurnedInAnnotation"):
            pseudonymise(source, tmp_path / "out", key=key_bytes)

    def test_directory_returns_successful_outputs(self, key_bytes: bytes, tmp_path: Path):
        """A directory returns the output paths of the files that succeeded, in input order."""
        files = write_corpus(tmp_path / "in", patients=1, series_per_study=1)
        (tmp_path / "in" / "readme.txt").write_text("not DICOM")
        outputs = pseudonymise(tmp_path / "in", tmp_path / "out", key=key_bytes)
        assert isinstance(outputs, list) and len(outputs) == len(files)
        assert all(Path(o).is_file() for o in outputs)

    def test_missing_input(self, key_bytes: bytes, tmp_path: Path):
        """A path that does not exist raises FileNotFoundError, as in PyMedPhys."""
        with pytest.raises(FileNotFoundError):
            pseudonymise(tmp_path / "absent", key=key_bytes)
