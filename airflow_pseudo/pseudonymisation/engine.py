"""The reference engine: applies a profile to a pydicom Dataset at every depth.

The engine owns traversal, multiplicity and markers; strategies own values; profiles own
decisions. Private attributes, unknown attributes and group lengths are removed wherever they
are, sequences are recursed, and multi-valued elements are pseudonymised value by value.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID_dictionary,
)
from pydicom.valuerep import PersonName

from airflow_pseudo import __version__
from airflow_pseudo.pseudonymisation.errors import (
    BurnedInAnnotationError,
    PseudonymisationError,
)
from airflow_pseudo.pseudonymisation.identifiers import InstanceIdentifiers
from airflow_pseudo.pseudonymisation.policy.profile import (
    CLEANED_TEXT_VRS,
    PRIVATE_CREATOR,
    Action,
    Profile,
    Rule,
)
from airflow_pseudo.pseudonymisation.sources import PseudonymSource
from airflow_pseudo.pseudonymisation.strategies import (
    PseudonymContext,
    Strategy,
    pseudonymisation_dispatch,
)

IMPLEMENTATION_CLASS_UID = UID("2.25.140429514554128532155708877384026068816")
IMPLEMENTATION_VERSION_NAME = f"AFPSEUDO_{__version__}"[:16]
DICOM_UID_ROOT = "1.2.840.10008."
TOOL_NAME = "airflow-pseudo"


@dataclass
class ChangeCounts:
    """How many elements each action touched in one dataset (no values, safe to report)."""

    replaced: int = 0
    remapped_uids: int = 0
    emptied: int = 0
    removed: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "replaced": self.replaced,
            "remapped_uids": self.remapped_uids,
            "emptied": self.emptied,
            "removed": self.removed,
        }


def is_registered_uid(uid: str) -> bool:
    """Whether a UID is the standard's own: SOP class, transfer syntax, coding scheme...

    Only pydicom's UID dictionary decides: a UID under the DICOM root that it does not list
    (an instance UID made by a careless sender, say) is remapped like any other.
    """
    return uid in UID_dictionary


def _accepts_context(strategy: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(strategy).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def _adapt(strategy: Callable[..., Any]) -> Strategy:
    """Accept PyMedPhys-style one-argument strategies as well as ``(value, context)`` ones."""
    if _accepts_context(strategy):
        return strategy
    return lambda value, context: strategy(value)


UID_CACHE_ENTRIES = 65_536
"""UID pseudonyms remembered (a series repeats its study and series UIDs): about 15 MB at most."""


class Pseudonymiser:
    """Pseudonymises datasets with one source, one profile and one VR dispatch.

    :param source: where pseudonyms come from (keyed or PyMedPhys recipe).
    :param profile: what happens to each attribute.
    :param dispatch: VR → strategy; defaults to :data:`pseudonymisation_dispatch`.
    :param allow_burned_in: pseudonymise the header even when BurnedInAnnotation is YES.
    """

    def __init__(
        self,
        source: PseudonymSource,
        profile: Profile,
        dispatch: Mapping[str, Callable[..., Any]] | None = None,
        *,
        allow_burned_in: bool = False,
    ) -> None:
        self.source = source
        self.profile = profile
        self.dispatch = {vr: _adapt(f) for vr, f in (dispatch or pseudonymisation_dispatch).items()}
        self.allow_burned_in = allow_burned_in
        self._uid_map: dict[str, str] = {}

    @property
    def method(self) -> str:
        """The DeidentificationMethod entry this pseudonymiser writes (LO, at most 64 chars).

        ``airflow-pseudo <version> <strategy> <profile> <digest>``: the profile's name is
        shortened if needed, its digest never.
        """
        head = f"{TOOL_NAME} {__version__} {self.source.name} "
        tail = f" {self.profile.digest}"
        return head + self.profile.name[: max(0, 64 - len(head) - len(tail))] + tail

    def method_values(self) -> list[str]:
        """This tool's DeidentificationMethod values: its entry, then each option by name."""
        return [self.method, *(meaning for _code, meaning in self.profile.method_codes()[1:])]

    def record_fields(self) -> dict[str, Any]:
        """What result records say about the policy: profile name, digest and method codes."""
        return {
            "profile": self.profile.name,
            "profile_digest": self.profile.digest,
            "method_codes": [code for code, _meaning in self.profile.method_codes()],
        }

    def pseudonymise_dataset(self, dataset: Dataset) -> tuple[Dataset, ChangeCounts]:
        """Return a pseudonymised deep copy of ``dataset``; the input is never changed."""
        result = copy.deepcopy(dataset)
        return result, self.pseudonymise_in_place(result)

    def pseudonymise_in_place(self, dataset: Dataset) -> ChangeCounts:
        """Pseudonymise ``dataset`` itself, file meta included, and add the PS3.15 markers."""
        self.check_burned_in(dataset.get("BurnedInAnnotation"))
        context = self.context_for(dataset.get("PatientID"), dataset.get("StudyInstanceUID"))
        counts = ChangeCounts()
        walk = Walk(
            context,
            counts,
            str(dataset.get("SOPClassUID", "") or "") or None,
            InstanceIdentifiers.from_dataset(dataset) if self.profile.cleans else None,
        )
        self._walk(dataset, walk, ())
        self.add_markers(dataset)
        if getattr(dataset, "file_meta", None) is not None or hasattr(dataset, "preamble"):
            rewrite_file_meta(dataset)
        return counts

    def check_burned_in(self, burned_in_annotation: Any) -> None:
        """Refuse pixel data flagged as showing identifying text, unless explicitly allowed."""
        if str(burned_in_annotation or "").strip().upper() == "YES" and not self.allow_burned_in:
            raise BurnedInAnnotationError(
                "BurnedInAnnotation is YES: the pixel data may show identifying text that "
                "header pseudonymisation cannot remove (allow it explicitly to proceed)"
            )

    def context_for(self, patient_id: Any, study_instance_uid: Any) -> PseudonymContext:
        """The context of one dataset: its patient is PatientID, else StudyInstanceUID."""
        patient = str(patient_id or "") or str(study_instance_uid or "")
        return PseudonymContext(self.source, patient)

    def _walk(self, dataset: Dataset, walk: Walk, parents: tuple[int, ...]) -> None:
        private = self._private_rules(dataset) if self.profile.keeps_private else {}
        for tag in list(dataset.keys()):
            tag = BaseTag(tag)
            if tag.is_private and self.profile.keeps_private:
                rule = private[tag]
            else:
                rule = self.profile.rule_for(tag, walk.sop_class, parents)
            if rule.action is Action.REMOVE:
                del dataset[tag]
                walk.counts.removed += 1
                continue
            if rule.action is Action.KEEP and not _may_be_sequence(dataset, tag):
                continue
            element = dataset[tag]
            try:
                self.apply(
                    element,
                    rule.action,
                    walk.context,
                    walk.counts,
                    walk=walk,
                    parents=parents,
                    constant=rule.value,
                )
            except PseudonymisationError:
                raise
            except Exception as exc:
                raise PseudonymisationError(
                    f"cannot pseudonymise {element.keyword or 'element'} {element.tag}: "
                    f"{type(exc).__name__}"
                ) from None

    def _private_rules(self, dataset: Dataset) -> dict[BaseTag, Rule]:
        """Rules for a level's private attributes, by their block's private creator.

        A private creator is kept when an attribute of its block is, so the kept attribute's
        meaning stays known; its block is never renumbered.
        """
        rules: dict[BaseTag, Rule] = {}
        kept_blocks: set[tuple[int, int]] = set()
        for tag in list(dataset.keys()):
            tag = BaseTag(tag)
            if not tag.is_private or tag.element < 0x1000:
                continue
            creator_tag = BaseTag(tag.group << 16 | tag.element >> 8)
            creator = dataset.get(creator_tag)
            value = creator.value if creator is not None else None
            rule = self.profile.private_rule(value if isinstance(value, str) else None, tag)
            rules[tag] = rule
            if rule.action is not Action.REMOVE:
                kept_blocks.add((tag.group, tag.element >> 8))
        for tag in list(dataset.keys()):
            tag = BaseTag(tag)
            if tag.is_private and tag.element < 0x1000:
                kept = tag.element >= 0x10 and (tag.group, tag.element) in kept_blocks
                rules[tag] = PRIVATE_CREATOR if kept else self.profile.private_rule(None, tag)
        return rules

    def apply(
        self,
        element: DataElement,
        action: Action,
        context: PseudonymContext,
        counts: ChangeCounts,
        *,
        walk: Walk | None = None,
        parents: tuple[int, ...] = (),
        constant: str | None = None,
    ) -> None:
        """Apply one action to one element (recursing into sequence items).

        :param walk: the dataset being walked (SOP class, identifying values for Clean).
        :param parents: the tags of the sequences enclosing ``element``.
        :param constant: the value written by :attr:`Action.CONSTANT`.
        """
        if element.VR == "SQ":
            if action is Action.EMPTY:
                element.value = []
                counts.emptied += 1
            else:
                walk = walk or Walk(context, counts, None, None)
                for item in element.value:
                    self._walk(item, walk, (*parents, int(element.tag)))
            return
        if action is Action.KEEP or _is_empty(element.value):
            return
        if action is Action.EMPTY:
            element.value = empty_value_for_VR(element.VR)
            counts.emptied += 1
        elif action is Action.REMAP_UID:
            _map_values(element, self.remap_uid, context)
            counts.remapped_uids += 1
        elif action is Action.CONSTANT:
            element.value = constant or empty_value_for_VR(element.VR)
            counts.replaced += 1
        elif action is Action.CLEAN and element.VR in CLEANED_TEXT_VRS:
            identifiers = walk.identifiers if walk is not None else None
            if identifiers is None:
                raise PseudonymisationError("the clean action needs the instance's identifiers")
            _map_values(element, lambda value, _: identifiers.clean_text(str(value)), context)
            counts.replaced += 1
        else:
            strategy = self.dispatch.get(element.VR)
            if strategy is None:
                element.value = empty_value_for_VR(element.VR)
                counts.emptied += 1
            else:
                _map_values(element, strategy, context)
                counts.replaced += 1

    def remap_uid(self, value: Any, context: PseudonymContext) -> str:
        """Map an instance UID to its pseudonym; registered UIDs are returned unchanged."""
        uid = str(value).strip("\x00 ")
        if not uid or is_registered_uid(uid):
            return uid
        mapped = self._uid_map.get(uid)
        if mapped is None:
            if len(self._uid_map) >= UID_CACHE_ENTRIES:  # a worker may see millions of UIDs
                self._uid_map.clear()
            mapped = self._uid_map[uid] = context.source.uid(uid)
        return mapped

    def add_markers(self, dataset: Dataset) -> None:
        """Write the PS3.15 de-identification markers (appending to earlier methods)."""
        dataset.PatientIdentityRemoved = "YES"
        methods = [str(m) for m in _as_list(dataset.get("DeidentificationMethod", []))]
        methods.extend(value for value in self.method_values() if value not in methods)
        dataset.DeidentificationMethod = methods if len(methods) > 1 else methods[0]
        codes = self.profile.method_codes()
        if codes:
            sequence = list(dataset.get("DeidentificationMethodCodeSequence", []))
            present = {
                (item.get("CodeValue"), item.get("CodingSchemeDesignator")) for item in sequence
            }
            for value, meaning in codes:
                if (value, "DCM") not in present:
                    item = Dataset()
                    item.CodeValue = value
                    item.CodingSchemeDesignator = "DCM"
                    item.CodeMeaning = meaning
                    sequence.append(item)
            dataset.DeidentificationMethodCodeSequence = sequence
        if self.profile.shifts_dates:
            dataset.LongitudinalTemporalInformationModified = "MODIFIED"


