"""Safe private attributes: the private elements the Retain Safe Private option may keep.

A private element is only ever identified by its private creator, its group and its offset in
the creator's block (PS3.5 7.8.1): the same element number means something else under
another creator, or in another block. The dictionary is data
(:mod:`airflow_pseudo.pseudonymisation.policy.tables.safe_private`), each row with its source.
"""

from __future__ import annotations

import dataclasses
from functools import cache

from airflow_pseudo.pseudonymisation.policy.tables.safe_private import SAFE_PRIVATE_ROWS

__all__ = ["SafePrivateAttribute", "normalise_creator", "safe_private_attribute"]


@dataclasses.dataclass(frozen=True)
class SafePrivateAttribute:
    """One private attribute known to carry acquisition data rather than identity.

    :param creator: the private creator, as written by the vendor (trailing padding removed).
    :param group: the odd group number, e.g. ``0x0019``.
    :param element: the offset in the creator's block (``0x00``-``0xFF``): the ``xx`` of
        ``(gggg,xxee)`` is the block, this is ``ee``.
    :param vr: the value representation the vendor documents.
    :param name: what the attribute holds.
    :param source: where it is documented as safe or needed for research.
    """

    creator: str
    group: int
    element: int
    vr: str
    name: str
    source: str


def normalise_creator(creator: str) -> str:
    """Return a private creator as compared: without the trailing spaces and NULs of padding.

    :param creator: the value of the Private Creator element.
    """
    return creator.rstrip(" \0")


@cache
def _by_key() -> dict[tuple[str, int, int], SafePrivateAttribute]:
    return {
        (creator, group, element): SafePrivateAttribute(creator, group, element, vr, name, source)
        for creator, group, element, vr, name, source in SAFE_PRIVATE_ROWS
    }


def safe_private_attribute(
    creator: str, group: int, element_offset: int
) -> SafePrivateAttribute | None:
    """Return the safe private attribute at this place, or None when it is not known to be safe.

    :param creator: the private creator of the element's block (padding is ignored; case is
        not, as vendors' creators are exact strings).
    :param group: the element's group.
    :param element_offset: the low byte of the element number (its offset in the block).
    """
    return _by_key().get((normalise_creator(creator), group, element_offset & 0xFF))
