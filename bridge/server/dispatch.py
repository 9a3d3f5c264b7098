"""The bridge's request handling, independent of transports: packets in from peers, replies out through them.

``Bridge.handle_packet(data, peer)`` takes one OSC packet from one peer (a TCP connection or a UDP source
address) and answers through ``peer.send``. It owns the session table (sessions belong to the peer that opened
them: no other peer can reach them), the limits (packet size, messages per second per peer, and the quotas of
hosting/quotas.py: sessions, bytes in flight, queued blocks, compute), the shared token, and the cookies that tie
UDP sessions to the address that proved it receives their replies. Whatever a packet holds, the worst it can
cause is a short ``/lmdm/error`` reply (or, past the rate limit, being dropped): every failure is caught here, per
message, and log lines are throttled server-wide.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

from lmdm_bridge.hosting.hosted import SESSION_COUNTS, Hosting, HostedSession, check_params
from lmdm_bridge.hosting.peer import Peer
from lmdm_bridge.hosting.quotas import Limits, Quotas, session_load
from lmdm_bridge.hosting.workers import Workers
from lmdm_bridge.protocol.namespace import AUDIO, ErrorCode, ProtocolError
from lmdm_bridge.protocol.packets import read_audio_packet
from lmdm_bridge.protocol.replies import cookie_reply, error_message, ping_reply, status_reply
from lmdm_bridge.protocol.requests import (AudioChunk, CloseRequest, OpenRequest, ParamRequest, PingRequest,
                                           PresetRequest, ResetRequest, StatusRequest, parse_request)
from lmdm_bridge.wire.blocks import ChunkError
from lmdm_bridge.wire.framing import FramingError
from lmdm_bridge.wire.osc import OscDecodeError, decode_packet
from lmdm_engine.io.presets import DEFAULT_PRESET, Preset, plugin_files, resolve_preset

log = logging.getLogger("lmdm_bridge")

# room for an audio message's address, session id and integers beside its samples
AUDIO_HEADER_BYTES = 256
MAX_TRACKED_PEERS = 4096  # rate buckets and reply throttles kept at most (forgotten all at once past it)
# the counts status reports: the sessions' blocks, then the packets and messages of the dispatcher and the
# transports (udp_refused: replies not sent past an unproven UDP address's budget; udp_dropped: datagrams dropped
# while the UDP socket's buffer was full)
STATUS_COUNTS = SESSION_COUNTS + ("packets", "messages", "dropped", "malformed", "errors", "unauthorized",
                                  "udp_refused", "udp_dropped")


@dataclass
class BridgeSettings:
    """Limits and defaults of one bridge (the ``lmdm serve`` options)."""

    preset: str = DEFAULT_PRESET  # for opens that name no preset
    max_sessions: int = 32  # sessions at once, closing ones included
    max_packet_bytes: int = 1 << 20  # largest OSC packet taken (TCP frame or UDP datagram)
    udp_packet_bytes: int = 8192  # replies over UDP are split into datagrams of at most this
    max_rate: float = 4000.0  # messages per second per peer (bursts of rate_burst_s seconds' worth)
    # messages per second of all peers without a session together (pings, status, opens, garbage): what strangers
    # may cost the event loop (about 50 us a message on a 2-core CPU)
    max_stranger_rate: float = 2000.0
    rate_burst_s: float = 0.1
    max_queued_blocks: int = 16  # blocks waiting per session before the oldest are answered late
    reassembly_ms: float = 30.0  # how long a block's missing chunks are waited for
    idle_timeout_s: float = 300.0  # sessions with no message for this long are closed
    token: str | None = None  # when set, open and status must carry it
    shutdown_timeout_s: float = 5.0  # at shutdown, queued blocks get this long to be processed
    # per peer (a TCP connection, or a UDP source address) and for the bridge: see hosting/quotas.py
    max_peer_sessions: int = 8
    max_peer_bytes: int = 32 << 20  # bytes of audio in flight, from a block's first chunk until its reply leaves
    max_bytes: int = 256 << 20
    max_peer_queued_blocks: int = 32
    max_block_cost: int = 16384  # model passes a block may ask for: steps x passes x channels x model frames
    max_peer_load: int = 256  # steps x passes x channels, summed over a peer's sessions
    max_load: int = 1024
    tcp_handshake_timeout_s: float = 10.0  # a connection must send its first whole packet within this
    tcp_idle_timeout_s: float = 60.0  # a connection without sessions that sends nothing for this long is closed
    udp_reply_factor: float = 3.0  # replies to a UDP peer that has not proven its address: at most this x its bytes

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("preset", "token") and not value > 0:
                raise ValueError(f"bridge setting {f.name} = {value!r} must be positive")
        if self.udp_packet_bytes < 512:
            raise ValueError(f"bridge setting udp_packet_bytes = {self.udp_packet_bytes} leaves no room for audio; "
                             "use at least 512")

    def limits(self) -> Limits:
        """The quotas: each ``Limits`` field from the setting ``max_<field>``."""
        return Limits(**{f.name: getattr(self, f"max_{f.name}") for f in fields(Limits)})


class RateLimiter:
    """Token buckets per key: ``rate`` messages per second, bursts of up to ``burst_s`` seconds' worth. A packet is
    let in while its peer has a token; then every message it held is charged (the bucket may go below zero: a
    bundle of 256 messages costs 256 tokens, and the next packet waits until they are earned back)."""

    def __init__(self, rate: float, burst_s: float = 1.0):
        self.rate = rate
        self.burst = max(1.0, rate * burst_s)
        self._buckets: dict = {}  # key -> (tokens, last time)

    def allow(self, key, now: float) -> bool:
        if len(self._buckets) >= MAX_TRACKED_PEERS and key not in self._buckets:
            self._buckets.clear()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed

    def charge(self, key, messages: int) -> None:
        """Charge the messages of a packet let in beyond its first."""
        if messages > 0 and key in self._buckets:
            tokens, last = self._buckets[key]
            self._buckets[key] = (tokens - messages, last)

    def forget_idle(self, now: float, idle: float = 10.0) -> None:
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < idle}


class LogThrottle:
    """At most one event per key per ``interval`` seconds, with a count of the rest (keys: kinds of log line for
    the server-wide log throttle, (peer, kind) for error replies)."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._last: dict = {}  # key -> (time, suppressed since)

    def ready(self, key, now: float) -> int | None:
        """The number suppressed since the last one when one may happen now; None otherwise."""
        if len(self._last) >= MAX_TRACKED_PEERS and key not in self._last:
            self._last.clear()
        last, suppressed = self._last.get(key, (-float("inf"), 0))
        if now - last < self.interval:
            self._last[key] = (last, suppressed + 1)
            return None
        self._last[key] = (now, 0)
        return suppressed

    def forget_idle(self, now: float) -> None:
        self._last = {k: v for k, v in self._last.items() if now - v[0] < 10 * self.interval}


