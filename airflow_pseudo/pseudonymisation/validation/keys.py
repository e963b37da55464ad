"""Key consistency: the output carries exactly the pseudonyms the key gives its original.

A few anchors are enough to tell the right key from any other: the patient's ID, the study,
series and instance UIDs, and one date (the patient's shift). Their expected pseudonyms come from
the pseudonymiser itself, applied to a dataset holding only the anchors, so nothing here derives
a pseudonym on its own: the same source, profile and strategies make what is expected.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation.engine import Pseudonymiser
from airflow_pseudo.pseudonymisation.validation.layout import Layout
from airflow_pseudo.pseudonymisation.validation.values import text

IDENTITY_ANCHORS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
DATE_ANCHORS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
"""The first of these the original has shows the patient's date shift."""


def key_problems(original: Dataset, layout: Layout, pseudonymiser: Pseudonymiser) -> Iterator[str]:
    """Each anchor whose output value is not the pseudonym the key gives the original's."""
    anchors = Dataset()
    for keyword in IDENTITY_ANCHORS:
        _copy(original, anchors, keyword)
    for keyword in DATE_ANCHORS:
        if _copy(original, anchors, keyword):
            break
    expected = pseudonymiser.pseudonymise_dataset(anchors)[0]
    for element in anchors:
        tag = tag_for_keyword(element.keyword)
        assert tag is not None  # the anchors are dictionary keywords
        wanted = str(expected.get(element.keyword, "") or "").strip("\x00 ")
        if text(layout, layout.top_level(tag)) != wanted:
            yield f"{element.keyword} is not the pseudonym the key gives the original's"


def _copy(original: Dataset, anchors: Dataset, keyword: str) -> bool:
    value = original.get(keyword)
    if value in (None, "") or str(value).strip("\x00 ") == "":
        return False
    setattr(anchors, keyword, value)
    return True
