"""Waiting out a file system's memory of recent deletions before timing file creation.

On ext4 without a journal (the machine the README's numbers come from) the inode allocator skips,
one by one, inodes deleted in the last minute, or in the last five while the deletion is not yet
written back. Right after a few thousand deletions (a test run, an earlier benchmark's clean-up)
creating a file costs 0.3-0.7 ms instead of about 20 µs, which would be charged to whichever
tool runs first. Benchmarks therefore sync, build their corpora, and wait out the rest of the
minute; they delete nothing while measuring, and sync again after their own clean-up.

A minute is not always enough: creating files dirties the inode table blocks they share with
the deleted ones, which then count as recent for five minutes again. After deleting tens of
thousands of files (the test suite does), pass ``--settle 360``.
"""

from __future__ import annotations

import os
import sys
import time

DEFAULT_SECONDS = 60.0


def start() -> float:
    """Write back earlier deletions (from then on they count for a minute only); the time."""
    os.sync()
    return time.monotonic()


def wait(since: float, seconds: float) -> None:
    """Sleep until ``seconds`` have passed ``since`` (a :func:`start` time)."""
    left = seconds - (time.monotonic() - since)
    if left > 0:
        print(f"settling for {left:.0f} s more (see --settle) ...", file=sys.stderr, flush=True)
        time.sleep(left)
