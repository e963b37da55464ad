"""Key consistency: the output carries exactly the pseudonyms the key gives its original.

A few anchors are enough to tell the right key from any other: the patient's ID, the study,
series and instance UIDs, and one date (the patient's shift). Their expected pseudonyms come from
the pseudonymiser itself (its context for the patient, its profile's action, its ``apply``), so
nothing here derives a pseudonym on its own: the same source and strategies make what is
expected.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.tag import BaseTag

from airflow_pseudo.pseudonymisation.engine import ChangeCounts, Pseudonymiser
from airflow_pseudo.pseudonymisation.policy.profile import Action
from airflow_pseudo.pseudonymisation.strategies import PseudonymContext
from airflow_pseudo.pseudonymisation.validation.layout import Layout
from airflow_pseudo.pseudonymisation.validation.values import text

IDENTITY_ANCHORS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
DATE_ANCHORS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
"""The first of these the original has shows the patient's date shift."""
_EXPECTED: dict[tuple[int, int, str, str], str] = {}
"""Expected pseudonyms by (pseudonymiser, tag, value, patient): a series repeats most anchors."""
_EXPECTED_ENTRIES = 65_536
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
    context = pseudonymiser.context_for(anchors.get("PatientID"), anchors.get("StudyInstanceUID"))
    for keyword in chosen:
        tag = ANCHORS[keyword]
        key = (id(pseudonymiser), tag, anchors[keyword], context.patient)
        wanted = _EXPECTED.get(key)
        if wanted is None:
            wanted = _expected(pseudonymiser, tag, anchors[keyword], context)
            if len(_EXPECTED) >= _EXPECTED_ENTRIES:
                _EXPECTED.clear()
            _EXPECTED[key] = wanted
        if text(layout, layout.top_level(tag)) != wanted:
            yield f"{keyword} is not the pseudonym the key gives the original's"


def _expected(pseudonymiser: Pseudonymiser, tag: int, value: str, context: PseudonymContext) -> str:
    """The pseudonym the engine gives one anchor's value (empty when its profile removes it)."""
    action = pseudonymiser.profile.rule_for(BaseTag(tag)).action
    if action is Action.REMOVE:
        return ""
    element = DataElement(tag, dictionary_VR(tag), value)
    pseudonymiser.apply(element, action, context, ChangeCounts())
    return str(element.value or "").strip("\x00 ")
