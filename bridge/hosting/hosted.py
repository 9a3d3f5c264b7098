"""One host's stream served by one engine Session: the queue pump, the deadlines, and the session it builds.

Chunks go through a ``BlockAssembler``; whole blocks and control requests (param, preset, reset, close) go into one
queue that a pump task works through in order, running the Session in the workers' threads. Every block taken is
registered with the session's ``ReplyLedger``, which answers each exactly once and in sequence order (ledger.py):

- processed, when the engine finishes it before its deadline (the reply leaves from the worker thread that ran it,
  on transports whose peers take sends from any thread; the event loop only settles timers afterwards);
- dry with ``LATE``, when its deadline passes first (a block already running still updates the session, and its
  output is dropped), or when more than ``max_queued_blocks`` wait (or more than its peer's quota, all its sessions
  together). Blocks answered before they started are skipped, and the session restarts (``RESTARTED``) before the
  next block it processes, so its echo keeps the latency reported at open;
- dry with ``BAD_INPUT`` when it held NaN or Inf (the session still hears it, as silence, to stay in time);
- with ``CONCEALED`` when frames never arrived (they were silence). A block of which nothing arrived gets no reply
  (there is no length to answer with) and restarts the session like a skipped one.

Everything the session takes on is its own and bounded: its share of the peer's quotas (quotas.py: its load, the
bytes of every block from its first chunk until its reply leaves, its queued blocks) is given back when it ends,
and its work is a ``WorkOwner``'s (work.py): a close before the session is built skips the build, an abort (the
peer is gone, the server stops) stops what runs at its next runtime call. Parameters are checked here, on the
event loop, before anything is queued (``check_params``), so a change the quotas refuse never reaches the engine.

The session plays its preset's whole sound, as ``lmdm process`` does: the preset's ``pre`` board, the Session,
its ``post`` board (built-in plugins only over the bridge: the dispatcher refuses presets that load plugin files).
The bridge resolves preset names; the Session only ever gets ``SessionParams``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lmdm_bridge.protocol.namespace import PARAM, PRESET, RESET, BlockFlag, ErrorCode, ProtocolError
from lmdm_bridge.protocol.replies import close_reply, error_message, open_reply, params_reply
from lmdm_bridge.protocol.requests import LiveParams, OpenRequest
from lmdm_bridge.wire.blocks import SAMPLE_DTYPE, AssembledBlock, BlockAssembler
from lmdm_bridge.wire.osc import Message
from lmdm_engine.core.conditioning import prompt_ready
from lmdm_engine.core.config import ModelConfig
from lmdm_engine.io.chains import EffectChain, build_board
from lmdm_engine.io.presets import Preset
from lmdm_engine.stream.params import SessionParams, unplayable_reason
from lmdm_engine.stream.session import Session

from .ledger import PendingBlock, ReplyLedger
from .peer import Peer
from .quotas import Claim, Quotas, session_load
from .work import Cancelled, WorkOwner
from .workers import Workers

log = logging.getLogger("lmdm_bridge")

# a session's block counts (its close reply; status adds them up): unsent are replies the transport failed to send
SESSION_COUNTS = ("blocks", "processed", "late", "unsent", "concealed", "lost", "bad_input", "restarts",
                  "engine_errors")
_LOST = object()  # queue marker: a block of which nothing arrived
_CLOSE = object()  # queue marker: answer what is queued, then close
# other queue items: PendingBlock, or a _Control


@dataclass
class _Control:
    """A param, preset or reset request: ``apply`` runs on the session and returns the reply; ``change``: it
    changes the parameters (checked and counted on the loop when it was queued)."""

    apply: Callable[[Session], Message]
    change: bool = False


class _ClosedBeforeOpen(Exception):
    """The host closed the session, sending nothing else, before its build started: nothing is built."""


def check_params(params: SessionParams, request: OpenRequest, config: ModelConfig, quotas: Quotas,
                 session: str) -> None:
    """Raise ProtocolError for parameters the session cannot take: a prompt or mode the model cannot play, a
    free-text prompt the server cannot embed without loading its text encoder, a block over the compute budget."""
    reason = unplayable_reason(params, config)
    if reason:
        raise ProtocolError(ErrorCode.BAD_PARAMETER, f"{SessionParams.SOURCE}: {reason}", session)
    if not prompt_ready(params.prompt, config):
        raise ProtocolError(ErrorCode.BAD_PARAMETER, (
            "field 'prompt': free-text prompts need the bridge started with --text (it loads the text encoder at "
            "start-up); without it the presets' own prompts work"), session)
    quotas.check_cost(params, request.channels, request.buffer_frames, request.sample_rate, config, session)


class _SessionStage:
    """A Session as a chain stage (``process(audio, sample_rate, reset)``)."""

    def __init__(self, session: Session):
        self.session = session

    def process(self, audio: np.ndarray, sample_rate: float, reset: bool = False) -> np.ndarray:
        return self.session.process(audio)


def preset_chain(session: Session, preset: Preset) -> EffectChain:
    """The preset's pre board, the Session, its post board (empty boards left out)."""
    pre = build_board(preset.pre, f"preset {preset.name!r}: pre")
    post = build_board(preset.post, f"preset {preset.name!r}: post")
    return EffectChain(([pre] if len(pre) else []) + [_SessionStage(session)] + ([post] if len(post) else []))


