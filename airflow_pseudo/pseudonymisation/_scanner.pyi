"""The compiled element scanner (``_scanner.c``): the same function as :mod:`.scanner`'s."""

from collections.abc import Sequence
from typing import Any

from airflow_pseudo.pseudonymisation.scanner import Classify, Event, Nested

def scan_level(
    buffer: Any,
    position: int,
    end: int,
    implicit: bool,
    plan: dict[int, int],
    classify: Classify,
    breaks: Sequence[int] = (),
    nested: Nested | None = None,
) -> tuple[list[Event], int, int]: ...
