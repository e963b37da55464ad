"""Key consistency: the output carries exactly the pseudonyms the key gives its original.

A few anchors are enough to tell the right key from any other: the patient's ID, the study,
series and instance UIDs, and one date (the patient's shift). Their expected pseudonyms come from
the pseudonymiser itself, applied to a dataset holding only the anchors, so nothing here derives
a pseudonym on its own: the same source, profile and strategies make what is expected.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation.engine import Pseudonymiser
from airflow_pseudo.pseudonymisation.validation.layout import Layout
from airflow_pseudo.pseudonymisation.validation.values import text

IDENTITY_ANCHORS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
DATE_ANCHORS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
"""The first of these the original has shows the patient's date shift."""
ANCHORS: dict[str, int] = {
    keyword: tag
    for keyword in IDENTITY_ANCHORS + DATE_ANCHORS
    if (tag := tag_for_keyword(keyword)) is not None
}


def key_problems(
    anchors: Mapping[str, str], layout: Layout, pseudonymiser: Pseudonymiser
) -> Iterator[str]:
    """Each anchor whose output value is not the pseudonym the key gives the original's.

    :param anchors: keyword -> the original's value, for the anchors it has.
    """
    chosen = [keyword for keyword in IDENTITY_ANCHORS if keyword in anchors]
    chosen += [keyword for keyword in DATE_ANCHORS if keyword in anchors][:1]
    expected = Dataset()
    for keyword in chosen:
        setattr(expected, keyword, anchors[keyword])
    pseudonymiser.pseudonymise_in_place(expected)
    for keyword in chosen:
        wanted = str(expected.get(keyword, "") or "").strip("\x00 ")
        if text(layout, layout.top_level(ANCHORS[keyword])) != wanted:
            yield f"{keyword} is not the pseudonym the key gives the original's"