@dataclass
class Hosting:
    """What the dispatcher gives every session it hosts."""

    workers: Workers
    quotas: Quotas
    resolve_preset: Callable[[str | None, str], Preset]  # (name, session id); raises ProtocolError naming the session
    reassembly_timeout: float
    max_queued_blocks: int


class HostedSession:
    def __init__(self, request: OpenRequest, peer: Peer, hosting: Hosting, preset: Preset, params: SessionParams,
                 claim: Claim, deadline: float | None, info: dict, on_closed: Callable, cookie: str | None = None):
        self.id = request.session
        self.peer = peer
        self.request = request
        self.cookie = cookie  # every request about the session must carry it (UDP)
        self.workers = hosting.workers
        self.deadline = deadline
        self.max_queued_blocks = hosting.max_queued_blocks
        self.counts = Counter()
        self.session: Session | None = None
        self.owner = WorkOwner(self.id)
        self.preset, self.params = preset, params  # as checked on the loop (the session follows in queue order)
        self._applied = preset  # the preset the session's parameters came from, as applied in queue order
        self._opened_with = params
        self._hosting = hosting
        self._claim = claim
        self._chain: EffectChain | None = None
        self._info = info
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self.last_activity = self._loop.time()
        self._assembler = BlockAssembler(request.channels, request.buffer_frames, hosting.reassembly_timeout)
        self._assembly_timer: asyncio.TimerHandle | None = None
        self._held: dict[int, int] = {}  # seq -> quota bytes of a block still being assembled
        self._queue: asyncio.Queue = asyncio.Queue()
        self._ledger = ReplyLedger(self.id, peer, self.counts)
        self._needs_restart = False
        self._closing = False
        self._skip_build = False
        self._failed: ProtocolError | None = None  # why the session did not open
        self._changes_queued = 0
        self._controls_queued = 0
        self._task = self._loop.create_task(self._pump(), name=f"lmdm session {self.id}")
        self._task.add_done_callback(self._finished)  # runs even when cancelled before it started

    # ---- input, called from the event loop ------------------------------------------------------------
    def _usable(self, seq: int = -1) -> None:
        if self._failed is not None:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"session {self.id!r} did not open: {self._failed}",
                                self.id, seq)

    def add_chunk(self, seq: int, frame_offset: int, total_frames: int, samples: bytes) -> None:
        """Raises ChunkError for a chunk that cannot belong to this session's stream, ProtocolError when its block
        would take the peer over its quota of bytes in flight (the block is then skipped)."""
        self._usable(seq)
        now = self._loop.time()
        self.last_activity = now
        held = 0
        if 1 <= total_frames <= self._assembler.max_frames and self._assembler.starts_block(seq):
            held = total_frames * self.request.channels * SAMPLE_DTYPE.itemsize
            try:
                self._claim.take_bytes(held, self.id, seq)
            except ProtocolError:
                self.reject(seq)
                raise
        try:
            blocks = self._assembler.add(seq, frame_offset, total_frames, samples, now)
        except Exception:
            self._claim.free_bytes(held)
            raise
        if held:
            self._held[seq] = held
        self._accept(blocks)

    def repeat_open_reply(self) -> None:
        """Answer a repeated open again (once the session is built; until then its first answer is on the way)."""
        if self.session is not None and not self._closing:
            self.peer.send(open_reply(self.id, self.session.latency_samples, self._open_info()))

    def reject(self, seq: int) -> None:
        """A block answered with an error instead of audio: the stream goes on without it (as if lost)."""
        self._accept(self._assembler.skip(seq, self._loop.time()))

    def set_params(self, params: LiveParams) -> None:
        """Change parameters between blocks (style weights merge into the current style); replies with all of them.
        Raises ProtocolError, changing nothing, for values the session cannot take."""
        self._usable()
        changes = dict(params.fields)
        if params.style:
            changes["style"] = {**self.params.style, **params.style}
        try:
            new = self.params.replace(**changes)
        except ValueError as e:  # ParamsError: the message names the field and the range
            raise ProtocolError(ErrorCode.BAD_PARAMETER, str(e), self.id) from None
        self._change(new, self.preset, PARAM)

    def set_preset(self, name: str) -> None:
        """Load a preset's parameters and chains (from the next block)."""
        self._usable()
        preset = self._hosting.resolve_preset(name, self.id)
        self._change(preset.params, preset, PRESET)

    def _change(self, params: SessionParams, preset: Preset, address: str) -> None:
        check_params(params, self.request, self.workers.runtime.config, self._hosting.quotas, self.id)
        self._claim.change_load(session_load(params, self.request.channels), self.id)
        previous = self.preset
        self.params, self.preset = params, preset

        def apply(session: Session) -> Message:
            session.set_params(params)
            if preset is not previous:
                self._chain = preset_chain(session, preset)
            self._applied = preset
            return params_reply(self.id, preset.name, session.params, address)
        self._changes_queued += 1
        self._control(apply, change=True)

    def reset(self) -> None:
        """Forget all audio; replies like open, with the latency (which follows the current delay)."""
        self._usable()

        def apply(session: Session) -> Message:
            session.reset()
            self._needs_restart = False
            return open_reply(self.id, session.latency_samples, self._open_info(), RESET)
        self._control(apply)

    def _control(self, apply: Callable[[Session], Message], change: bool = False) -> None:
        self.last_activity = self._loop.time()
        self._controls_queued += 1
        self._queue.put_nowait(_Control(apply, change))

    def close(self) -> None:
        """Answer what is queued (blocks still missing chunks included, concealed), then send the close reply; a
        session closed before its build started, with nothing else sent, is not built."""
        if not self._closing:
            self._closing = True
            self._accept(self._assembler.poll(math.inf))
            self._skip_build = self.session is None and self._queue.empty()  # nothing sent but open and close
            if self.session is not None and not self.backlog and not self._controls_queued:
                self.workers.cancel(self.owner)  # what still runs is for blocks answered already: of no use now
            self._queue.put_nowait(_CLOSE)

    def abort(self) -> None:
        """Stop now without replies (the peer is gone, or the server stops): running work stops at its next
        runtime call."""
        self._closing = True
        self._ledger.stop()
        self._cancel_timers()
        self.workers.cancel(self.owner)
        self._task.cancel()

    def stop_work(self) -> None:
        """Stop the session's work (what runs stops at its next runtime call); its replies still go out."""
        self.workers.cancel(self.owner)

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
                self._claim.free_bytes(self._held.pop(assembled.seq, 0))
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
        if not np.isfinite(audio).all():  # one pass and one temporary array for the usual, clean block
            audio[~np.isfinite(audio)] = 0.0
            flags |= BlockFlag.BAD_INPUT
            self.counts["bad_input"] += 1
        deadline = None if self.deadline is None else assembled.first_arrival + self.deadline
        block = PendingBlock(assembled.seq, audio, flags, deadline, held=self._held.pop(assembled.seq, 0))
        self.counts["blocks"] += 1
        self._ledger.add(block)
        self._claim.add_queued(1)
        if deadline is not None:
            block.timer = self._loop.call_at(deadline, self._expire_through, block)
        limit = self.max_queued_blocks
        excess = self._claim.queued_excess()  # the peer's sessions together queue too many: this one gives way
        if excess:
            limit = min(limit, max(0, self.backlog - excess))
        self._settle(self._ledger.expire_beyond(limit))
        self._queue.put_nowait(block)
        self._update_congestion()

    def _expire_through(self, block: PendingBlock) -> None:
        """Answer, dry and late, every block up to this one that is still unanswered (its deadline passed)."""
        self._settle(self._ledger.expire_through(block))

    def _answer(self, block: PendingBlock, audio: np.ndarray, flags: BlockFlag) -> None:
        """Answer a block from the event loop (unless a worker answered it meanwhile) and settle it."""
        self._ledger.answer(block, audio, flags)
        if block.answered:
            self._settle([block])

    def _settle(self, blocks: list[PendingBlock]) -> None:
        """On the loop, once blocks are answered (from here or a worker): their timers, their quota (and the audio
        of those that never started: only their turn in the queue is left), and the back-pressure."""
        for block in blocks:
            if block.settled:
                continue
            block.settled = True
            if block.timer is not None:
                block.timer.cancel()
            self._claim.free_bytes(block.held)
            self._claim.add_queued(-1)
            if not block.started:
                block.audio = None
        if blocks:
            self._update_congestion()

    def _update_congestion(self) -> None:
        self.peer.set_congested(self.id, self.backlog >= max(1, self.max_queued_blocks // 2))

    def _run_block(self, audio: np.ndarray, restart: bool) -> np.ndarray:
        """One block through the preset's chain (in a worker thread)."""
        if restart:
            self.session.reset()
        return self._chain.process(audio, self.request.sample_rate, reset=False)

    async def _process(self, block: PendingBlock) -> None:
        if block.answered:  # answered late before it started: skipped
            self._needs_restart = True
            return
        restart, self._needs_restart = self._needs_restart, False
        flags = BlockFlag.RESTARTED if restart else BlockFlag(0)
        finish = ((lambda out: self._ledger.answer_processed(block, out, flags))
                  if self.peer.threadsafe_sends else None)
        block.started = True
        try:
            out = await self.workers.process(self.owner, block.deadline, lambda: self._run_block(block.audio, restart),
                                             finish)
        except Cancelled:
            return
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
        if block.answered:  # its deadline passed while it ran (settled then), or the worker failed to send its reply
            self._settle([block])
            return
        self.counts["processed"] += 1
        self._answer(block, block.reply_audio(out), flags)

    # ---- the pump -------------------------------------------------------------------------------------
    async def _open(self) -> bool:
        """Build the session and answer the open; False when it did not open (or was closed before it was)."""
        r = self.request
        try:
            self.session = await self.workers.setup(self.owner, self._build_session)
        except _ClosedBeforeOpen:
            return False
        except Cancelled:
            return False
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
        """The Session and the preset's chain around it (in the setup thread), unless the host closed it first
        having sent nothing else."""
        if self._skip_build:
            raise _ClosedBeforeOpen()
        r = self.request
        session = Session(self.workers.runtime, r.sample_rate, r.channels, self._opened_with)
        self._chain = preset_chain(session, self._applied)
        return session

    def _open_info(self) -> dict:
        s = self.session
        info = {**self._info, "preset": self.preset_name, "delay_seconds": s.params.delay_seconds,
                "model_block_frames": s.block_frames,
                "deadline_ms": 0.0 if self.deadline is None else 1000.0 * self.deadline}
        if self.cookie is not None:
            info["cookie"] = self.cookie
        return info

    def _fail_open(self, error: ProtocolError) -> None:
        """The session could not be built: say why, and reject what was sent to it meanwhile (blocks and control
        requests each get an error)."""
        self.peer.send(error_message(error))
        self._failed = error
        self._closing = True
        self._cancel_timers()
        not_opened = lambda seq: error_message(ProtocolError(
            ErrorCode.UNKNOWN_SESSION, f"session {self.id!r} did not open: {error}", self.id, seq))
        for block in self._ledger.take_all():
            self.peer.send(not_opened(block.seq))
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Control) or item is _CLOSE:  # requests that were waiting for it to open
                self.peer.send(not_opened(-1))

    async def _run_control(self, control: _Control) -> None:
        """A param, preset or reset request, run on the session in queue order."""
        try:
            reply = await self.workers.setup(self.owner, control.apply, self.session)
        except ValueError as e:  # PresetError included: the message names the field and the allowed values
            reply = error_message(ProtocolError(ErrorCode.BAD_PARAMETER, str(e), self.id))
            if control.change and self._changes_queued == 1:  # the last change queued: back to the session's own
                self.params, self.preset = self.session.params, self._applied
                self._claim.change_load(session_load(self.params, self.request.channels), self.id, force=True)
        finally:
            self._changes_queued -= control.change
            self._controls_queued -= 1
        self.peer.send(reply)

    async def _pump(self) -> None:
        if not await self._open():
            if self.session is None and self._failed is None and not self.owner.cancelled:  # closed before open
                self.peer.send(close_reply(self.id, self.summary()))
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
            except Cancelled:  # its work was stopped (shutdown): what it left is answered already
                continue
            except Exception as e:  # a bug must cost one request, never the session
                log.exception("session %r: failed on a queued request", self.id)
                self.peer.send(error_message(ProtocolError(
                    ErrorCode.ENGINE_ERROR, f"internal error: {type(e).__name__}", self.id)))
                if isinstance(item, PendingBlock):
                    if not item.answered:
                        self._expire_through(item)
                    self._settle([item])  # answered, even if its reply failed to leave: its quota is given back
        self.peer.send(close_reply(self.id, self.summary()))
        log.info("session %r closed: %s", self.id, self.summary())

    def _finished(self, task: asyncio.Task) -> None:
        self._cancel_timers()
        self.owner.cancelled = True  # nothing of it may run any more
        self._claim.release()
        self._held.clear()
        if not task.cancelled() and task.exception() is not None:
            log.error("session %r stopped on an error", self.id, exc_info=task.exception())
        self._on_closed(self)

    @property
    def preset_name(self) -> str:
        return self._applied.name

    def summary(self) -> dict:
        return {key: self.counts[key] for key in SESSION_COUNTS}

    def _cancel_timers(self) -> None:
        if self._assembly_timer is not None:
            self._assembly_timer.cancel()
        for block in self._ledger.waiting():
            if block.timer is not None:
                block.timer.cancel()
