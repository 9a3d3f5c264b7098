"""The bridge's request handling, independent of transports: packets in from peers, replies out through them.

``Bridge.handle_packet(data, peer)`` takes one OSC packet from one peer (a TCP connection or a UDP source
address) and answers through ``peer.send``. It owns the session table (sessions belong to the peer that opened
them: no other peer can reach them), the limits (sessions, packet size, packets per second per peer, queued
blocks) and the shared token. Whatever a packet holds, the worst it can cause is an ``/lmdm/error`` reply (or,
past the rate limit, being dropped with a log line): every failure is caught here, per message.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmdm_bridge.hosting.hosted import HostedSession
from lmdm_bridge.hosting.peer import Peer
from lmdm_bridge.hosting.workers import Workers
from lmdm_bridge.protocol.namespace import AUDIO, ErrorCode, ProtocolError
from lmdm_bridge.protocol.packets import read_audio_packet
from lmdm_bridge.protocol.replies import error_message, ping_reply, status_reply
from lmdm_bridge.protocol.requests import (AudioChunk, CloseRequest, OpenRequest, ParamRequest, PingRequest,
                                           PresetRequest, ResetRequest, StatusRequest, parse_request)
from lmdm_bridge.wire.blocks import ChunkError
from lmdm_bridge.wire.framing import FramingError
from lmdm_bridge.wire.osc import OscDecodeError, decode_packet
from lmdm_engine.io.presets import DEFAULT_PRESET, Preset, resolve_preset

log = logging.getLogger("lmdm_bridge")

# room for an audio message's address, session id and integers beside its samples
AUDIO_HEADER_BYTES = 256


@dataclass
class BridgeSettings:
    """Limits and defaults of one bridge (the ``lmdm serve`` options)."""

    preset: str = DEFAULT_PRESET  # for opens that name no preset
    max_sessions: int = 32
    max_packet_bytes: int = 1 << 20  # largest OSC packet taken (TCP frame or UDP datagram)
    udp_packet_bytes: int = 8192  # replies over UDP are split into datagrams of at most this
    max_rate: float = 4000.0  # packets per second per peer (bursts of one second's worth)
    max_queued_blocks: int = 16  # blocks waiting per session before the oldest are answered late
    reassembly_ms: float = 30.0  # how long a block's missing chunks are waited for
    idle_timeout_s: float = 300.0  # sessions with no message for this long are closed
    token: str | None = None  # when set, open and status must carry it
    shutdown_timeout_s: float = 5.0  # at shutdown, queued blocks get this long to be processed

    def __post_init__(self):
        for name in ("max_sessions", "max_packet_bytes", "udp_packet_bytes", "max_rate", "max_queued_blocks",
                     "reassembly_ms", "idle_timeout_s", "shutdown_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"bridge setting {name} = {getattr(self, name)!r} must be positive")
        if self.udp_packet_bytes < 512:
            raise ValueError(f"bridge setting udp_packet_bytes = {self.udp_packet_bytes} leaves no room for audio; "
                             "use at least 512")


class RateLimiter:
    """Token buckets per key: ``rate`` per second, bursts of up to one second's worth."""

    def __init__(self, rate: float):
        self.rate = rate
        self._buckets: dict = {}  # key -> (tokens, last time)

    def allow(self, key, now: float) -> bool:
        tokens, last = self._buckets.get(key, (self.rate, now))
        tokens = min(self.rate, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed

    def forget_idle(self, now: float, idle: float = 10.0) -> None:
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < idle}


