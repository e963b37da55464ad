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
chunks of items and answers each with its results, in frames of the same kind. A worker holds up
to two chunks: it begins the second before finishing the first, so that what ends a chunk (the
disk sync of its outputs) overlaps the work of the next. When a worker dies, a fresh one takes
over and the items of its lost chunks are retried one by one, so only the item that kills a
worker gets the job's crash result.

A worker that has answered its last chunk is not waited for: its exit (a few milliseconds of the
kernel releasing its memory) overlaps the others' work and the caller's next step. Exited workers
are reaped when the next batch starts, at :func:`reap_exited`, or when the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import pickle
import select
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any, Literal, Protocol, TypeVar, cast

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

_FRAME = struct.Struct("<Q")
_READY = "ready"  # a worker's first message: it has the job, so a later death is an item's doing
_CHUNKS_PER_WORKER = 3  # sent and not yet answered: the one begun, the one finished, the next
_CHUNKS_PER_WORKER_AT_LEAST = 4  # in a batch: see chunk_bounds
MAX_FAILED_STARTS = 3
"""Workers that may die before they start (a broken environment) before the batch gives up."""
_T = TypeVar("_T")
_R = TypeVar("_R")
_T_contra = TypeVar("_T_contra", contravariant=True)
_R_co = TypeVar("_R_co", covariant=True)


class Job(Protocol[_T_contra, _R_co]):
    """A picklable job run on chunks of items, with a result for items lost in a crash.

    A job may also have ``begin(items, settings)``, returning a :class:`Started` chunk: the
    runners then begin each chunk before finishing the one before it, so that what ends a chunk
    (a disk sync, say) overlaps the work of the next.
    """

    def run(self, items: Sequence[_T_contra], settings: Any, /) -> Sequence[_R_co]:
        """One result per item, in order."""
        ...

    def crashed(self, item: _T_contra, /) -> _R_co: ...


class Started(Protocol[_R_co]):
    """A chunk a job has begun."""

    def finish(self) -> Sequence[_R_co]:
        """One result per item, in order."""
        ...

    def abandon(self) -> None:
        """Release the chunk unfinished."""
        ...


class _Finished:
    def __init__(self, results: Sequence[Any]) -> None:
        self.results = results

    def finish(self) -> Sequence[Any]:
        return self.results

    def abandon(self) -> None:
        pass


def begin(job: Job[_T, _R], items: Sequence[_T], settings: Any) -> Started[_R]:
    """Begin a chunk: with the job's ``begin`` where it has one, else run it whole."""
    start = getattr(job, "begin", None)
    if start is None:
        return _Finished(job.run(items, settings))
    return cast("Started[_R]", start(items, settings))


def run_overlapped(job: Job[_T, _R], chunks: Iterable[Sequence[_T]], settings: Any) -> Iterator[_R]:
    """Run chunks in this process, in order, each begun before the one before it is finished."""
    pending: deque[Started[_R]] = deque()
    try:
        for chunk in chunks:
            pending.append(begin(job, chunk, settings))
            if len(pending) > 1:
                yield from pending.popleft().finish()
        while pending:
            yield from pending.popleft().finish()
    finally:
        for started in pending:
            started.abandon()


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(data)) + data


def _send(stream: IO[bytes], message: object) -> None:
    _send_frame(stream, _frame(message))


def _send_frame(stream: IO[bytes], data: bytes) -> None:
    frame = memoryview(data)
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
        self.chunks: deque[tuple[int, Sequence[Any]]] = deque()  # sent, not yet answered
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
        self.ahead_limit = _ahead_limit(self.requests.fileno())
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
                _serve(
                    os.fdopen(request_read, "rb", buffering=0),
                    os.fdopen(reply_write, "wb"),
                    (job, settings),
                )
                status = 0
            finally:
                os._exit(status)
        os.close(request_read)
        os.close(reply_write)
        self.process = None
        self.pid = pid
        self.requests = os.fdopen(request_write, "wb")
        self.replies = os.fdopen(reply_read, "rb", buffering=0)
        self.ahead_limit = _ahead_limit(request_write)

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

    def exited(self) -> bool:
        """Reap the worker if it has exited, without waiting; whether it has."""
        if self.process is not None:
            return self.process.poll() is not None
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] != 0
        except ChildProcessError:  # already reaped
            return True


_UNREAPED: list[_Worker] = []
"""Workers that had answered all their chunks but not yet exited when their batch ended."""
_UNREAPED_LOCK = threading.Lock()  # batches may run in several threads of one process


def reap_exited(*, wait: bool = False) -> None:
    """Reap the workers of earlier batches that have exited; with ``wait``, all of them.

    Waiting kills a worker that has not exited 10 s after its batch ended. Called as each batch
    starts and when the interpreter exits; a caller that counts its children's CPU time (with
    ``getrusage``) calls it with ``wait=True`` first.
    """
    with _UNREAPED_LOCK:
        for worker in list(_UNREAPED):
            if wait:
                worker.wait()
            elif not worker.exited():
                continue
            _UNREAPED.remove(worker)


atexit.register(reap_exited, wait=True)


def _ahead_limit(fd: int) -> int:
    """The largest frame to send ahead through pipe ``fd``: a quarter of its buffer (0: none).

    Linux pipes hold 64 KiB, or 4 KiB once a user has many: asked, not assumed. Elsewhere
    nothing is sent ahead.
    """
    get_size = getattr(fcntl, "F_GETPIPE_SZ", None) if fcntl is not None else None
    if get_size is None:
        return 0
    try:
        return int(fcntl.fcntl(fd, get_size)) // 4
    except OSError:
        return 0


