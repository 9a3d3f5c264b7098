"""Who a unit of work is for: every block, build and control request the workers run belongs to a ``WorkOwner``
(one per hosted session), which the runtime calls made for it carry (a thread-local, set by ``working_for``).

The scheduler (batching.py) orders runtime calls by their owner: calls for a block whose deadline is still ahead
first, then the rest (no deadline, or a deadline already passed: its block was answered dry); within each, the
owner that used the least of the machine lately goes first (its batch rows, decaying with a time constant of
``USAGE_SECONDS``). So a light session is served before heavy ones whatever their deadlines, and a heavy session
is late (or, past the quotas, refused) before a light one is. Cancelling an owner (its session closed without
waiting, or its peer went, or the server stops) stops its work at its next runtime call, with ``Cancelled``.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

USAGE_SECONDS = 1.0


class Cancelled(Exception):
    """Raised in a worker thread at the next runtime call of work whose owner was cancelled."""


class WorkOwner:
    """One hosted session's claim on the workers."""

    def __init__(self, name: str = ""):
        self.name = name
        self.cancelled = False
        self.deadline: float | None = None  # time.monotonic() by which the running block must be answered
        self._usage, self._used_at = 0.0, 0.0  # batch rows run for it, decaying, as of time _used_at

    def usage(self, now: float) -> float:
        """Batch rows run for it lately (decayed to ``now``)."""
        return self._usage * math.exp(-(now - self._used_at) / USAGE_SECONDS)

    def use(self, rows: int, now: float) -> None:
        self._usage, self._used_at = self.usage(now) + rows, now

    def urgent(self, now: float) -> bool:
        """Whether it works on a block whose deadline is ahead."""
        return self.deadline is not None and self.deadline > now

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled(f"the work of {self.name!r} was cancelled")


_local = threading.local()


@contextmanager
def working_for(owner: WorkOwner):
    """Runtime calls made in this thread inside the block are ``owner``'s."""
    previous = getattr(_local, "owner", None)
    _local.owner = owner
    try:
        yield owner
    finally:
        _local.owner = previous


def current_owner() -> WorkOwner | None:
    return getattr(_local, "owner", None)