class LogThrottle:
    """At most one log line (and one error reply) per key per ``interval`` seconds, with a count of the rest."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._last: dict = {}  # key -> (time, suppressed since)

    def ready(self, key, now: float) -> int | None:
        """The number suppressed since the last line when one may be written now; None otherwise."""
        last, suppressed = self._last.get(key, (-float("inf"), 0))
        if now - last < self.interval:
            self._last[key] = (last, suppressed + 1)
            return None
        self._last[key] = (now, 0)
        return suppressed

    def forget_idle(self, now: float) -> None:
        self._last = {k: v for k, v in self._last.items() if now - v[0] < 10 * self.interval}


def _since_last_line(suppressed: int) -> str:
    return f" ({suppressed} more since the last line)" if suppressed else ""


class Bridge:
    def __init__(self, workers: Workers, settings: BridgeSettings, model: str = ""):
        self.workers = workers
        self.settings = settings
        self.model = model
        self.sessions: dict[tuple, HostedSession] = {}  # (peer key, session id) -> session
        self._live: set[HostedSession] = set()  # the open sessions and the closed ones still answering
        self.counts = Counter()  # packets, messages, errors, dropped, and the finished sessions' block counts
        self.shutting_down = False
        self.started = time.monotonic()
        self._rate = RateLimiter(settings.max_rate)
        self._throttle = LogThrottle()
        self._sweeper: asyncio.Task | None = None

    def start(self) -> None:
        """Start the idle-session sweeper (call from the running event loop)."""
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    # ---- input --------------------------------------------------------------------------------------
    def handle_packet(self, data: bytes, peer: Peer) -> None:
        """One OSC packet from a peer: every message in it answered, or the packet dropped with a log line."""
        now = time.monotonic()
        self.counts["packets"] += 1
        if not self._rate.allow(peer.key, now):
            self.counts["dropped"] += 1
            suppressed = self._throttle.ready((peer.key, "rate"), now)
            if suppressed is not None:
                log.warning("peer %s: over %g packets/s, dropping packets%s", peer.key, self.settings.max_rate,
                            _since_last_line(suppressed))
                self._send_error(peer, ProtocolError(ErrorCode.RATE_LIMITED, (
                    f"over {self.settings.max_rate:g} packets per second: packets are being dropped")))
            return
        if len(data) > self.settings.max_packet_bytes:
            self._reject_packet(peer, ProtocolError(ErrorCode.TOO_LARGE, (
                f"packet of {len(data)} bytes is larger than the limit of {self.settings.max_packet_bytes}")))
            return
        chunk = read_audio_packet(data)  # nearly all of the traffic: read without the generic decoder
        if chunk is not None:
            messages = [chunk]
        else:
            try:
                messages = decode_packet(data)
            except OscDecodeError as e:
                self._reject_packet(peer, ProtocolError(ErrorCode.MALFORMED, f"not a valid OSC packet: {e}"))
                return
        for message in messages:
            self.counts["messages"] += 1
            try:
                self._dispatch(chunk if message is chunk else parse_request(message), peer)
            except ProtocolError as e:
                self._send_error(peer, e)
            except Exception as e:  # a bug must cost one message, never the server
                log.exception("peer %s: failed on a %r message", peer.key,
                              AUDIO if message is chunk else message.address[:80])
                self._send_error(peer, ProtocolError(ErrorCode.ENGINE_ERROR, f"internal error: {type(e).__name__}"))

    def frame_error(self, peer: Peer, error: FramingError) -> None:
        """A stream frame that could not be read (the transport skipped it)."""
        code = ErrorCode.TOO_LARGE if "larger than" in str(error) else ErrorCode.MALFORMED
        self._reject_packet(peer, ProtocolError(code, str(error)))

    def _reject_packet(self, peer: Peer, error: ProtocolError) -> None:
        self.counts["malformed"] += 1
        suppressed = self._throttle.ready((peer.key, "malformed"), time.monotonic())
        if suppressed is not None:
            log.warning("peer %s: %s%s", peer.key, error, _since_last_line(suppressed))
        self._send_error(peer, error)

    def _send_error(self, peer: Peer, error: ProtocolError) -> None:
        self.counts["errors"] += 1
        peer.send(error_message(error))

    def peer_closed(self, peer: Peer) -> None:
        """The peer is gone (its TCP connection closed): its sessions stop without replies."""
        for key in [key for key in self.sessions if key[0] == peer.key]:
            log.info("session %r dropped: its connection closed", key[1])
            self.sessions.pop(key).abort()

    # ---- requests ------------------------------------------------------------------------------------
    def _dispatch(self, request, peer: Peer) -> None:
        if self.shutting_down and not isinstance(request, (PingRequest, StatusRequest)):
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the bridge is shutting down", getattr(request, "session", ""),
                                getattr(request, "seq", -1))
        if isinstance(request, AudioChunk):
            hosted = self._session(peer, request.session, request.seq)
            try:
                hosted.add_chunk(request.seq, request.frame_offset, request.total_frames, request.samples)
            except ChunkError as e:
                hosted.reject(request.seq)
                raise ProtocolError(ErrorCode.BAD_AUDIO, str(e), request.session, request.seq) from None
        elif isinstance(request, OpenRequest):
            self._open(request, peer)
        elif isinstance(request, ParamRequest):
            self._session(peer, request.session).set_params(request.params)
        elif isinstance(request, PresetRequest):
            self._session(peer, request.session).set_preset(request.preset)
        elif isinstance(request, ResetRequest):
            self._session(peer, request.session).reset()
        elif isinstance(request, CloseRequest):
            self._session(peer, request.session)
            self.sessions.pop((peer.key, request.session)).close()
        elif isinstance(request, PingRequest):
            peer.send(ping_reply(request.args))
        elif isinstance(request, StatusRequest):
            self._check_token(request.token, "status")
            peer.send(status_reply(self.status()))
        else:
            raise TypeError(f"no handler for {type(request).__name__}")

    def _session(self, peer: Peer, session: str, seq: int = -1) -> HostedSession:
        hosted = self.sessions.get((peer.key, session))
        if hosted is None:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"no open session {session!r} (sessions belong to the "
                                                           "connection or address that opened them)", session, seq)
        return hosted

    def _check_token(self, given: str | None, what: str, session: str = "") -> None:
        expected = self.settings.token
        if expected is not None and (given is None or not hmac.compare_digest(given.encode(), expected.encode())):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"{what} needs the bridge's token (key 'token')"
                                if given is None else f"{what}: wrong token", session)

    def _open(self, r: OpenRequest, peer: Peer) -> None:
        s = self.settings
        self._check_token(r.token, "open", r.session)
        existing = self.sessions.get((peer.key, r.session))
        if existing is not None:
            if existing.request == r:  # the same open again (a UDP host retrying, or a duplicated datagram)
                existing.repeat_open_reply()
                return
            raise ProtocolError(ErrorCode.SESSION_EXISTS, f"session {r.session!r} is already open with other "
                                                          "settings; close it first", r.session)
        if len(self.sessions) >= s.max_sessions:
            raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, f"the bridge already serves {len(self.sessions)} "
                                                             f"sessions (the limit)", r.session)
        block_bytes = r.buffer_frames * r.channels * 4
        if block_bytes + AUDIO_HEADER_BYTES > s.max_packet_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, (
                f"buffer_frames={r.buffer_frames} x {r.channels} channels x 4 bytes = {block_bytes} bytes does not fit "
                f"the bridge's packet limit of {s.max_packet_bytes} bytes; at most "
                f"{(s.max_packet_bytes - AUDIO_HEADER_BYTES) // (4 * r.channels)} frames per block"), r.session)
        if r.deadline_ms is None:
            deadline = r.buffer_frames / r.sample_rate
        else:
            deadline = r.deadline_ms / 1000.0 or None
        reply_peer = peer.with_reply_port(r.reply_port) if r.reply_port is not None else peer
        cfg = self.workers.runtime.config
        # block_frames: buffer_frames' old name, still sent for hosts written before it (bridge/PROTOCOL.md)
        info = {"sample_rate": r.sample_rate, "channels": r.channels, "buffer_frames": r.buffer_frames,
                "block_frames": r.buffer_frames,
                "model_sample_rate": cfg.sample_rate, "model_hop": cfg.hop, "runtime": self.workers.runtime.name,
                "model": self.model, "max_packet_bytes": reply_peer.max_packet or s.max_packet_bytes}
        hosted = HostedSession(r, reply_peer, self.workers, self.preset, deadline, s.reassembly_ms / 1000.0,
                               s.max_queued_blocks, info,
                               on_closed=lambda hosted, key=(peer.key, r.session): self._closed(key, hosted))
        self.sessions[(peer.key, r.session)] = hosted
        self._live.add(hosted)

    def preset(self, name: str | None) -> Preset:
        """The preset a host names: the server's --preset (a name or a file) when it names none or that preset's
        name, else the shipped preset of that name."""
        default = self.settings.preset
        return resolve_preset(default if name is None or name == Path(default).stem else name)

    def _closed(self, key: tuple, hosted: HostedSession) -> None:
        if self.sessions.get(key) is hosted:
            del self.sessions[key]
        self._live.discard(hosted)
        self.counts.update(hosted.counts)

    # ---- status, sweeping, shutdown ------------------------------------------------------------------------
    def status(self) -> dict:
        blocks = Counter(self.counts)
        for hosted in self._live:
            blocks.update(hosted.counts)
        runtime = self.workers.runtime
        return {"sessions": len(self.sessions), "max_sessions": self.settings.max_sessions,
                "uptime_s": round(time.monotonic() - self.started, 3), "runtime": runtime.name,
                "model": self.model, "batching": int(self.workers.batching),
                # with batching: the sessions' runtime calls, and the (batched) calls they became
                "runtime_requests": getattr(runtime, "requests", 0), "runtime_calls": getattr(runtime, "calls", 0),
                "process_seconds": self.workers.process_seconds,
                **{key: blocks[key] for key in ("blocks", "processed", "late", "concealed", "lost", "bad_input",
                                                "restarts", "engine_errors", "packets", "dropped", "malformed",
                                                "errors")}}

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            self._rate.forget_idle(now)
            self._throttle.forget_idle(now)
            idle_limit = asyncio.get_running_loop().time() - self.settings.idle_timeout_s
            for key, hosted in list(self.sessions.items()):
                if hosted.last_activity < idle_limit and hosted.backlog == 0:
                    log.info("session %r closed: idle for %g s", key[1], self.settings.idle_timeout_s)
                    self.sessions.pop(key).close()

    async def shutdown(self) -> None:
        """Refuse new work, answer what is queued (dry and late past the shutdown timeout), close every session."""
        self.shutting_down = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        hosted = list(self._live)
        for h in hosted:
            h.close()
        waits = [asyncio.ensure_future(h.wait_closed()) for h in hosted]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.settings.shutdown_timeout_s)
            if pending:
                for h in hosted:
                    h.answer_all_late()
                await asyncio.wait(waits, timeout=self.settings.shutdown_timeout_s)
        for h in hosted:
            h.abort()
