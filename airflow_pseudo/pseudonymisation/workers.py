"""Worker processes for ``workers > 1``: plain child processes fed through pipes.

Not :mod:`multiprocessing`: a batch often runs inside an Airflow task, and under the Celery
executor that task is forked from a daemonic pool process, which multiprocessing forbids to have
children; its ``spawn`` start method also re-imports the parent's ``__main__`` (the ``airflow``
command) in every child.

A worker is started one of two ways:

- **fork**, when no other Python thread runs here (the CLI, most task processes): the child
  starts in milliseconds with everything already imported. Forking beside another thread could
  copy a lock that thread holds, so it is never done then.
- **spawn** otherwise: a fresh interpreter running :func:`main`, which imports only the core
  (a few hundred milliseconds).

A spawned worker receives the job and its settings once, as a length-prefixed pickle over its
own stdin (so the key never touches the disk); a forked one already holds them, with whatever the
parent has learnt (the fast path's per-profile plans and value caches). Then each worker receives
chunks of items and answers each with its results, in frames of the same kind. When a worker
dies, a fresh one takes over and the items of the lost chunk are retried one by one, so only the
item that kills a worker gets the job's crash result.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import IO, Any, Literal, Protocol, TypeVar

_FRAME = struct.Struct("<Q")
_READY = "ready"  # a worker's first message: it has the job, so a later death is an item's doing
MAX_FAILED_STARTS = 3
"""Workers that may die before they start (a broken environment) before the batch gives up."""
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
    frame = memoryview(_FRAME.pack(len(data)) + data)
    while frame:  # an unbuffered stream may take part of it
        frame = frame[stream.write(frame) or 0 :]
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    (size,) = _FRAME.unpack(_read_exactly(stream, _FRAME.size))
    return pickle.loads(_read_exactly(stream, size))  # noqa: S301 - frames come from our own parent or child


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    """Read ``size`` bytes; the reply streams are unbuffered, so a read may return fewer.

    Unbuffered, because a buffered reader could take in a second message with the first, and
    the selector, which watches the pipe, would never report it.
    """
    data = bytearray()
    while len(data) < size:
        block = stream.read(size - len(data))
        if not block:
            raise EOFError("the other end closed the pipe")
        data += block
    return bytes(data)


StartMethod = Literal["auto", "fork", "spawn"]


def _single_threaded() -> bool:
    """Whether this process runs no other Python thread.

    Threads a C library starts for itself (OpenBLAS's, once numpy is imported) are not counted:
    such libraries prepare for fork with ``pthread_atfork``, as they must for multiprocessing's
    fork start method, which runs beside them everywhere.
    """
    return threading.active_count() == 1


class _Worker:
    def __init__(
        self, start: StartMethod, siblings: Sequence[_Worker], job: Job[Any, Any], settings: Any
    ) -> None:
        self.chunk: tuple[int, Sequence[Any]] | None = None
        self.ready = False
        if start == "fork" or (start == "auto" and _single_threaded()):
            self._fork(siblings, job, settings)
            return
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-c", f"from {__name__} import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.requests: IO[bytes] = self.process.stdin
        self.replies: IO[bytes] = self.process.stdout
        self.pid = self.process.pid
        _send(self.requests, (job, settings))

    def _fork(self, siblings: Sequence[_Worker], job: Job[Any, Any], settings: Any) -> None:
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        # The child's garbage collector then leaves the parent's objects alone, instead of
        # touching (and so copying) every page that holds them.
        gc.freeze()
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:  # the parent (or a failed fork) collects as before
                gc.unfreeze()
        if pid == 0:  # the child: serve, never return into the parent's code
            status = 1
            try:
                for fd in (request_write, reply_read):
                    os.close(fd)
                for sibling in siblings:  # or a sibling would never see its pipe close
                    sibling.requests.close()
                    sibling.replies.close()
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                _serve(os.fdopen(request_read, "rb"), os.fdopen(reply_write, "wb"), (job, settings))
                status = 0
            finally:
                os._exit(status)
        os.close(request_read)
        os.close(reply_write)
        self.process = None
        self.pid = pid
        self.requests = os.fdopen(request_write, "wb")
        self.replies = os.fdopen(reply_read, "rb", buffering=0)

    def stop(self) -> None:
        self.close()
        self.wait()

    def close(self) -> None:
        """Tell the worker there is no more work: it exits once it sees its pipe close."""
        with contextlib.suppress(OSError):
            self.requests.close()

    def wait(self) -> None:
        """Wait for the worker to exit (killing it after 10 s) and release its pipe."""
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        else:
            _reap(self.pid, timeout=10)
        self.replies.close()


def _reap(pid: int, timeout: float) -> None:
    """Wait for a forked child to exit; kill it if it has not after ``timeout`` seconds.

    Polled from a fraction of a millisecond upwards: a worker whose pipe has closed exits at
    once, and a batch should not end tens of milliseconds after its last result.
    """
    deadline = time.monotonic() + timeout
    pause = 0.0002
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def chunk_bounds(count: int, workers: int, chunksize: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each chunk: ``chunksize`` items, shrinking towards the end.

    Equal chunks would leave one worker busy with the last of them while the others idle; a
    chunk never holds more than a ``2 * workers``-th of what remains, so the workers finish at
    about the same time.
    """
    smallest = max(1, min(chunksize // 8, -(-count // workers)))  # a few items: all work
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < count:
        size = min(chunksize, max(smallest, -(-(count - start) // (2 * workers))))
        bounds.append((start, min(count, start + size)))
        start += size
    return bounds


def run_in_processes(
    job: Job[_T, _R],
    items: Sequence[_T],
    settings: Any,
    workers: int,
    chunksize: int,
    start_method: StartMethod = "auto",
) -> Iterator[_R]:
    """Run ``job`` over ``items`` in ``workers`` child processes; yield results in input order.

    :param chunksize: the most items sent to a worker at once (see :func:`chunk_bounds`).

    :param start_method: ``fork``, ``spawn``, or ``auto``: fork unless other threads run.
    """
    chunks = deque(
        (start, items[start:end]) for start, end in chunk_bounds(len(items), workers, chunksize)
    )
    finished: dict[int, Sequence[_R]] = {}
    next_start = 0
    selector = selectors.DefaultSelector()
    pool: list[_Worker] = []

    def start_worker() -> None:
        worker = _Worker(start_method, pool, job, settings)
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

    def lost(worker: _Worker) -> None:
        retire(worker)
        if not worker.ready:  # died before touching its chunk: the worker's fault, not an item's
            failed_starts.append(worker.pid)
            if len(failed_starts) >= MAX_FAILED_STARTS:
                raise RuntimeError(
                    f"{len(failed_starts)} worker processes exited before they started; "
                    "their error output says why"
                )
            if worker.chunk is not None:
                chunks.appendleft(worker.chunk)
        elif worker.chunk is not None:
            start, chunk = worker.chunk
            if len(chunk) == 1:
                finished[start] = [job.crashed(chunk[0])]
            else:  # retry one by one to find the item that killed the worker
                chunks.extendleft(reversed([(start + i, [x]) for i, x in enumerate(chunk)]))
        if chunks and len(pool) < workers:
            start_worker()

    failed_starts: list[int] = []
    try:
        for _ in range(min(workers, len(chunks))):
            start_worker()
        while next_start < len(items):
            for key, _ in selector.select():
                worker: _Worker = key.data
                try:
                    message = _receive(worker.replies)
                except (EOFError, pickle.UnpicklingError):
                    lost(worker)
                    continue
                if message == _READY:
                    worker.ready = True
                    continue
                reply_start, results = message
                if worker.chunk is None or reply_start != worker.chunk[0]:
                    raise RuntimeError("a worker answered out of turn")
                finished[reply_start] = results
                feed(worker)
            while next_start in finished:
                results = finished.pop(next_start)
                next_start += len(results)
                yield from results
    finally:
        for worker in pool:  # all told first, so they exit together
            worker.close()
        for worker in list(pool):
            retire(worker)
        selector.close()


def _serve(
    requests: IO[bytes], replies: IO[bytes], inherited: tuple[Job[Any, Any], Any] | None = None
) -> None:
    job, settings = inherited if inherited is not None else _receive(requests)
    _send(replies, _READY)
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