def _since_last_line(suppressed: int) -> str:
    return f" ({suppressed} more like it since the last line)" if suppressed else ""


class Bridge:
    def __init__(self, workers: Workers, settings: BridgeSettings, model: str = ""):
        self.workers = workers
        self.settings = settings
        self.model = model
        self.sessions: dict[tuple, HostedSession] = {}  # (peer key, session id) -> session
        self._live: set[HostedSession] = set()  # the open sessions and the closed ones still answering
        # packets, messages, errors, dropped (and the transports' counts), and the finished sessions' block counts
        self.counts = Counter()
        self.shutting_down = False
        self.started = time.monotonic()
        self.quotas = Quotas(settings.limits())
        self.hosting = Hosting(workers, self.quotas, self.preset, settings.reassembly_ms / 1000.0,
                               settings.max_queued_blocks)
        self._rate = RateLimiter(settings.max_rate, settings.rate_burst_s)
        self._strangers = RateLimiter(settings.max_stranger_rate, settings.rate_burst_s)  # one bucket for them all
        self._log_throttle = LogThrottle()  # one line a second per kind of event, whichever peers cause it
        self._reply_throttle = LogThrottle()  # one rate_limited error a second per peer
        self._secret = secrets.token_bytes(32)  # the key of the UDP cookies (new at every start)
        self._sweeper: asyncio.Task | None = None

    def start(self) -> None:
        """Start the idle-session sweeper (call from the running event loop)."""
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    # ---- input --------------------------------------------------------------------------------------
    def handle_packet(self, data: bytes, peer: Peer) -> None:
        """One OSC packet from a peer: every message in it answered, or the packet dropped with a log line."""
        now = time.monotonic()
        self.counts["packets"] += 1
        stranger = not self.quotas.usage(peer.key).sessions
        if not self._rate.allow(peer.key, now):
            self._drop(peer, now, f"over {self.settings.max_rate:g} messages per second")
            return
        if stranger and not self._strangers.allow("strangers", now):
            self._drop(peer, now, f"peers without a session are over {self.settings.max_stranger_rate:g} messages "
                                  "per second together")
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
            self._rate.charge(peer.key, len(messages) - 1)  # a bundle costs what it holds
            if stranger:
                self._strangers.charge("strangers", len(messages) - 1)
        for message in messages:
            self.counts["messages"] += 1
            try:
                self._dispatch(chunk if message is chunk else parse_request(message), peer)
            except ProtocolError as e:
                self._send_error(peer, e)
            except _Dropped:
                pass
            except Exception as e:  # a bug must cost one message, never the server
                log.exception("peer %s: failed on a %r message", peer.key,
                              AUDIO if message is chunk else message.address[:80])
                self._send_error(peer, ProtocolError(ErrorCode.ENGINE_ERROR, f"internal error: {type(e).__name__}"))

    def _drop(self, peer: Peer, now: float, why: str) -> None:
        """A packet dropped by a rate limit: a log line (throttled) and, once a second per peer, an error."""
        self.counts["dropped"] += 1
        self._log("rate", f"peer {peer.key}: {why}, dropping packets")
        if self._reply_throttle.ready((peer.key, "rate"), now) is not None:
            self._send_error(peer, ProtocolError(ErrorCode.RATE_LIMITED, f"{why}: packets are being dropped"))

    def frame_error(self, peer: Peer, error: FramingError) -> None:
        """A stream frame that could not be read (the transport skipped it)."""
        code = ErrorCode.TOO_LARGE if "larger than" in str(error) else ErrorCode.MALFORMED
        self._reject_packet(peer, ProtocolError(code, str(error)))

    def _log(self, kind: str, line: str) -> None:
        """A warning, at most one a second of each kind for the whole server (with a count of the rest)."""
        suppressed = self._log_throttle.ready(kind, time.monotonic())
        if suppressed is not None:
            log.warning("%s%s", line, _since_last_line(suppressed))

    def _reject_packet(self, peer: Peer, error: ProtocolError) -> None:
        self.counts["malformed"] += 1
        self._log("malformed", f"peer {peer.key}: {str(error)[:200]}")
        self._send_error(peer, error)

    def _send_error(self, peer: Peer, error: ProtocolError) -> None:
        self.counts["errors"] += 1
        peer.send(error_message(error))

    def peer_closed(self, peer: Peer) -> None:
        """The peer is gone (its TCP connection closed): its sessions stop without replies, their work cancelled."""
        for key in [key for key in self.sessions if key[0] == peer.key]:
            log.info("session %r dropped: its connection closed", key[1])
            self.sessions.pop(key).abort()

    def peer_sessions(self, peer: Peer) -> int:
        """Live sessions of a peer (closing ones included)."""
        return self.quotas.usage(peer.key).sessions

    # ---- requests ------------------------------------------------------------------------------------
    def _dispatch(self, request, peer: Peer) -> None:
        if self.shutting_down and not isinstance(request, (PingRequest, StatusRequest)):
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the bridge is shutting down", getattr(request, "session", ""),
                                getattr(request, "seq", -1))
        if isinstance(request, AudioChunk):
            hosted = self._session(peer, request, request.seq)
            try:
                hosted.add_chunk(request.seq, request.frame_offset, request.total_frames, request.samples)
            except ChunkError as e:
                hosted.reject(request.seq)
                raise ProtocolError(ErrorCode.BAD_AUDIO, str(e), request.session, request.seq) from None
        elif isinstance(request, OpenRequest):
            self._open(request, peer)
        elif isinstance(request, ParamRequest):
            self._session(peer, request).set_params(request.params)
        elif isinstance(request, PresetRequest):
            self._session(peer, request).set_preset(request.preset)
        elif isinstance(request, ResetRequest):
            self._session(peer, request).reset()
        elif isinstance(request, CloseRequest):
            self._session(peer, request)
            self.sessions.pop((peer.key, request.session)).close()
        elif isinstance(request, PingRequest):
            peer.send(ping_reply(request.args))
        elif isinstance(request, StatusRequest):
            self._check_token(request.token, "status")
            peer.send(status_reply(self.status(with_paths=self.settings.token is not None)))
        else:
            raise TypeError(f"no handler for {type(request).__name__}")

    def _session(self, peer: Peer, request, seq: int = -1) -> HostedSession:
        """The peer's session a request names; over UDP the request must carry the session's cookie."""
        session = request.session
        hosted = self.sessions.get((peer.key, session))
        if hosted is None:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"no open session {session!r} (sessions belong to the "
                                                           "connection or address that opened them)", session, seq)
        if peer.spoofable and (request.cookie is None or not hmac.compare_digest(request.cookie, hosted.cookie)):
            # dropped without a reply: its source may be forged, and a reply would go to the session's own host
            self.counts["unauthorized"] += 1
            self._log("cookie", f"peer {peer.key}: dropped a request about session {session!r} without its cookie")
            raise _Dropped()
        return hosted

    def _check_token(self, given: str | None, what: str, session: str = "") -> None:
        expected = self.settings.token
        if expected is not None and (given is None or not hmac.compare_digest(given.encode(), expected.encode())):
            raise ProtocolError(ErrorCode.UNAUTHORIZED, f"{what} needs the bridge's token (key 'token')"
                                if given is None else f"{what}: wrong token", session)

    def _cookie(self, reply_peer: Peer, session: str) -> str:
        """The cookie of a session at the address its replies go to: only a host that receives there learns it."""
        text = f"{reply_peer.cookie_address()}|{session}".encode()
        return hmac.new(self._secret, text, hashlib.sha256).hexdigest()[:16]

    def _open(self, r: OpenRequest, peer: Peer) -> None:
        s = self.settings
        self._check_token(r.token, "open", r.session)
        try:
            reply_peer = peer.with_reply_port(r.reply_port) if r.reply_port is not None else peer
        except ValueError as e:
            raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"/lmdm/open: {e}", r.session) from None
        cookie = None
        if peer.spoofable:  # UDP: first prove the reply address (a small answer, wherever it goes)
            cookie = self._cookie(reply_peer, r.session)
            if r.cookie is None or not hmac.compare_digest(r.cookie, cookie):
                reply_peer.send(cookie_reply(r.session, cookie))
                return
            reply_peer.prove_address()
        existing = self.sessions.get((peer.key, r.session))
        if existing is not None:
            if existing.request == r:  # the same open again (a UDP host retrying, or a duplicated datagram)
                existing.repeat_open_reply()
                return
            raise ProtocolError(ErrorCode.SESSION_EXISTS, f"session {r.session!r} is already open with other "
                                                          "settings; close it first", r.session)
        block_bytes = r.buffer_frames * r.channels * 4
        if block_bytes + AUDIO_HEADER_BYTES > s.max_packet_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, (
                f"buffer_frames={r.buffer_frames} x {r.channels} channels x 4 bytes = {block_bytes} bytes does not fit "
                f"the bridge's packet limit of {s.max_packet_bytes} bytes; at most "
                f"{(s.max_packet_bytes - AUDIO_HEADER_BYTES) // (4 * r.channels)} frames per block"), r.session)
        preset = self.preset(r.preset, r.session)
        params = preset.params
        try:
            if r.params.fields or r.params.style:
                params = params.replace(**r.params.fields, style={**params.style, **r.params.style})
        except ValueError as e:  # ParamsError: names the field and its range
            raise ProtocolError(ErrorCode.BAD_PARAMETER, str(e), r.session) from None
        cfg = self.workers.runtime.config
        check_params(params, r, cfg, self.quotas, r.session)
        claim = self.quotas.claim(peer.key, r.session, session_load(params, r.channels))
        if r.deadline_ms is None:
            deadline = r.buffer_frames / r.sample_rate
        else:
            deadline = r.deadline_ms / 1000.0 or None
        # block_frames: buffer_frames' old name, still sent for hosts written before it (bridge/PROTOCOL.md)
        info = {"sample_rate": r.sample_rate, "channels": r.channels, "buffer_frames": r.buffer_frames,
                "block_frames": r.buffer_frames,
                "model_sample_rate": cfg.sample_rate, "model_hop": cfg.hop, "runtime": self.workers.runtime.name,
                "model": self.model_name, "max_packet_bytes": reply_peer.max_packet or s.max_packet_bytes}
        hosted = HostedSession(r, reply_peer, self.hosting, preset, params, claim, deadline, info,
                               on_closed=lambda hosted, key=(peer.key, r.session): self._closed(key, hosted),
                               cookie=cookie)
        self.sessions[(peer.key, r.session)] = hosted
        self._live.add(hosted)

    @property
    def model_name(self) -> str:
        """The model's folder name: what peers are told (its path only with the token, in status)."""
        return Path(self.model).name if self.model else ""

    def preset(self, name: str | None, session: str = "") -> Preset:
        """The preset a host names: the server's --preset (a name or a file) when it names none or that preset's
        name, else the shipped preset of that name. Raises ProtocolError for an unknown one, and for one that loads
        plugin files (the bridge runs built-in plugins only)."""
        default = self.settings.preset
        try:
            preset = resolve_preset(default if name is None or name == Path(default).stem else name)
        except ValueError as e:
            raise ProtocolError(ErrorCode.BAD_PARAMETER, str(e), session) from None
        files = plugin_files(preset)
        if files:
            raise ProtocolError(ErrorCode.BAD_PARAMETER, (
                f"preset {preset.name!r} loads plugin files ({files[0][0]}: {files[0][1]}); the bridge runs built-in "
                "plugins only: use lmdm process for it"), session)
        return preset

    def _closed(self, key: tuple, hosted: HostedSession) -> None:
        if self.sessions.get(key) is hosted:
            del self.sessions[key]
        self._live.discard(hosted)
        self.counts.update(hosted.counts)

    # ---- status, sweeping, shutdown ------------------------------------------------------------------------
    def status(self, with_paths: bool = False) -> dict:
        """The server's figures; the model's path only ``with_paths`` (a peer that gave the token)."""
        blocks = Counter(self.counts)
        for hosted in self._live:
            blocks.update(hosted.counts)
        runtime = self.workers.runtime
        total = self.quotas.total
        info = {"sessions": len(self.sessions), "max_sessions": self.settings.max_sessions,
                "uptime_s": round(time.monotonic() - self.started, 3), "runtime": runtime.name,
                "model": self.model_name, "batching": int(self.workers.batching),
                # the scheduler: the sessions' runtime calls, and the (batched) calls they became
                "runtime_requests": getattr(runtime, "requests", 0), "runtime_calls": getattr(runtime, "calls", 0),
                "process_seconds": self.workers.process_seconds,
                "live_sessions": total.sessions, "bytes_in_flight": total.bytes, "load": total.load,
                **{key: blocks[key] for key in STATUS_COUNTS}}
        if with_paths:
            info["model_path"] = self.model
        return info

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            self._rate.forget_idle(now)
            self._log_throttle.forget_idle(now)
            self._reply_throttle.forget_idle(now)
            idle_limit = asyncio.get_running_loop().time() - self.settings.idle_timeout_s
            for key, hosted in list(self.sessions.items()):
                if hosted.last_activity < idle_limit and hosted.backlog == 0:
                    log.info("session %r closed: idle for %g s", key[1], self.settings.idle_timeout_s)
                    self.sessions.pop(key).close()

    async def shutdown(self) -> None:
        """Refuse new work, answer what is queued (dry and late past the shutdown timeout), close every session,
        and cancel what still runs."""
        self.shutting_down = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        hosted = list(self._live)
        for h in hosted:
            h.close()
        waits = [asyncio.ensure_future(h.wait_closed()) for h in hosted]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.settings.shutdown_timeout_s)
            if pending:  # what is left is answered dry, and what still runs stops at its next runtime call
                for h in hosted:
                    h.answer_all_late()
                    h.stop_work()
                await asyncio.wait(waits, timeout=self.settings.shutdown_timeout_s)
        for h in hosted:
            h.abort()


class _Dropped(Exception):
    """A request refused without a reply."""
