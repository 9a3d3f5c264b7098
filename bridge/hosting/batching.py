"""The meeting point of the sessions' runtime calls: fair scheduling, cross-session batching and cancellation.

Each worker wraps its session work in ``with runtime.participant():``. A participant's calls to ``velocity`` and
``append_context`` wait in the proxy, which runs them ``parallel`` at a time (one per core). Whenever a slot is
free, the waiting call of highest priority runs next (work.py): calls for a block whose deadline is ahead first,
then the others; within each, the owner that used the least of the machine lately first. It runs as soon as no
participant still working could make a call of higher priority; calls without a deadline wait until every
participant is waiting (so that they meet in batches). And while a session works on a block whose deadline is
ahead, sessions that used more than twice as much of the machine lately start no call: the light session has the
machine to itself but for the calls already running. So a light session's block waits for at most one running
call per core, however many heavy sessions (long or short blocks, many steps, guidance) there are, and a heavy
session's share of the machine is what the light ones leave.

With ``merge`` (batching), the next call runs together with the waiting calls that can meet it, as one call on the
wrapped runtime: grouped by the call, its block length and, for ``velocity``, its time t (sessions whose block
length, steps, sampler and strength agree meet at the same times), with the sessions' states concatenated along the
batch and the results split back; at most ``max_rows`` batch rows, and no more than a fair part of the waiting
group when other slots are free to take the rest. Without ``merge`` every call runs on its own. Sessions keep their
own per-block logic; the proxy only changes how their runtime calls are run. Calls made outside a participant
scope go straight to the wrapped runtime. A call whose owner is cancelled raises ``Cancelled`` instead of running.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from contextlib import contextmanager

import numpy as np

from lmdm_engine.runtime.interface import Runtime

from .work import Cancelled, current_owner

# batch rows per runtime call at most (a row is one channel of one session, two with guidance): the shipped model's
# call costs about 2.5 ms a row on a CPU core past 2 rows, so a call holds its core for about 20 ms at most
MAX_ROWS = 8
# a session that used this many times what another used lately starts no call while the other works on a live block
HEAVY_RATIO = 2.0


class _Call:
    __slots__ = ("kind", "key", "state", "x", "cond", "result", "error", "done", "owner", "order", "thread", "part")

    def __init__(self, kind: str, key: tuple, state: dict, x: np.ndarray, cond: np.ndarray | None):
        self.kind, self.key, self.state, self.x, self.cond = kind, key, state, x, cond
        self.result = self.error = None
        self.done = False
        self.owner = None
        self.order = 0
        self.thread = 0
        self.part: list | None = None  # the part this call leads (its thread runs it), once one is given it


class BatchingRuntime:
    """A Runtime that runs concurrent sessions' calls on ``runtime`` in priority order, up to ``parallel`` calls at
    once, batched across sessions with ``merge``."""

    def __init__(self, runtime: Runtime, parallel: int | None = None, merge: bool = True, max_rows: int = MAX_ROWS):
        self.runtime = runtime
        self.merge = merge
        self.name = f"{runtime.name}+batching" if merge else runtime.name
        self.config = runtime.config
        self.latent_scale, self.codec = runtime.latent_scale, runtime.codec
        self.parallel = parallel or os.cpu_count() or 1
        self.max_rows = max_rows
        self._lock = threading.Condition()
        self._members: dict[int, object] = {}  # thread id -> owner, of the threads inside participant()
        self._inside: set[int] = set()  # members whose call is not done yet
        self._waiting: list[_Call] = []
        self._free = self.parallel  # slots not running a call
        self._order = itertools.count()
        # ids of states -> (the states, their concatenation): the last groups run (each holds KV caches)
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

    # ---- scheduling -----------------------------------------------------------------------------------
    @contextmanager
    def participant(self):
        """Scope of one worker's session work: its runtime calls are scheduled with the other participants'."""
        me = threading.get_ident()
        with self._lock:
            self._members[me] = current_owner()
        try:
            yield
        finally:
            with self._lock:
                del self._members[me]
                self._dispatch()  # the others may not have to wait for it any more

    def wake(self) -> None:
        """Wake the waiting calls (after an owner was cancelled: its waiting calls leave with ``Cancelled``)."""
        with self._lock:
            self._dispatch()
            self._lock.notify_all()

    @staticmethod
    def _priority(owner, order: int, now: float) -> tuple:
        if owner is None:
            return (1, 0.0, order)
        return (0 if owner.urgent(now) else 1, owner.usage(now), order)

    def _yields(self, owner, now: float) -> bool:
        """Whether ``owner``'s calls wait: a participant working on a block whose deadline is ahead used less than
        ``1 / HEAVY_RATIO`` of what ``owner`` used lately."""
        limit = owner.usage(now) / HEAVY_RATIO
        return any(o is not None and o is not owner and o.urgent(now) and o.usage(now) < limit
                   for o in self._members.values())

    def _dispatch(self) -> None:
        """Give the free slots the waiting calls that may run now (called with the lock held, whenever something
        changed): each part is run by the thread of its first call, of the highest priority."""
        assigned = False
        while self._free:
            group = self._choose()
            if group is None:
                break
            parts = min(self._free, len(group))  # every free slot gets a share of the group
            bounds = [len(group) * i // parts for i in range(parts + 1)]
            for a, b in zip(bounds, bounds[1:]):
                group[a].part = group[a:b]
                self._free -= 1
            assigned = True
        if assigned:
            self._lock.notify_all()

    def _choose(self) -> list[_Call] | None:
        """The highest-priority waiting call with the calls it meets, taken off the waiting list; None when it
        should wait."""
        if not self._waiting:
            return None
        now = time.monotonic()
        ranked = sorted(self._waiting, key=lambda c: self._priority(c.owner, c.order, now))
        top = ranked[0]
        outside = [owner for thread, owner in self._members.items() if thread not in self._inside]
        if outside and sum(c.x.shape[0] for c in ranked) < self.max_rows:
            first = self._priority(top.owner, -1, now)
            if first[0] == 1 or any(self._priority(owner, -1, now) <= first for owner in outside):
                return None  # a participant still working may make a more urgent call (or one to batch with)
        if top.owner is not None and self._yields(top.owner, now):
            return None  # a much lighter session is working on a block with a deadline: it has the machine
        group, rows = [top], top.x.shape[0]
        for call in ranked[1:] if self.merge else ():
            if call.key == top.key and rows + call.x.shape[0] <= self.max_rows * self._free:
                group.append(call)
                rows += call.x.shape[0]
        taken = {id(c) for c in group}
        self._waiting = [c for c in self._waiting if id(c) not in taken]
        for call in group:
            if call.owner is not None:
                call.owner.use(call.x.shape[0], now)
        return group

    def _call(self, call: _Call):
        owner = current_owner()
        me = threading.get_ident()
        with self._lock:
            self.requests += 1
            direct = me not in self._members
            if not direct:
                if owner is not None:
                    owner.check()
                call.owner, call.order, call.thread = owner, next(self._order), me
                self._waiting.append(call)
                self._inside.add(me)
                self._dispatch()
        if direct:
            self._execute([call])
        else:
            with self._lock:
                while not call.done and call.part is None:
                    if owner is not None and owner.cancelled and call in self._waiting:
                        self._waiting.remove(call)
                        self._inside.discard(me)
                        self._dispatch()
                        raise Cancelled(f"the work of {owner.name!r} was cancelled")
                    self._lock.wait()
            if call.part is not None:  # this thread runs the part its call leads
                part, call.part = call.part, None  # (no reference cycle: calls hold arrays)
                self._run(part)
        if call.error is not None:
            raise call.error
        return call.result

    def _run(self, part: list[_Call]) -> None:
        """Run one part in this thread (outside the lock: other slots run theirs meanwhile)."""
        try:
            self._execute(part)
        finally:
            with self._lock:
                for call in part:
                    call.done = True
                    call.state = call.x = call.cond = None  # what it ran on: not kept past the call
                    self._inside.discard(call.thread)  # at once: it is working again, not waiting to be woken
                self._free += 1
                self._dispatch()
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
