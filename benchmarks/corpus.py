"""The two corpora every tool is timed on: the issue's CT copies and a mixed-modality set."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

MIXED_TEMPLATES = ("mr", "rtplan", "rtdose", "rtstruct", "sr", "jpeg", "multiframe")
"""MR, RT plan/dose/struct, SR, JPEG-compressed and multi-frame: one series each per study."""


@dataclass(frozen=True)
class Corpus:
    """Files of one corpus, sorted, with their total size."""

    name: str
    description: str
    files: list[str]
    bytes: int


def _corpus(name: str, description: str, paths: list[Path]) -> Corpus:
    files = sorted(str(p) for p in paths)
    return Corpus(name, description, files, sum(p.stat().st_size for p in paths))


def build_ct(directory: Path, count: int) -> Corpus:
    """``count`` copies of CT_small.dcm under new UIDs, with fake PHI: the issue's corpus."""
    from airflow_pseudo.testing import write_ct_copies

    paths = write_ct_copies(directory, count)
    return _corpus(
        "ct", f"{count} x CT_small.dcm under new UIDs, fake PHI, 179 private tags", paths
    )


def mixed_shape(count: int) -> tuple[int, int]:
    """Return (patients, instances per series) giving about ``count`` files, every template alike.

    Each patient has one study holding one series per template, so the file count is a multiple
    of the number of templates (at least one file per template).
    """
    per_patient = len(MIXED_TEMPLATES)
    instances = max(1, min(10, count // per_patient))
    patients = max(1, round(count / (per_patient * instances)))
    return patients, instances


def build_mixed(directory: Path, count: int) -> Corpus:
    """About ``count`` files cycling through :data:`MIXED_TEMPLATES`, several patients."""
    from airflow_pseudo.testing import write_corpus

    patients, instances = mixed_shape(count)
    with warnings.catch_warnings():
        # rtdose.dcm's over-long referenced UID warns on reading; make_instance replaces it.
        warnings.simplefilter("ignore", UserWarning)
        paths = write_corpus(
            directory,
            patients=patients,
            studies_per_patient=1,
            series_per_study=len(MIXED_TEMPLATES),
            instances_per_series=instances,
            templates=MIXED_TEMPLATES,
        )
    non_ascii = patients // 3  # testing.FakePatient: every third patient has a non-ASCII name
    description = (
        f"{len(paths)} files: {patients} patients ({non_ascii} with non-ASCII names) x "
        f"{len(MIXED_TEMPLATES)} series ({', '.join(MIXED_TEMPLATES)}) x {instances} instances"
    )
    return _corpus("mixed", description, paths)
