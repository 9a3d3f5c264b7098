"""Cross-session batching: a Runtime proxy through which Sessions running in worker threads meet.

Each worker wraps its ``session.process`` call in ``with runtime.participant():``. A participant's calls to
``velocity`` and ``append_context`` wait in the proxy; when every participant is waiting (or running a batch),
the waiting calls are grouped by what makes them batchable (the call, its block length and, for ``velocity``, its
time t: sessions whose block length, steps, sampler and strength agree meet at the same times). Each group runs
as one call on the wrapped runtime, with the sessions' states concatenated along the batch, and the results are
split back. On a CPU one call keeps one core busy, so groups are split until there are ``parallel`` calls (one per
core) and these run at once: as few calls as possible, but never fewer than there are cores to run them.
Sessions keep their own per-block logic; the proxy only changes how their runtime calls are run. Calls made
outside a participant scope go straight to the wrapped runtime.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from lmdm_engine.runtime.interface import Runtime


class _Call:
    __slots__ = ("kind", "key", "state", "x", "cond", "result", "error", "done")

    def __init__(self, kind: str, key: tuple, state: dict, x: np.ndarray, cond: np.ndarray | None):
        self.kind, self.key, self.state, self.x, self.cond = kind, key, state, x, cond
        self.result = self.error = None
        self.done = False


class BatchingRuntime:
    """A Runtime that runs concurrent sessions' calls as batches on ``runtime``, up to ``parallel`` at once."""

    def __init__(self, runtime: Runtime, parallel: int | None = None):
        self.runtime = runtime
        self.name = f"{runtime.name}+batching"
        self.config = runtime.config
        self.latent_scale, self.codec = runtime.latent_scale, runtime.codec
        self.parallel = parallel or os.cpu_count() or 1
        self._helpers = ThreadPoolExecutor(self.parallel - 1, "lmdm-batch") if self.parallel > 1 else None
        self._lock = threading.Condition()
        self._participants = 0  # threads inside participant()
        self._blocked = 0  # participants waiting in a call or running a batch
        self._waiting: list[_Call] = []
        # ids of states -> (the states, their concatenation): the groups of the last rounds (each holds KV caches)
        self._stacked: dict[tuple, tuple[list, dict]] = {}
        self._stacked_limit = 2 * self.parallel + 2
        self.requests = 0  # calls the sessions made
        self.calls = 0  # calls made on the wrapped runtime for them
        self.rows = 0  # batch rows those calls carried

    # ---- the Runtime interface ----------------------------------------------------------------------
    def new_state(self, batch: int) -> dict:
        return self.runtime.new_state(batch)

    def concat_states(self, states: list[dict]) -> dict:
        return self.runtime.concat_states(states)

    def split_state(self, state: dict, sizes: list[int]) -> list[dict]:
        return self.runtime.split_state(state, sizes)

    def append_context(self, state: dict, frames: np.ndarray) -> dict:
        return self._call(_Call("append_context", ("append_context", frames.shape[1:]), state, frames, None))

    def velocity(self, state: dict, x: np.ndarray, t: float, cond: np.ndarray) -> np.ndarray:
        return self._call(_Call("velocity", ("velocity", x.shape[1:], float(t)), state, x, cond))

    # ---- rendezvous -----------------------------------------------------------------------------------
    @contextmanager
    def participant(self):
        """Scope of one worker's session work: its runtime calls are batched with the other participants'."""
        with self._lock:
            self._participants += 1
        try:
            yield
        finally:
            with self._lock:
                self._participants -= 1
                batch = self._take_batch()
            if batch:
                self._run(batch)

    def _take_batch(self) -> list[_Call]:
        """The waiting calls, once every participant is blocked (called with the lock held)."""
        if not self._waiting or self._blocked < self._participants:
            return []
        batch, self._waiting = self._waiting, []
        return batch

    def _call(self, call: _Call):
        with self._lock:
            self.requests += 1
            if self._participants == 0:
                direct = True
            else:
                direct = False
                self._waiting.append(call)
                self._blocked += 1
                batch = self._take_batch()
        if direct:
            self._execute([call])
        else:
            if batch:
                self._run(batch)
            with self._lock:
                while not call.done:
                    self._lock.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _parts(self, batch: list[_Call]) -> list[list[_Call]]:
        """The batch as runtime calls: one per group of compatible calls, the largest groups halved until there
        are ``parallel`` calls (or no group has two calls left)."""
        groups = defaultdict(list)
        for call in batch:
            groups[call.key].append(call)
        parts = list(groups.values())
        while len(parts) < self.parallel:
            largest = max(parts, key=len)
            if len(largest) < 2:
                break
            parts.remove(largest)
            parts += [largest[: len(largest) // 2], largest[len(largest) // 2:]]
        return parts

    def _run(self, batch: list[_Call]) -> None:
        """Run a batch: its calls on this thread and the helpers at once (outside the lock, so that the other
        participants may gather the next batch meanwhile)."""
        parts = self._parts(batch)
        own, helped = (parts[:1], parts[1:]) if self._helpers else (parts, [])
        try:
            futures = [self._helpers.submit(self._execute, part) for part in helped]
            for part in own:
                self._execute(part)
            for future in futures:
                future.result()
        finally:
            with self._lock:
                for call in batch:
                    call.done = True
                self._blocked -= len(batch)  # now, not when each caller wakes: the next round must not wait on them
                self._lock.notify_all()

    def _stack(self, states: list[dict]) -> dict:
        """The states concatenated, reusing an earlier concatenation of the same states (the velocity steps of
        one block all run against the same caches)."""
        key = tuple(id(s) for s in states)
        previous = self._stacked.get(key)
        if previous is not None and all(a is b for a, b in zip(previous[0], states)):
            return previous[1]
        stacked = self.runtime.concat_states(states)
        self._stacked[key] = (states, stacked)
        while len(self._stacked) > self._stacked_limit:
            self._stacked.pop(next(iter(self._stacked)), None)
        return stacked

    def _execute(self, group: list[_Call]) -> None:
        """One call on the wrapped runtime for a group of compatible calls; each call gets its part back."""
        sizes = [call.x.shape[0] for call in group]
        try:
            if len(group) == 1:
                call = group[0]
                state, x, cond = call.state, call.x, call.cond
            else:
                state = self._stack([call.state for call in group])
                x = np.concatenate([call.x for call in group], 0)
                cond = None if group[0].cond is None else np.concatenate([call.cond for call in group], 0)
            if group[0].kind == "velocity":
                entries = set(state)
                result = self.runtime.velocity(state, x, group[0].key[2], cond)
                parts = np.split(result, np.cumsum(sizes)[:-1], 0)
                if len(group) > 1 and set(state) != entries:
                    # the runtime folded queued context into the batch's cache in place (ONNX: the fused first
                    # step); hand each session its part so its own state stays current
                    for call, own in zip(group, self.runtime.split_state(state, sizes)):
                        call.state.clear()
                        call.state.update(own)
            else:
                result = self.runtime.append_context(state, x)
                parts = [result] if len(group) == 1 else self.runtime.split_state(result, sizes)
            with self._lock:
                self.calls += 1
                self.rows += sum(sizes)
            for call, part in zip(group, parts):
                call.result = part
        except Exception as e:  # every caller in the group sees the failure in its own thread
            for call in group:
                call.error = e
