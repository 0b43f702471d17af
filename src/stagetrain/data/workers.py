"""The process pool organize checks images and writes files with: forked workers, results in input order."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from stagetrain import progress


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def pool(workers: int) -> Iterator[multiprocessing.pool.Pool | None]:
    """A pool of ``workers`` processes, or None (work in this process) for one worker."""
    if workers <= 1:
        yield None
        return
    # fork: workers start in milliseconds and need nothing pickled but file names
    methods = multiprocessing.get_all_start_methods()
    with multiprocessing.get_context("fork" if "fork" in methods else None).Pool(workers) as workers_pool:
        yield workers_pool


def pmap(workers_pool: multiprocessing.pool.Pool | None, fn: Callable, args: Sequence, desc: str) -> list:
    """``fn`` over ``args`` in order, on the pool when there is one: a bar on a terminal, one summary line in a log."""
    chunk = max(1, min(64, len(args) // 32))  # big enough to amortise the IPC, small enough to balance the tail
    results = workers_pool.imap(fn, args, chunksize=chunk) if workers_pool else map(fn, args)
    return list(progress.track(results, desc, total=len(args)))
