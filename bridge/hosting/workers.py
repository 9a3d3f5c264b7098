"""``Workers``: the threads hosted sessions run in, one block at a time per session, several sessions at once.

Without batching, a pool of ``workers`` threads (one per core by default) runs sessions' blocks side by side;
the runtime's ops release the GIL, so blocks of different sessions use different cores. With batching, every
session with a block in flight gets a thread, and their runtime calls meet in a ``BatchingRuntime``, which runs
them as batches, ``workers`` calls at once. Sessions must be built on ``workers.runtime`` for their calls to be
batched.
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
from lmdm_engine.stream.session import Session

from .batching import BatchingRuntime


class Workers:
    """The worker threads and the runtime the bridge's sessions run on (batching, or one thread per call)."""

    def __init__(self, runtime: Runtime, batching: bool = True, workers: int | None = None, max_sessions: int = 32):
        self.batching = batching
        workers = workers or os.cpu_count() or 1
        self.runtime: Runtime = BatchingRuntime(runtime, parallel=workers) if batching else runtime
        threads = max_sessions if batching else workers
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="lmdm-worker")
        self.process_seconds = 0.0  # wall time spent in session.process (summed over threads)
        self._lock = threading.Lock()

    async def run(self, fn, *args):
        """``fn(*args)`` in a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def process(self, session: Session, audio: np.ndarray, restart: bool,
                      finish: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        """``session.process(audio)`` in a worker thread, after ``session.reset()`` when ``restart``. ``finish``
        is called with the output in that thread as soon as it is ready (to send the reply from there, without
        waiting for the event loop to take it up); it must not raise."""
        return await self.run(self._process, session, audio, restart, finish)

    def _process(self, session: Session, audio: np.ndarray, restart: bool,
                 finish: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        start = time.perf_counter()
        try:
            if restart:
                session.reset()
            if isinstance(self.runtime, BatchingRuntime):
                with self.runtime.participant():
                    out = session.process(audio)
            else:
                out = session.process(audio)
        finally:
            with self._lock:
                self.process_seconds += time.perf_counter() - start
        if finish is not None:
            finish(out)
        return out

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
