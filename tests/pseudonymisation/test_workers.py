"""Worker processes: results in input order, crashes isolated, usable from any parent process."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import pytest

from airflow_pseudo.pseudonymisation.workers import run_in_processes


class SquareOrDie:
    """Squares numbers; the number 13 kills its worker process outright."""

    def run(self, items: list[int], settings: Any) -> list[tuple[int, int, int]]:
        if 13 in items:
            os._exit(3)
        return [(item, item * item, os.getpid()) for item in items]

    def crashed(self, item: int) -> tuple[int, int, int]:
        return item, -1, -1


def test_results_come_back_in_input_order_from_several_processes():
    """Every item gets its result, in order, and more than one process did the work."""
    items = [i for i in range(41) if i != 13]
    results = list(run_in_processes(SquareOrDie(), items, None, 2, 3))
    assert [r[:2] for r in results] == [(i, i * i) for i in items]
    assert len({r[2] for r in results}) >= 2
    assert os.getpid() not in {r[2] for r in results}


def test_a_crash_costs_only_the_item_that_caused_it():
    """A worker dying on one item is replaced; the rest of its chunk is retried and succeeds."""
    results = list(run_in_processes(SquareOrDie(), list(range(30)), None, 2, 5))
    assert [r[1] for r in results] == [-1 if i == 13 else i * i for i in range(30)]


def test_works_from_a_daemonic_process(monkeypatch: pytest.MonkeyPatch):
    """Workers start even where multiprocessing forbids children (Celery's pool processes)."""
    monkeypatch.setitem(multiprocessing.current_process()._config, "daemon", True)
    assert multiprocessing.current_process().daemon
    results = list(run_in_processes(SquareOrDie(), [1, 2, 3, 4], None, 2, 1))
    assert [r[1] for r in results] == [1, 4, 9, 16]
