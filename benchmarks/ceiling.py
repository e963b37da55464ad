"""What this machine's cores give N processes at all: the ceiling for the N-worker target.

On a shared virtual machine two cores rarely give twice one core's work: the host's other tenants
(on the sibling hyper-threads, or for the memory bus) take their share, and no ``steal`` counter
shows it. A CPU-bound pure-Python loop, timed alone and then in N forked processes at once, shows
how much of N times one process's rate any program can get here, in the same round as the
N-worker run it is compared with.
"""

from __future__ import annotations

import os
import time

LOOP_ITERATIONS = 400_000
"""About 0.1-0.2 s of work per process: dictionary, tuple and bytes operations, as the fast path."""


def _loop(iterations: int) -> int:
    counts: dict[tuple[int, bytes], int] = {}
    data = b"0123456789abcdef" * 256
    for i in range(iterations):
        key = (i & 1023, data[i & 255 : (i & 255) + 16])
        counts[key] = counts.get(key, 0) + 1
    return len(counts)


def _timed(processes: int, iterations: int) -> float:
    """Seconds for ``processes`` forked processes, started together, to each run the loop."""
    started = time.perf_counter()
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:  # the child
            status = 1
            try:
                _loop(iterations)
                status = 0
            finally:
                os._exit(status)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return time.perf_counter() - started


def cpu_scaling(processes: int, iterations: int = LOOP_ITERATIONS) -> float:
    """How many times one process's work ``processes`` processes did in the same time.

    ``processes`` on a machine with that many idle cores of its own: close to ``processes``.
    """
    alone = _timed(1, iterations)
    together = _timed(processes, iterations)
    return processes * alone / together
