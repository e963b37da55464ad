"""Template fields that carry many file paths or result records, rendered as a count.

Airflow keeps each template field's rendered value for the task's "Rendered Template" view. A
value longer than ``[core] max_templated_field_length`` is first walked and redacted whole, then
cut to that length: for a batch of 1,000 result records that costs more than the rest of the
task's bookkeeping, to show a fragment nobody reads. These values are an upstream task's XCom,
kept there in full; after rendering, a long one is wrapped in :class:`BulkValue`, which Airflow
serializes by calling its ``serialize()``: a count.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

SHOWN_IN_FULL = 20
"""Lists up to this long are rendered as they are."""


class BulkValue(Sequence[Any]):
    """A long list as a template field holds it after rendering: the same items, shown as a count.

    Deliberately not a ``list``: Airflow walks lists item by item, and calls ``serialize()``
    only on other objects.
    """

    def __init__(self, items: Sequence[Any]) -> None:
        self._items = items

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def serialize(self) -> str:
        """What the rendered view shows."""
        return f"{len(self._items)} items (in full in the upstream task's XCom)"

    def __repr__(self) -> str:
        return f"BulkValue({self.serialize()})"


class BulkFieldsMixin:
    """Render the fields named in ``bulk_fields`` as a count when they hold long lists.

    Hooks :meth:`_do_render_template_fields`, which Airflow calls for plain and mapped task
    instances alike (a mapped operator renders its unmapped task through it).
    """

    bulk_fields: Sequence[str] = ()

    def _do_render_template_fields(
        self,
        parent: Any,
        template_fields: Iterable[str],
        context: Context,
        jinja_env: jinja2.Environment,
        seen_oids: set[int],
    ) -> None:
        super()._do_render_template_fields(  # type: ignore[misc]
            parent, template_fields, context, jinja_env, seen_oids
        )
        if parent is not self:
            return  # a nested object's fields
        for name in self.bulk_fields:
            value = getattr(self, name, None)
            if isinstance(value, list | tuple) and len(value) > SHOWN_IN_FULL:
                setattr(self, name, BulkValue(value))
