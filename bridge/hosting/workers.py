"""``Workers``: the threads hosted sessions run in, and the one place their runtime calls meet.

Each block runs in a thread of its own (one per session with a block in flight: a session runs one block at a
time, and the bridge holds at most ``max_sessions`` sessions), inside a participant scope of the scheduling
runtime (batching.py), which runs every session's runtime calls by priority, ``workers`` calls at once, batched
across sessions with ``batching``. Blocks without a deadline (offline work) run at most ``workers - 1`` at once
(one with a single worker): their resampling and codec work, which runs between their runtime calls, then leaves
a core to the live sessions. Session builds and control requests (param, preset, reset) run in a thread of
their own, never queued behind anyone's audio. Every run is for a ``WorkOwner`` (work.py); ``cancel`` stops an
owner's work at its next runtime call, and a build or control request not started yet is skipped. Sessions must be
built on ``workers.runtime`` for their calls to be scheduled.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from lmdm_engine.runtime.interface import Runtime

from .batching import BatchingRuntime
from .work import WorkOwner, working_for


class Workers:
    """The worker threads and the runtime the bridge's sessions run on."""

    def __init__(self, runtime: Runtime, batching: bool = True, workers: int | None = None, max_sessions: int = 32):
        self.batching = batching
        workers = workers or os.cpu_count() or 1
        self.runtime = BatchingRuntime(runtime, parallel=workers, merge=batching)
        self._pool = ThreadPoolExecutor(max_sessions, thread_name_prefix="lmdm-worker")
        self._setup = ThreadPoolExecutor(1, thread_name_prefix="lmdm-setup")
        self._offline_slots = max(1, workers - 1)
        self._offline: asyncio.Semaphore | None = None  # made on the event loop, at first use
        self.process_seconds = 0.0  # wall time spent processing blocks (summed over threads)
        self._lock = threading.Lock()

    async def setup(self, owner: WorkOwner, fn: Callable, *args):
        """``fn(*args)`` in the setup thread for ``owner`` (a build or a control request); raises Cancelled,
        without running it, when the owner was cancelled before it started."""
        def run():
            owner.check()
            with working_for(owner):
                return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._setup, run)

    async def process(self, owner: WorkOwner, deadline: float | None, fn: Callable[[], np.ndarray],
                      finish: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        """``fn()`` (one block's work) in a worker thread for ``owner``, whose runtime calls are scheduled by
        ``deadline`` (time.monotonic(); None: none). ``finish`` is called with the output in that thread as soon
        as it is ready (to send the reply from there, without waiting for the event loop); it must not raise."""
        loop = asyncio.get_running_loop()
        if deadline is not None:
            return await loop.run_in_executor(self._pool, self._process, owner, deadline, fn, finish)
        if self._offline is None:
            self._offline = asyncio.Semaphore(self._offline_slots)
        async with self._offline:
            return await loop.run_in_executor(self._pool, self._process, owner, deadline, fn, finish)

    def _process(self, owner: WorkOwner, deadline: float | None, fn, finish) -> np.ndarray:
        start = time.perf_counter()
        owner.deadline = deadline
        try:
            owner.check()
            with working_for(owner), self.runtime.participant():
                out = fn()
        finally:
            owner.deadline = None
            with self._lock:
                self.process_seconds += time.perf_counter() - start
        if finish is not None:
            finish(out)
        return out

    def cancel(self, owner: WorkOwner) -> None:
        """Stop ``owner``'s work: what runs stops at its next runtime call, what waits is skipped."""
        owner.cancelled = True
        self.runtime.wake()

    def shutdown(self) -> None:
        for pool in (self._setup, self._pool):
            pool.shutdown(wait=True, cancel_futures=True)
