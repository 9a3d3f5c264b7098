"""One host's stream served by one engine Session: the queue pump, the deadlines, and the session it builds.

Chunks go through a ``BlockAssembler``; whole blocks and control requests (param, preset, reset, close) go into one
queue that a pump task works through in order, running the Session in the workers' threads. Every block taken is
registered with the session's ``ReplyLedger``, which answers each exactly once and in sequence order (ledger.py):

- processed, when the engine finishes it before its deadline (the reply leaves from the worker thread that ran it,
  on transports whose peers take sends from any thread; the event loop only settles timers afterwards);
- dry with ``LATE``, when its deadline passes first (a block already running still updates the session, and its
  output is dropped), or when more than ``max_queued_blocks`` wait. Blocks answered before they started are
  skipped, and the session restarts (``RESTARTED``) before the next block it processes, so its echo keeps the
  latency reported at open;
- dry with ``BAD_INPUT`` when it held NaN or Inf (the session still hears it, as silence, to stay in time);
- with ``CONCEALED`` when frames never arrived (they were silence). A block of which nothing arrived gets no reply
  (there is no length to answer with) and restarts the session like a skipped one.

The bridge resolves preset names (``resolve_preset``); the Session only ever gets ``SessionParams``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from typing import Callable

import numpy as np

from lmdm_bridge.protocol.namespace import PARAM, PRESET, RESET, BlockFlag, ErrorCode, ProtocolError
from lmdm_bridge.protocol.replies import close_reply, error_message, open_reply, params_reply
from lmdm_bridge.protocol.requests import LiveParams, OpenRequest
from lmdm_bridge.wire.blocks import AssembledBlock, BlockAssembler
from lmdm_bridge.wire.osc import Message
from lmdm_engine.io.presets import Preset
from lmdm_engine.stream.session import Session

from .ledger import PendingBlock, ReplyLedger
from .peer import Peer
from .workers import Workers

log = logging.getLogger("lmdm_bridge")

_LOST = object()  # queue marker: a block of which nothing arrived
_CLOSE = object()  # queue marker: answer what is queued, then close
# other queue items: PendingBlock, or a function run on the session (param, preset, reset) that returns the reply


class HostedSession:
    def __init__(self, request: OpenRequest, peer: Peer, workers: Workers,
                 resolve_preset: Callable[[str | None], Preset], deadline: float | None, reassembly_timeout: float, max_queued_blocks: int, info: dict,
                 on_closed: Callable):
        self.id = request.session
        self.peer = peer
        self.request = request
        self.workers = workers
        self.deadline = deadline
        self.max_queued_blocks = max_queued_blocks
        self.counts = Counter()
        self.session: Session | None = None
        self.preset_name = ""  # the preset the session's parameters came from
        self._resolve_preset = resolve_preset
        self._info = info
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self.last_activity = self._loop.time()
        self._assembler = BlockAssembler(request.channels, request.buffer_frames, reassembly_timeout)
        self._assembly_timer: asyncio.TimerHandle | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._ledger = ReplyLedger(self.id, peer, self.counts)
        self._needs_restart = False
        self._closing = False
        self._task = self._loop.create_task(self._pump(), name=f"lmdm session {self.id}")
        self._task.add_done_callback(self._finished)  # runs even when cancelled before it started

    # ---- input, called from the event loop ------------------------------------------------------------
    def add_chunk(self, seq: int, frame_offset: int, total_frames: int, samples: bytes) -> None:
        """Raises ChunkError for a chunk that cannot belong to this session's stream."""
        now = self._loop.time()
        self.last_activity = now
        self._accept(self._assembler.add(seq, frame_offset, total_frames, samples, now))

    def repeat_open_reply(self) -> None:
        """Answer a repeated open again (once the session is built; until then its first answer is on the way)."""
        if self.session is not None and not self._closing:
            self.peer.send(open_reply(self.id, self.session.latency_samples, self._open_info()))

    def reject(self, seq: int) -> None:
        """A block answered with an error instead of audio: the stream goes on without it (as if lost)."""
        self._accept(self._assembler.skip(seq, self._loop.time()))

    def set_params(self, params: LiveParams) -> None:
        """Change parameters between blocks (style weights merge into the current style); replies with all of them."""
        def apply(session: Session) -> Message:
            changes = dict(params.fields)
            if params.style:
                changes["style"] = {**session.params.style, **params.style}
            session.set_params(**changes)
            return params_reply(self.id, self.preset_name, session.params, PARAM)
        self._control(apply)

    def set_preset(self, name: str) -> None:
        def apply(session: Session) -> Message:
            preset = self._resolve_preset(name)
            session.set_params(preset.params)
            self.preset_name = preset.name
            return params_reply(self.id, self.preset_name, session.params, PRESET)
        self._control(apply)

    def reset(self) -> None:
        """Forget all audio; replies like open, with the latency (which follows the current delay)."""
        def apply(session: Session) -> Message:
            session.reset()
            self._needs_restart = False
            return open_reply(self.id, session.latency_samples, self._open_info(), RESET)
        self._control(apply)

    def _control(self, apply: Callable[[Session], Message]) -> None:
        self.last_activity = self._loop.time()
        self._queue.put_nowait(apply)

    def close(self) -> None:
        """Answer what is queued (blocks still missing chunks included, concealed), then send the close reply."""
        if not self._closing:
            self._closing = True
            self._accept(self._assembler.poll(math.inf))
            self._queue.put_nowait(_CLOSE)

    def abort(self) -> None:
        """Stop now without replies (the peer is gone)."""
        self._closing = True
        self._ledger.stop()
        self._cancel_timers()
        self._task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._task, return_exceptions=True)

    def answer_all_late(self) -> None:
        """Answer every waiting block dry and late now (shutdown that cannot wait any longer)."""
        self._settle(self._ledger.expire_all())

    @property
    def backlog(self) -> int:
        return self._ledger.backlog

    # ---- blocks ---------------------------------------------------------------------------------------
    def _poll_assembler(self) -> None:
        self._assembly_timer = None
        self._accept(self._assembler.poll(self._loop.time()))

    def _accept(self, blocks: list[AssembledBlock]) -> None:
        for assembled in blocks:
            if assembled.lost:
                self.counts["lost"] += 1
                self._queue.put_nowait(_LOST)
                continue
            self._enqueue(assembled)
        when = self._assembler.next_timeout()
        timer = self._assembly_timer
        if timer is not None and when == timer.when():  # the usual case: a chunk of the block already waited on
            return
        if timer is not None:
            timer.cancel()
            self._assembly_timer = None
        if when is not None:
            self._assembly_timer = self._loop.call_at(when, self._poll_assembler)

    def _enqueue(self, assembled: AssembledBlock) -> None:
        audio, flags = assembled.audio, BlockFlag(0)
        if assembled.concealed:
            flags |= BlockFlag.CONCEALED
            self.counts["concealed"] += 1
        bad = ~np.isfinite(audio)
        if bad.any():
            audio[bad] = 0.0
            flags |= BlockFlag.BAD_INPUT
            self.counts["bad_input"] += 1
        deadline = None if self.deadline is None else assembled.first_arrival + self.deadline
        block = PendingBlock(assembled.seq, audio, flags, deadline)
        self.counts["blocks"] += 1
        self._ledger.add(block)
        if deadline is not None:
            block.timer = self._loop.call_at(deadline, self._expire_through, block)
        self._settle(self._ledger.expire_beyond(self.max_queued_blocks))
        self._queue.put_nowait(block)
        self._update_congestion()

    def _expire_through(self, block: PendingBlock) -> None:
        """Answer, dry and late, every block up to this one that is still unanswered (its deadline passed)."""
        self._settle(self._ledger.expire_through(block))

    def _answer(self, block: PendingBlock, audio: np.ndarray, flags: BlockFlag) -> None:
        """Answer a block from the event loop (unless a worker answered it meanwhile)."""
        if self._ledger.answer(block, audio, flags):
            self._settle([block])

    def _settle(self, blocks: list[PendingBlock]) -> None:
        """On the loop, once blocks are answered (from here or a worker): their timers and the back-pressure."""
        for block in blocks:
            if block.timer is not None:
                block.timer.cancel()
        if blocks:
            self._update_congestion()

    def _update_congestion(self) -> None:
        self.peer.set_congested(self.id, self.backlog >= max(1, self.max_queued_blocks // 2))

    async def _process(self, block: PendingBlock) -> None:
        if block.answered:  # answered late before it started: skipped
            self._needs_restart = True
            return
        restart, self._needs_restart = self._needs_restart, False
        flags = BlockFlag.RESTARTED if restart else BlockFlag(0)
        finish = ((lambda out: self._ledger.answer_processed(block, out, flags))
                  if self.peer.threadsafe_sends else None)
        try:
            out = await self.workers.process(self.session, block.audio, restart, finish)
        except Exception as e:
            log.exception("session %r: the engine failed on block %d", self.id, block.seq)
            self._needs_restart = True  # the session may be half way through the block
            self.counts["engine_errors"] += 1
            self.peer.send(error_message(ProtocolError(
                ErrorCode.ENGINE_ERROR, f"the engine failed on this block ({type(e).__name__}: {e}); answered dry",
                self.id, block.seq)))
            self._answer(block, block.audio, BlockFlag.ENGINE_ERROR)
            return
        if restart:
            self.counts["restarts"] += 1
        if block.processed:  # answered from the worker thread
            self.counts["processed"] += 1
            self._settle([block])
            return
        if block.answered:  # its deadline passed while it ran: answered dry already
            return
        self.counts["processed"] += 1
        self._answer(block, block.reply_audio(out), flags)

    # ---- the pump -------------------------------------------------------------------------------------
    async def _open(self) -> bool:
        r = self.request
        try:
            self.session = await self.workers.run(self._build_session)
        except ValueError as e:  # PresetError included: the message names the field and the allowed values
            self._fail_open(ProtocolError(ErrorCode.BAD_PARAMETER, str(e), self.id))
            return False
        except Exception as e:
            log.exception("session %r: the engine failed to open it", self.id)
            self._fail_open(ProtocolError(ErrorCode.ENGINE_ERROR, f"the engine failed to open the session "
                                                                  f"({type(e).__name__}: {e})", self.id))
            return False
        self.peer.send(open_reply(self.id, self.session.latency_samples, self._open_info()))
        log.info("session %r opened: %d Hz, %d ch, buffers of %d frames, preset %s", self.id, r.sample_rate,
                 r.channels, r.buffer_frames, self.preset_name)
        return True

    def _build_session(self) -> Session:
        """The open's preset with its parameters over it (style weights merged into the preset's style)."""
        r = self.request
        preset = self._resolve_preset(r.preset)
        params = preset.params
        if r.params.fields or r.params.style:
            params = params.replace(**r.params.fields, style={**params.style, **r.params.style})
        self.preset_name = preset.name
        return Session(self.workers.runtime, r.sample_rate, r.channels, params)

    def _open_info(self) -> dict:
        s = self.session
        return {**self._info, "preset": self.preset_name, "delay_seconds": s.params.delay_seconds,
                "model_block_frames": s.block_frames,
                "deadline_ms": 0.0 if self.deadline is None else 1000.0 * self.deadline}

    def _fail_open(self, error: ProtocolError) -> None:
        """The session could not be built: say why, and reject what was sent to it meanwhile."""
        self.peer.send(error_message(error))
        self._closing = True
        self._cancel_timers()
        for block in self._ledger.take_all():
            self.peer.send(error_message(ProtocolError(
                ErrorCode.UNKNOWN_SESSION, f"session {self.id!r} did not open: {error}", self.id, block.seq)))

    async def _run_control(self, apply: Callable[[Session], Message]) -> None:
        """A param, preset or reset request, run on the session in queue order; ``apply`` returns the reply."""
        try:
            reply = await self.workers.run(apply, self.session)
        except ValueError as e:  # PresetError included: the message names the field and the allowed values
            reply = error_message(ProtocolError(ErrorCode.BAD_PARAMETER, str(e), self.id))
        self.peer.send(reply)

    async def _pump(self) -> None:
        if not await self._open():
            return
        while True:
            item = await self._queue.get()
            if item is _CLOSE:
                break
            try:
                if item is _LOST:
                    self._needs_restart = True
                elif isinstance(item, PendingBlock):
                    await self._process(item)
                else:
                    await self._run_control(item)
            except Exception as e:  # a bug must cost one request, never the session
                log.exception("session %r: failed on a queued request", self.id)
                self.peer.send(error_message(ProtocolError(
                    ErrorCode.ENGINE_ERROR, f"internal error: {type(e).__name__}", self.id)))
                if isinstance(item, PendingBlock) and not item.answered:
                    self._expire_through(item)
        self.peer.send(close_reply(self.id, self.summary()))
        log.info("session %r closed: %s", self.id, self.summary())

    def _finished(self, task: asyncio.Task) -> None:
        self._cancel_timers()
        if not task.cancelled() and task.exception() is not None:
            log.error("session %r stopped on an error", self.id, exc_info=task.exception())
        self._on_closed(self)

    def summary(self) -> dict:
        return {key: self.counts[key] for key in ("blocks", "processed", "late", "concealed", "lost", "bad_input",
                                                  "restarts", "engine_errors")}

    def _cancel_timers(self) -> None:
        if self._assembly_timer is not None:
            self._assembly_timer.cancel()
        for block in self._ledger.waiting():
            if block.timer is not None:
                block.timer.cancel()
