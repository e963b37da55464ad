"""Tests for the template fields that hold many paths or records: rendered as a count."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.execution_time.task_runner import _serialize_rendered_fields

from airflow_pseudo.operators.bulk_fields import SHOWN_IN_FULL, BulkValue
from airflow_pseudo.operators.pseudonymise import PseudonymiseOperator, flatten_paths
from airflow_pseudo.operators.publish import PublishOperator
from airflow_pseudo.operators.validate import ValidateOperator

MANY = SHOWN_IN_FULL + 5


def _records(count: int) -> list[dict[str, Any]]:
    return [{"source": f"/staging/{i:06d}.dcm", "status": "ok"} for i in range(count)]


@pytest.mark.parametrize(
    ("operator", "field"),
    [
        (PseudonymiseOperator(task_id="p", files=[f"/s/{i}.dcm" for i in range(MANY)]), "files"),
        (ValidateOperator(task_id="v", results=_records(MANY)), "results"),
        (PublishOperator(task_id="u", results=_records(MANY), destination="/d"), "results"),
    ],
)
def test_a_long_list_is_stored_as_a_count_and_used_whole(operator: Any, field: str):
    """Airflow's own serializer stores a count; the operator still sees every item."""
    items = list(getattr(operator, field))
    operator.render_template_fields({})
    value = getattr(operator, field)
    assert isinstance(value, BulkValue)
    assert list(value) == items and len(value) == MANY and value[0] == items[0]
    rendered = _serialize_rendered_fields(operator)
    assert rendered[field] == f"{MANY} items (in full in the upstream task's XCom)"


def test_a_short_list_is_shown_as_it_is():
    files = [f"/s/{i}.dcm" for i in range(SHOWN_IN_FULL)]
    operator = PseudonymiseOperator(task_id="p", files=files)
    operator.render_template_fields({})
    assert operator.files == files
    assert _serialize_rendered_fields(operator)["files"] == files
    assert flatten_paths(BulkValue(files)) == files
