"""Worker processes: results in input order, crashes isolated, usable from any parent process."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import threading
from typing import Any

import pytest

from airflow_pseudo.pseudonymisation.io import workers
from airflow_pseudo.pseudonymisation.io.workers import StartMethod, chunk_bounds, run_in_processes


class SquareOrDie:
    """Squares numbers; the number 13 kills its worker process outright."""

    def run(self, items: list[int], settings: Any) -> list[tuple[int, int, int]]:
        if 13 in items:
            os._exit(3)
        return [(item, item * item, os.getpid()) for item in items]

    def crashed(self, item: int) -> tuple[int, int, int]:
        return item, -1, -1


START_METHODS = pytest.mark.parametrize("start_method", ["fork", "spawn"])


@START_METHODS
def test_results_come_back_in_input_order_from_several_processes(start_method: StartMethod):
    """Every item gets its result, in order, and more than one process did the work."""
    items = [i for i in range(41) if i != 13]
    results = list(run_in_processes(SquareOrDie(), items, None, 2, 3, start_method))
    assert [r[:2] for r in results] == [(i, i * i) for i in items]
    assert len({r[2] for r in results}) >= 2
    assert os.getpid() not in {r[2] for r in results}


@START_METHODS
def test_a_crash_costs_only_the_item_that_caused_it(start_method: StartMethod):
    """A worker dying on one item is replaced; the rest of its chunk is retried and succeeds."""
    results = list(run_in_processes(SquareOrDie(), list(range(30)), None, 2, 5, start_method))
    assert [r[1] for r in results] == [-1 if i == 13 else i * i for i in range(30)]


@START_METHODS
def test_works_from_a_daemonic_process(monkeypatch: pytest.MonkeyPatch, start_method: StartMethod):
    """Workers start even where multiprocessing forbids children (Celery's pool processes)."""
    monkeypatch.setitem(multiprocessing.current_process()._config, "daemon", True)
    assert multiprocessing.current_process().daemon
    results = list(run_in_processes(SquareOrDie(), [1, 2, 3, 4], None, 2, 1, start_method))
    assert [r[1] for r in results] == [1, 4, 9, 16]


class ReportStart:
    """Returns what the worker sees of a mark set in the parent: only a fork inherits it."""

    def run(self, items: list[int], settings: Any) -> list[str | None]:
        return [getattr(workers, "_TEST_MARK", None) for _ in items]

    def crashed(self, item: int) -> None:
        return None


def test_auto_forks_only_a_single_threaded_process(monkeypatch: pytest.MonkeyPatch):
    """Fork is fast, but forking beside another thread could copy a lock it holds: spawn then."""
    monkeypatch.setattr(workers, "_TEST_MARK", "inherited", raising=False)
    if threading.active_count() == 1:  # other tests may have left threads behind
        assert set(run_in_processes(ReportStart(), [1, 2, 3, 4], None, 2, 1)) == {"inherited"}
    assert set(run_in_processes(ReportStart(), [1, 2], None, 2, 1, "fork")) == {"inherited"}
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert set(run_in_processes(ReportStart(), [1, 2, 3, 4], None, 2, 1)) == {None}
    finally:
        stop.set()
        thread.join()


class Unloadable:
    """A job no worker can load (as when a worker's environment lacks a module): all die."""

    def run(self, items: list[int], settings: Any) -> list[int]:
        return items

    def crashed(self, item: int) -> int:
        return -1

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return importlib.import_module, ("airflow_pseudo_no_such_module",)


def test_spawned_workers_that_cannot_load_the_job_stop_the_batch():
    """A broken environment is one clear error, not one dead worker per item."""
    with pytest.raises(RuntimeError, match="exited before they started"):
        list(run_in_processes(Unloadable(), list(range(100)), None, 2, 10, "spawn"))


def test_forked_workers_that_die_before_starting_stop_the_batch(monkeypatch: pytest.MonkeyPatch):
    """Same for forked workers: each child dies before it reports ready."""
    monkeypatch.setattr(workers, "_serve", lambda *args: os._exit(7))
    with pytest.raises(RuntimeError, match="exited before they started"):
        list(run_in_processes(SquareOrDie(), list(range(100)), None, 2, 10, "fork"))


def test_forked_workers_use_the_parents_job_without_pickling_it():
    """A fork inherits the job (and the key in its settings): nothing crosses a pipe for it."""
    results = list(run_in_processes(Unloadable(), list(range(20)), None, 2, 3, "fork"))
    assert results == list(range(20))


@pytest.mark.parametrize(
    ("count", "workers_", "chunksize"), [(1000, 2, 64), (41, 2, 3), (7, 4, 64), (1, 2, 1)]
)
def test_chunks_cover_every_item_once_in_equal_chunks_several_per_worker(
    count: int, workers_: int, chunksize: int
):
    """Several chunks each keep the workers busy to the end; equal, none costs more syncs."""
    bounds = chunk_bounds(count, workers_, chunksize)
    assert [start for start, _ in bounds] == [0] + [end for _, end in bounds[:-1]]
    assert bounds[-1][1] == count
    sizes = [end - start for start, end in bounds]
    assert max(sizes) <= chunksize
    assert len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0]
    assert len(bounds) >= min(4 * workers_, count)
    if count >= 4 * workers_ * chunksize:
        assert sizes[0] == chunksize