@dataclass
class Walk:
    """What stays the same over one dataset's walk: context, counts, SOP class, identifiers."""

    context: PseudonymContext
    counts: ChangeCounts
    sop_class: str | None
    identifiers: InstanceIdentifiers | None


def _may_be_sequence(dataset: Dataset, tag: int) -> bool:
    """Whether an element holds items, including a sequence hidden in a UN or implicit VR."""
    vr = getattr(dataset.get_item(tag), "VR", None)
    if vr in (None, "UN"):
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return False
    return vr == "SQ"


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str | bytes | MultiValue | list):
        return len(value) == 0
    if isinstance(value, PersonName):
        return not str(value)
    return False


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, MultiValue | list):
        return list(value)
    return [value] if value not in (None, "") else []


def _map_values(element: DataElement, strategy: Strategy, context: PseudonymContext) -> None:
    value = element.value
    if isinstance(value, MultiValue | list):
        element.value = [strategy(v, context) for v in value]
        return
    new = strategy(value, context)
    element.value = empty_value_for_VR(element.VR) if new == "" else new


def transfer_syntax_of(dataset: Dataset) -> UID:
    """The transfer syntax to write a dataset in: the one it came in, as it was really decoded.

    Some files declare one VR encoding in file meta and use another; pydicom reads them by what
    it finds. Uncompressed data is then written in the encoding found; compressed data keeps its
    transfer syntax and every element is decoded first so it can be re-encoded.
    """
    implicit, little = getattr(dataset, "original_encoding", (None, None))
    found: UID | None = None
    if implicit is not None:
        found = (
            ImplicitVRLittleEndian
            if implicit
            else (ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian)
        )
    meta = getattr(dataset, "file_meta", None)
    declared = None
    if meta is not None and "TransferSyntaxUID" in meta:
        declared = UID(meta.TransferSyntaxUID)
    if declared is None or not declared.is_transfer_syntax:
        return found or ImplicitVRLittleEndian
    mismatch = found is not None and (declared.is_implicit_VR, declared.is_little_endian) != (
        implicit,
        little,
    )
    if mismatch and not declared.is_compressed:
        return found or declared
    if not declared.is_implicit_VR and any(raw.VR is None for raw in dataset.elements()):
        for _ in dataset.iterall():  # decoded as implicit VR: give every element its VR
            pass
    return declared


def rewrite_file_meta(dataset: Dataset) -> None:
    """Replace file meta and preamble with a description of this tool (PS3.15 E.1.1).

    MediaStorageSOPInstanceUID follows the (already pseudonymised) SOPInstanceUID, so the two
    always agree; anything else the sender put in file meta is dropped.
    """
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    if "SOPClassUID" in dataset:
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    if "SOPInstanceUID" in dataset:
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax_of(dataset)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    dataset.file_meta = meta
    dataset.preamble = b"\x00" * 128
