"""The exactly-once reply ledger of one hosted session: every block it takes is answered once, in sequence order,
by whichever gets there first: the worker thread that processed it, its deadline, back-pressure or shutdown.
Thread-safe (one lock, held while a reply is sent); no event loop, no timers: hosted.py owns those."""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from lmdm_bridge.protocol.namespace import BlockFlag

from .peer import Peer

log = logging.getLogger("lmdm_bridge")


@dataclass
class PendingBlock:
    seq: int
    audio: np.ndarray
    flags: BlockFlag
    deadline: float | None  # loop time by which it must be answered
    answered: bool = False
    processed: bool = False  # answered processed, from the worker thread
    timer: object = None  # the event loop's deadline timer (hosted.py)
    held: int = 0  # bytes of the peer's quota it holds until it is answered (hosted.py)
    started: bool = False  # handed to a worker
    settled: bool = False  # its timer and quota given back, once answered (hosted.py)

    def reply_audio(self, out: np.ndarray) -> np.ndarray:
        """What a processed block is answered with: the output, or the (sanitised) input if it held NaN or Inf."""
        return self.audio if self.flags & BlockFlag.BAD_INPUT else out


class ReplyLedger:
    """The blocks of one session still waiting for their answer, oldest first, answered through ``peer``."""

    def __init__(self, session: str, peer: Peer, counts: Counter):
        self.session, self.peer, self.counts = session, peer, counts
        self._waiting: deque[PendingBlock] = deque()
        self._lock = threading.RLock()
        self._stopped = False  # no more replies (the peer is gone)

    @property
    def backlog(self) -> int:
        return len(self._waiting)

    def add(self, block: PendingBlock) -> None:
        self._waiting.append(block)

    def answer(self, block: PendingBlock, audio: np.ndarray, flags: BlockFlag) -> bool:
        """Answer ``block`` now unless it was answered already; whether this call answered it."""
        with self._lock:
            if block.answered or self._stopped:
                return False
            self._send(block, audio, flags)
            return True

    def answer_processed(self, block: PendingBlock, out: np.ndarray, flags: BlockFlag) -> None:
        """From the worker thread, as soon as the block is processed: its reply leaves from there (one thread
        hand-off less than going back through the event loop), unless its deadline passed first."""
        with self._lock:
            if block.answered or self._stopped:
                return
            self._send(block, block.reply_audio(out), flags)
            block.processed = True

    def expire_through(self, block: PendingBlock) -> list[PendingBlock]:
        """Answer, dry and late, every block up to this one that is still unanswered; returns those answered."""
        answered = []
        with self._lock:
            while not block.answered and not self._stopped:
                head = self._waiting[0]
                self._send(head, head.audio, BlockFlag.LATE)
                answered.append(head)
        return answered

    def expire_beyond(self, limit: int) -> list[PendingBlock]:
        """Answer the oldest blocks dry and late until at most ``limit`` wait."""
        answered = []
        with self._lock:
            while len(self._waiting) > limit and not self._stopped:
                answered += self.expire_through(self._waiting[0])
        return answered

    def expire_all(self) -> list[PendingBlock]:
        with self._lock:
            return self.expire_beyond(0)

    def waiting(self) -> list[PendingBlock]:
        with self._lock:
            return list(self._waiting)

    def take_all(self) -> list[PendingBlock]:
        """Forget every waiting block unanswered (its session never opened) and return them."""
        with self._lock:
            taken, self._waiting = list(self._waiting), deque()
            return taken

    def stop(self) -> None:
        """No replies from now on (the peer is gone)."""
        with self._lock:
            self._stopped = True

    def _send(self, block: PendingBlock, audio: np.ndarray, flags: BlockFlag) -> None:
        """Send a block's reply (with the lock held). A reply the transport fails to send is logged and counted
        (``unsent``) and the block still counts as answered: never raised, so a worker, or a loop answering several
        blocks at once, answers and settles every other block."""
        assert self._waiting and self._waiting[0] is block, "replies must leave in sequence order"
        self._waiting.popleft()
        block.answered = True
        flags |= block.flags
        if flags & BlockFlag.LATE:
            self.counts["late"] += 1
        try:
            self.peer.send_audio(self.session, block.seq, audio, int(flags))
        except Exception:
            self.counts["unsent"] += 1
            log.exception("session %r: failed to send the reply to block %d", self.session, block.seq)