class OverlappingSquares:
    """Squares numbers, each chunk begun then finished; 13 kills the worker as it begins."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.open = 0  # chunks begun and not yet finished, in this process

    def run(self, items: list[int], settings: Any) -> list[tuple[int, int, int]]:
        return self.begin(items, settings).finish()

    def begin(self, items: list[int], settings: Any) -> _Squares:
        if 13 in items:
            os._exit(3)
        self.open += 1
        self.log.append(f"begin {items[0]}")
        return _Squares(self, items)

    def crashed(self, item: int) -> tuple[int, int, int]:
        return item, -1, -1


class _Squares:
    def __init__(self, job: OverlappingSquares, items: list[int]) -> None:
        self.job, self.items = job, items

    def finish(self) -> list[tuple[int, int, int]]:
        overlapping = self.job.open  # 2: the next chunk was begun before this one finished
        self.job.open -= 1
        self.job.log.append(f"finish {self.items[0]}")
        return [(item, item * item, overlapping) for item in self.items]

    def abandon(self) -> None:
        self.job.open -= 1
        self.job.log.append(f"abandon {self.items[0]}")


def test_in_process_chunks_overlap_in_order():
    job = OverlappingSquares()
    chunks = [[0, 1], [2, 3], [4]]
    results = list(workers.run_overlapped(job, chunks, None))
    assert [r[1] for r in results] == [0, 1, 4, 9, 16]
    assert job.log == ["begin 0", "begin 2", "finish 0", "begin 4", "finish 2", "finish 4"]


def test_an_in_process_run_left_early_abandons_what_it_began():
    job = OverlappingSquares()
    run = workers.run_overlapped(job, [[0, 1], [2, 3], [4]], None)
    assert next(run)[1] == 0
    run.close()
    assert job.log == ["begin 0", "begin 2", "finish 0", "abandon 2"]
    assert job.open == 0


@START_METHODS
def test_workers_begin_a_chunk_sent_ahead_before_finishing_the_last(start_method: StartMethod):
    """Results stay in order while each worker holds two chunks; a crash still costs one item."""
    items = list(range(60))
    results = list(run_in_processes(OverlappingSquares(), items, None, 2, 4, start_method))
    assert [r[1] for r in results] == [-1 if i == 13 else i * i for i in items]
    assert max(r[2] for r in results) == 2  # some chunk was finished after the next one began


def test_frames_sent_ahead_fit_a_quarter_of_the_pipe():
    read, write = os.pipe()
    try:
        size = workers._ahead_limit(write)
        if hasattr(workers.fcntl, "F_GETPIPE_SZ"):
            assert size == workers.fcntl.fcntl(write, workers.fcntl.F_GETPIPE_SZ) // 4 > 0
        else:
            assert size == 0
    finally:
        os.close(read)
        os.close(write)
    small, large = b"x" * 100, b"x" * 100_000
    assert workers._may_send_ahead((0, [1, 2]), (2, [3, 4]), small, 16384)
    assert not workers._may_send_ahead((0, [1, 2]), (2, [3, 4]), large, 16384)
    assert not workers._may_send_ahead((0, [1]), (1, [2, 3]), small, 16384)  # a retried item
    assert not workers._may_send_ahead((0, [1, 2]), (2, [3]), small, 16384)


@START_METHODS
@pytest.mark.parametrize("job", [SquareOrDie(), OverlappingSquares()], ids=["run", "begin"])
def test_a_crash_in_the_last_chunks_is_retried_by_a_fresh_worker(
    start_method: StartMethod, job: Any
):
    """Workers are told early that no work is left; a crash then still gets a fresh worker."""
    items = list(range(14))  # 13, the killer, is in the last chunk
    results = list(run_in_processes(job, items, None, 2, 4, start_method))
    assert [r[1] for r in results] == [-1 if i == 13 else i * i for i in items]


def test_a_worker_that_does_not_exit_is_killed():
    import signal
    import time

    pid = os.fork()
    if pid == 0:  # a worker stuck after its work
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
        os._exit(0)
    started = time.monotonic()
    workers._reap(pid, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 5
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no such child any more


def test_a_batch_returns_without_waiting_for_its_workers_to_exit(
    monkeypatch: pytest.MonkeyPatch,
):
    """A worker's exit overlaps what the caller does next; it is reaped later, never lost."""
    import time

    serve = workers._serve

    def serve_then_linger(*args: Any) -> None:
        serve(*args)
        time.sleep(1.5)  # a slow exit, after the last answer

    monkeypatch.setattr(workers, "_serve", serve_then_linger)
    workers.reap_exited(wait=True)  # none left by earlier tests
    started = time.monotonic()
    results = list(run_in_processes(SquareOrDie(), [1, 2, 3, 4, 5, 6], None, 2, 1, "fork"))
    assert time.monotonic() - started < 1.5
    assert [r[1] for r in results] == [1, 4, 9, 16, 25, 36]
    lingering = [worker.pid for worker in workers._UNREAPED]
    assert len(lingering) == 2
    workers.reap_exited()  # not waiting: they are still there
    assert [worker.pid for worker in workers._UNREAPED] == lingering
    workers.reap_exited(wait=True)
    assert workers._UNREAPED == []
    for pid in lingering:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left