def _reap(pid: int, timeout: float) -> None:
    """Wait for a forked child to exit; kill it if it has not after ``timeout`` seconds.

    Woken as it exits (through a pidfd, on Linux), or else polled from a fraction of a
    millisecond upwards: a worker whose pipe has closed exits at once, and a batch should not
    end later than it must after its last result.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, or before 5.3
        pidfd = -1
    if pidfd >= 0:
        try:
            exited = bool(select.select([pidfd], [], [], timeout)[0])
        finally:
            os.close(pidfd)
        if exited:
            os.waitpid(pid, 0)
            return
    else:
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
    """``(start, end)`` of each chunk: equal, at most ``chunksize`` items, four per worker or more.

    With four or more each, no worker idles for longer than one chunk at the end. The last
    chunks are not made smaller: each chunk costs a sync and a round trip of its own, and
    chunks shrinking towards the end made 2 workers 4-6 % slower on 1,000 files.
    """
    size = max(1, min(chunksize, count // (_CHUNKS_PER_WORKER_AT_LEAST * workers)))
    return [(start, min(count, start + size)) for start in range(0, count, size)]


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
        """Keep up to two chunks waiting behind the one a worker is on.

        The worker begins the next chunk before finishing its current one, and replies as it
        finishes: the chunk after must already be waiting then, or the worker would finish
        its last chunk alone, waiting for its sync.
        """
        if worker.requests.closed:  # told earlier that no work was left
            return
        while chunks and len(worker.chunks) < _CHUNKS_PER_WORKER:
            frame = _frame(chunks[0])
            if worker.chunks and not _may_send_ahead(
                worker.chunks[0], chunks[0], frame, worker.ahead_limit
            ):
                return
            worker.chunks.append(chunks.popleft())
            try:
                _send_frame(worker.requests, frame)
            except BrokenPipeError:  # it died: its replies' end says so, and its chunks go back
                return
        if not chunks:  # nothing more for anyone: it exits as soon as it is done
            worker.close()

    def retire(worker: _Worker) -> None:
        selector.unregister(worker.replies)
        pool.remove(worker)
        worker.stop()

    def let_exit(worker: _Worker) -> None:
        """Its last chunk is answered and it knows no more will come: it exits, unwaited."""
        selector.unregister(worker.replies)
        pool.remove(worker)
        worker.replies.close()
        if not worker.exited():
            with _UNREAPED_LOCK:
                _UNREAPED.append(worker)

    def lost(worker: _Worker) -> None:
        retire(worker)
        if not worker.ready:  # died before touching its chunk: the worker's fault, not an item's
            failed_starts.append(worker.pid)
            if len(failed_starts) >= MAX_FAILED_STARTS:
                raise RuntimeError(
                    f"{len(failed_starts)} worker processes exited before they started; "
                    "their error output says why"
                )
            chunks.extendleft(reversed(worker.chunks))
        elif len(worker.chunks) == 1 and len(worker.chunks[0][1]) == 1:
            start, chunk = worker.chunks[0]
            finished[start] = [job.crashed(chunk[0])]
        else:  # retry one by one (never sent ahead) to find the item that killed the worker
            chunks.extendleft(
                reversed(
                    [
                        (start + i, [x])
                        for start, chunk in worker.chunks
                        for i, x in enumerate(chunk)
                    ]
                )
            )
        if chunks and len(pool) < workers:
            start_worker()

    failed_starts: list[int] = []
    reap_exited()
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
                if not worker.chunks or reply_start != worker.chunks.popleft()[0]:
                    raise RuntimeError("a worker answered out of turn")
                finished[reply_start] = results
                feed(worker)
                if worker.requests.closed and not worker.chunks:
                    let_exit(worker)
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


def _may_send_ahead(
    waiting: tuple[int, Sequence[Any]], ahead: tuple[int, Sequence[Any]], frame: bytes, limit: int
) -> bool:
    """Whether to send ``ahead`` to a worker still on ``waiting`` (and maybe one more).

    Not a single item (retried alone, so that a crash names the item that caused it), and
    only a frame that fits in the pipe beside the one other that may still be unread there
    (``limit``): the parent, writing it, must never wait for a worker that may itself be waiting
    for the parent to read its answer.
    """
    return len(waiting[1]) > 1 and len(ahead[1]) > 1 and len(frame) <= limit


def _serve(
    requests: IO[bytes], replies: IO[bytes], inherited: tuple[Job[Any, Any], Any] | None = None
) -> None:
    """Answer chunks in order; one sent ahead is begun before the current one is finished."""
    job, settings = inherited if inherited is not None else _receive(requests)
    _send(replies, _READY)
    current: tuple[int, Started[Any]] | None = None
    try:
        while True:
            if current is not None and not _readable(requests):
                _send(replies, (current[0], current[1].finish()))
                current = None
            try:
                start, chunk = _receive(requests)
            except EOFError:
                break
            started = begin(job, chunk, settings)
            if current is not None:
                _send(replies, (current[0], current[1].finish()))
            current = (start, started)
        if current is not None:
            _send(replies, (current[0], current[1].finish()))
            current = None
    finally:
        if current is not None:
            current[1].abandon()


def _readable(stream: IO[bytes]) -> bool:
    """Whether a read would find data (or the end) without waiting; streams are unbuffered.

    False where pipes cannot be polled (Windows): the worker then finishes each chunk before
    reading the next, without the overlap.
    """
    try:
        return bool(select.select([stream], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def main() -> None:
    """Serve one parent: keep the protocol on the real stdout, send stray prints to stderr."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0), replies)


if __name__ == "__main__":
    main()
