"""The one thread that reads and prepares a run's chunks.

A run reads a chunk, then prepares it, then reads the next: the work is sequential, so
one thread does all of it. With ``asyncio.to_thread`` each step goes to the event
loop's default pool, which starts another thread (up to six here) whenever a step is
handed over before the thread that did the last one has marked itself idle: a race,
lost more often on a loaded machine (a dry run of 2M rows beside a busy process
prepared its chunks on two threads, 50 and 30). Every thread that allocates gets its
own allocator caches (glibc's arenas, Arrow's mimalloc heap, an arena of polars'
jemalloc), each keeping freed memory for that thread. Over a 10M-row dry run on a
loaded machine that was about 50 MB more at the peak (486 and 493 against 432 and
438 MB above the baseline, side by side); on an idle one, within the noise.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Worker:
    """A thread of its own for one run's blocking steps (see the module docstring)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="millimetric-run")

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the worker's thread, in the caller's context (as
        ``asyncio.to_thread`` does)."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self._pool, functools.partial(ctx.run, fn, *args))

    def close(self) -> None:
        """Let the thread end once it has finished what it is doing (never blocks)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["Worker"]
