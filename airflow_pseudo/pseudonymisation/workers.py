"""Worker processes for ``workers > 1``: plain subprocesses fed through pipes.

Not :mod:`multiprocessing`: a batch often runs inside an Airflow task, and under the Celery
executor that task is forked from a daemonic pool process, which multiprocessing forbids to have
children; its ``spawn`` start method also re-imports the parent's ``__main__`` (the ``airflow``
command) in every child. A worker here is a fresh interpreter running :func:`main`: it imports
only the core, receives the job and its settings once, then chunks of items, and
answers each chunk with its results. Frames are length-prefixed pickles over the child's own
pipes, so the key never touches the disk. When a worker dies, a fresh one takes over and the
items of the lost chunk are retried one by one, so only the item that kills a worker gets the
job's crash result.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import selectors
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from typing import IO, Any, Protocol, TypeVar

_FRAME = struct.Struct("<Q")
_T = TypeVar("_T")
_R = TypeVar("_R")
_T_contra = TypeVar("_T_contra", contravariant=True)
_R_co = TypeVar("_R_co", covariant=True)


class Job(Protocol[_T_contra, _R_co]):
    """A picklable job run on chunks of items, with a result for items lost in a crash."""

    def run(self, items: Sequence[_T_contra], settings: Any, /) -> Sequence[_R_co]:
        """One result per item, in order."""
        ...

    def crashed(self, item: _T_contra, /) -> _R_co: ...


def _send(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError("the other end closed the pipe")
    (size,) = _FRAME.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other end closed the pipe mid-message")
    return pickle.loads(data)  # noqa: S301 - frames come from our own parent or child


class _Worker:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from {__name__} import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.requests: IO[bytes] = self.process.stdin
        self.replies: IO[bytes] = self.process.stdout
        self.chunk: tuple[int, Sequence[Any]] | None = None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.requests.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.replies.close()


def run_in_processes(
    job: Job[_T, _R], items: Sequence[_T], settings: Any, workers: int, chunksize: int
) -> Iterator[_R]:
    """Run ``job`` over ``items`` in ``workers`` subprocesses; yield results in input order."""
    chunks = deque(
        (start, items[start : start + chunksize]) for start in range(0, len(items), chunksize)
    )
    finished: dict[int, Sequence[_R]] = {}
    next_start = 0
    selector = selectors.DefaultSelector()
    pool: list[_Worker] = []

    def start_worker() -> None:
        worker = _Worker()
        _send(worker.requests, (job, settings))
        pool.append(worker)
        selector.register(worker.replies, selectors.EVENT_READ, worker)
        feed(worker)

    def feed(worker: _Worker) -> None:
        worker.chunk = chunks.popleft() if chunks else None
        if worker.chunk is not None:
            _send(worker.requests, worker.chunk)

    def retire(worker: _Worker) -> None:
        selector.unregister(worker.replies)
        pool.remove(worker)
        worker.stop()

    try:
        for _ in range(min(workers, len(chunks))):
            start_worker()
        while next_start < len(items):
            for key, _ in selector.select():
                worker: _Worker = key.data
                if worker.chunk is None:  # an idle worker that exited: nothing was lost
                    retire(worker)
                    continue
                start, chunk = worker.chunk
                try:
                    reply_start, results = _receive(worker.replies)
                except (EOFError, pickle.UnpicklingError):
                    retire(worker)
                    if len(chunk) == 1:
                        finished[start] = [job.crashed(chunk[0])]
                    else:  # retry one by one to find the item that killed the worker
                        chunks.extendleft(reversed([(start + i, [x]) for i, x in enumerate(chunk)]))
                    if chunks and len(pool) < workers:
                        start_worker()
                    continue
                if reply_start != start:
                    raise RuntimeError("a worker answered out of turn")
                finished[start] = results
                feed(worker)
            while next_start in finished:
                results = finished.pop(next_start)
                next_start += len(results)
                yield from results
    finally:
        for worker in list(pool):
            retire(worker)
        selector.close()


def _serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    job, settings = _receive(requests)
    while True:
        try:
            start, chunk = _receive(requests)
        except EOFError:
            return
        _send(replies, (start, job.run(chunk, settings)))


def main() -> None:
    """Serve one parent: keep the protocol on the real stdout, send stray prints to stderr."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
