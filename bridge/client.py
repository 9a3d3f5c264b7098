"""Python clients of the bridge: ``BridgeClient`` (the protocol, call by call) and ``BridgeEffect`` (a
Pedalboard-style effect that runs the generative delay on a bridge).

Both are blocking and meant for one thread. Over UDP, reply chunks are reassembled like the server does it: a
reply that never completes is concealed with the dry input and flagged ``CONCEALED`` instead of waited on; an
open is answered with a cookie first, sent again with it, and every later request about the session carries it.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np

from lmdm_bridge.protocol.namespace import (AUDIO, CLOSE, COOKIE, OPEN, PARAM, PING, PRESET, RESET, STATUS,
                                            STYLE_PREFIX, BlockFlag, ErrorCode, ProtocolError)
from lmdm_bridge.protocol.packets import read_audio_packet
from lmdm_bridge.protocol.replies import AudioReply, ErrorReply, InfoReply, parse_reply
from lmdm_bridge.wire.blocks import BlockAssembler, audio_packets
from lmdm_bridge.wire.framing import FRAMINGS, FramingError
from lmdm_bridge.wire.osc import Message, OscDecodeError, decode_packet, encode_message
from lmdm_engine.core.audio import channels_first

log = logging.getLogger("lmdm_bridge.client")

UDP_PACKET_BYTES = 8192
UDP_RECEIVE_BUFFER = 4 << 20
UDP_DRAIN = 64  # datagrams read at most in one go


class BridgeError(RuntimeError):
    """An ``/lmdm/error`` the bridge answered with."""

    def __init__(self, reply: ErrorReply):
        super().__init__(f"{reply.name} (code {reply.code}) session={reply.session!r} seq={reply.seq}: "
                         f"{reply.message}")
        self.code, self.name, self.session, self.seq, self.message = (reply.code, reply.name, reply.session,
                                                                      reply.seq, reply.message)


@dataclass(frozen=True)
class OpenInfo:
    """Answer to open and reset: the session's latency (input sample -> its echo) and the facts it reported."""

    session: str
    latency_samples: int
    values: dict


@dataclass(frozen=True)
class BlockResult:
    seq: int
    audio: np.ndarray  # [channels, frames] float32
    flags: BlockFlag


class _ClientSession:
    def __init__(self, channels: int, buffer_frames: int, reassembly: float, cookie: str | None):
        self.cookie = cookie  # UDP: ends every request about the session
        self.channels = channels
        self.buffer_frames = buffer_frames
        self.next_seq = 0
        self.assembler = BlockAssembler(channels, buffer_frames, reassembly, window=1 << 16)
        self.sent: dict[int, np.ndarray] = {}  # seq -> dry audio, until answered
        self.flags: dict[int, int] = {}  # seq -> the flags of its reply's first chunk
        self.ready: dict[int, BlockResult] = {}
        self.errors: dict[int, BridgeError] = {}


class BridgeClient:
    """One connection to a bridge: ``transport`` "tcp" (``framing`` "length-prefix" or "slip") or "udp"."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9000, transport: str = "tcp",
                 framing: str = "length-prefix", timeout: float = 30.0, token: str | None = None,
                 reassembly_ms: float = 100.0):
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be 'tcp' or 'udp', got {transport!r}")
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {sorted(FRAMINGS)}, got {framing!r}")
        self.transport, self.timeout, self.token = transport, timeout, token
        self.reassembly = reassembly_ms / 1000.0
        self.warnings: deque[str] = deque(maxlen=100)  # errors that belonged to no call (e.g. rate limiting)
        self._sessions: dict[str, _ClientSession] = {}
        self._replies: deque = deque()  # InfoReply / ErrorReply not about a block, oldest first
        self._buffer = bytearray(1 << 20)  # reads land here (one buffer for the connection's life)
        self._view = memoryview(self._buffer)
        if transport == "tcp":
            self._sock = socket.create_connection((host, port), timeout=timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._framing = FRAMINGS[framing](1 << 30)
            self._max_packet = None
        else:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
            self._sock.connect((host, port))
            self._max_packet = UDP_PACKET_BYTES

    # ---- requests -------------------------------------------------------------------------------------
    def open(self, session: str, sample_rate: int, channels: int, buffer_frames: int, preset: str | None = None,
             deadline_ms: float | None = None, **params) -> OpenInfo:
        """Open a session. ``deadline_ms``: None answers a block late once one block's duration has passed,
        0 waits for every block (offline work). ``params``: live parameters (``style={"pad": 1.0}`` too)."""
        options = {} if deadline_ms is None else {"deadline_ms": float(deadline_ms)}
        if self.token is not None:
            options["token"] = self.token
        args = (session, int(sample_rate), int(channels), int(buffer_frames), preset or "",
                *_pairs({**options, **_param_pairs(params)}))
        reply = self._request(Message(OPEN, args), (OPEN, COOKIE), session)
        if reply.request == COOKIE:  # UDP: the same open again with the cookie proves this address
            cookie = reply.values["cookie"]
            reply = self._request(Message(OPEN, (*args, "cookie", cookie)), (OPEN,), session)
        self._sessions[session] = _ClientSession(channels, buffer_frames, self.reassembly,
                                                 reply.values.get("cookie") if self.transport == "udp" else None)
        return OpenInfo(session, reply.values["latency_samples"], reply.values)

    def _session_request(self, address: str, session: str, *args) -> InfoReply:
        """A request about an open session (with its cookie over UDP), and its reply."""
        cookie = self._sessions[session].cookie if session in self._sessions else None
        return self._request(Message(address, (session, *args) + ((cookie,) if cookie else ())), (address,),
                             session)

    def set_params(self, session: str, **params) -> dict:
        """Change live parameters; returns all of the session's parameters after the change."""
        return self._session_request(PARAM, session, *_pairs(_param_pairs(params))).values

    def set_preset(self, session: str, preset: str) -> dict:
        return self._session_request(PRESET, session, preset).values

    def reset(self, session: str) -> OpenInfo:
        reply = self._session_request(RESET, session)
        return OpenInfo(session, reply.values["latency_samples"], reply.values)

    def close(self, session: str) -> dict:
        """Close a session (its queued blocks are answered first); returns its block counts."""
        values = self._session_request(CLOSE, session).values
        self._sessions.pop(session, None)
        return values

    def ping(self, *args) -> tuple:
        return self._request(Message(PING, args), (PING,), "").args

    def status(self) -> dict:
        return self._request(Message(STATUS, () if self.token is None else (self.token,)), (STATUS,), "").values

    # ---- audio ----------------------------------------------------------------------------------------
    def send_block(self, session: str, audio: np.ndarray) -> int:
        """Send one block ([channels, frames] float32, at most the buffer_frames given at open); returns its seq."""
        s = self._session(session)
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 2 or audio.shape[0] != s.channels or not 1 <= audio.shape[1] <= s.buffer_frames:
            raise ValueError(f"expected a block of shape [{s.channels}, 1..{s.buffer_frames}], got {audio.shape}")
        seq, s.next_seq = s.next_seq, s.next_seq + 1
        s.sent[seq] = audio
        if self.transport == "udp":
            for packet in audio_packets(AUDIO, session, seq, audio, None, self._max_packet, cookie=s.cookie):
                self._sock.send(packet)
        else:
            (packet,) = audio_packets(AUDIO, session, seq, audio, None, None,
                                      reserve=self._framing.header_size)
            self._sock.sendall(self._framing.frame(packet))
        return seq

    def receive_block(self, session: str, seq: int, timeout: float | None = None) -> BlockResult:
        """The reply to block ``seq``. Over UDP, a reply with chunks missing has them filled with the dry input,
        and one of which nothing arrives within ``timeout`` is the dry input; both flagged CONCEALED.
        Raises BridgeError when the bridge rejected the block, TimeoutError when a TCP reply does not come."""
        s = self._session(session)
        if seq not in s.sent and seq not in s.ready and seq not in s.errors:
            raise ValueError(f"session {session!r}: no block with seq {seq} is waiting for its reply")
        give_up = time.monotonic() + (self.timeout if timeout is None else timeout)
        while seq not in s.ready and seq not in s.errors:
            now = time.monotonic()
            if now >= give_up:
                if self.transport == "tcp":
                    raise TimeoutError(f"session {session!r}: no reply to block {seq} within the timeout")
                for waiting in range(s.assembler.next_seq, seq + 1):  # conceal this reply and any still before it
                    self._take_blocks(s, s.assembler.skip(waiting, now))
                continue
            wake = s.assembler.next_timeout()
            wait = give_up - now if wake is None else min(give_up, wake) - now
            self._receive(max(wait, 1e-4))
            self._take_blocks(s, s.assembler.poll(time.monotonic()))
        if seq in s.errors:
            s.sent.pop(seq, None)
            raise s.errors.pop(seq)
        return s.ready.pop(seq)

    def process(self, session: str, audio: np.ndarray) -> BlockResult:
        """Send one block and wait for its reply."""
        return self.receive_block(session, self.send_block(session, audio))

    # ---- plumbing -------------------------------------------------------------------------------------
    def _session(self, session: str) -> _ClientSession:
        if session not in self._sessions:
            raise ValueError(f"no session {session!r} is open on this client")
        return self._sessions[session]

    def _send(self, message: Message) -> None:
        packet = encode_message(message, doubles=True)  # parameters arrive exactly as given
        if self.transport == "tcp":
            self._sock.sendall(self._framing.encode(packet))
        else:
            self._sock.send(packet)

    def _receive(self, timeout: float) -> None:
        """Read what arrives within ``timeout`` (at least one read) and file each reply where it belongs."""
        self._sock.settimeout(timeout)
        try:
            size = self._sock.recv_into(self._buffer)
        except (socket.timeout, BlockingIOError):
            return
        except ConnectionRefusedError:  # UDP: nothing listens at the bridge's address (ICMP)
            raise ConnectionError("the bridge is not reachable (connection refused)") from None
        if self.transport == "tcp":
            if not size:
                raise ConnectionError("the bridge closed the connection")
            packets = self._framing.feed(self._view[:size])
        else:
            packets = [bytes(self._view[:size])]
            # a block's reply is many datagrams: take those already here in this call, without waiting again
            self._sock.setblocking(False)
            try:
                while len(packets) < UDP_DRAIN:
                    size = self._sock.recv_into(self._buffer)
                    packets.append(bytes(self._view[:size]))
            except BlockingIOError:
                pass
            except ConnectionRefusedError:
                raise ConnectionError("the bridge is not reachable (connection refused)") from None
            finally:
                self._sock.settimeout(timeout)
        for packet in packets:
            if isinstance(packet, FramingError):
                log.warning("unreadable frame from the bridge: %s", packet)
                continue
            audio = read_audio_packet(packet, reply=True)  # most replies: read without the generic decoder
            if audio is not None:
                self._file(audio)
                continue
            try:
                messages = decode_packet(packet)
            except OscDecodeError as e:
                log.warning("unreadable packet from the bridge: %s", e)
                continue
            for message in messages:
                try:
                    self._file(parse_reply(message))
                except ProtocolError as e:
                    log.warning("unexpected message from the bridge: %s", e)

    def _file(self, reply) -> None:
        if isinstance(reply, AudioReply):
            s = self._sessions.get(reply.session)
            if s is None or reply.seq not in s.sent:
                return  # a late duplicate, or a session closed meanwhile
            s.flags.setdefault(reply.seq, reply.flags)
            self._take_blocks(s, s.assembler.add(reply.seq, reply.frame_offset, reply.total_frames, reply.samples,
                                                 time.monotonic()))
        elif isinstance(reply, ErrorReply) and reply.seq >= 0 and reply.session in self._sessions:
            s = self._sessions[reply.session]
            if reply.code == ErrorCode.ENGINE_ERROR:  # the block is still answered (dry, flagged)
                self.warnings.append(str(BridgeError(reply)))
            elif reply.seq in s.sent:
                s.errors[reply.seq] = BridgeError(reply)
                self._take_blocks(s, s.assembler.skip(reply.seq, time.monotonic()))
            else:
                self.warnings.append(str(BridgeError(reply)))
        else:
            self._replies.append(reply)

    @staticmethod
    def _take_blocks(s: _ClientSession, blocks) -> None:
        for block in blocks:
            dry = s.sent.pop(block.seq, None)
            flags = BlockFlag(s.flags.pop(block.seq, 0))
            if dry is None or block.seq in s.errors:
                continue
            if block.lost:
                s.ready[block.seq] = BlockResult(block.seq, dry, flags | BlockFlag.CONCEALED)
                continue
            audio = block.audio
            if block.concealed:
                audio[:, block.missing] = dry[:, block.missing]
                flags |= BlockFlag.CONCEALED
            s.ready[block.seq] = BlockResult(block.seq, audio, flags)

    def _request(self, message: Message, addresses: tuple[str, ...], session: str) -> InfoReply:
        """Send a request and wait for its reply, to one of ``addresses`` (errors about this session, or about no
        session, are raised)."""
        self._send(message)
        give_up = time.monotonic() + self.timeout
        while True:
            while self._replies:
                reply = self._replies.popleft()
                if isinstance(reply, ErrorReply):
                    if reply.session in (session, ""):
                        raise BridgeError(reply)
                    self.warnings.append(str(BridgeError(reply)))
                elif reply.request in addresses and reply.session == session:
                    return reply
            now = time.monotonic()
            if now >= give_up:
                raise TimeoutError(f"no reply to {message.address} within {self.timeout} s")
            self._receive(give_up - now)

    def close_connection(self) -> None:
        self._sock.close()

    def __enter__(self) -> "BridgeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close_connection()


def _param_pairs(params: dict) -> dict:
    """Keyword parameters as protocol keys: ``style={"pad": 1.0}`` becomes ``style.pad``."""
    out = {}
    for key, value in params.items():
        if key == "style":
            out.update({STYLE_PREFIX + tag: float(weight) for tag, weight in value.items()})
        else:
            out[key] = value
    return out


def _pairs(pairs: dict) -> tuple:
    return tuple(item for key, value in pairs.items() for item in (key, value))


class BridgeEffect:
    """The generative delay on a bridge, used like a Pedalboard plugin:

        effect = BridgeEffect("127.0.0.1", 9000, "glass_bells", seed=3)
        wet = effect(audio, 48000)                        # whole file: starts from a fresh session
        out = effect.process(chunk, 48000, reset=False)   # streaming: carries on from the last chunk

    Audio is float32 [channels, frames] (or 1-D mono), 1 or 2 channels; the same shape comes back. The output
    equals a local ``Session`` with the same preset and parameters on the same input. Every block is processed
    (the session waits for the engine: no deadline); ``flags`` collects the flags of the blocks since the last
    reset (over UDP: CONCEALED where replies were lost).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9000, preset: str | None = None, *,
                 transport: str = "tcp", block_seconds: float = 0.5, window: int = 4, token: str | None = None,
                 timeout: float = 60.0, **params):
        self.client = BridgeClient(host, port, transport, timeout=timeout, token=token)
        self.preset, self.params = preset, params
        self.block_seconds, self.window = block_seconds, window
        self.session = f"effect-{uuid.uuid4().hex[:12]}"
        self.flags = BlockFlag(0)
        self.latency_samples: int | None = None
        self._format: tuple[int, int] | None = None  # (sample_rate, channels) of the open session
        self._buffer_frames = 0
        self._fresh = True  # nothing processed since open or reset

    def __call__(self, audio: np.ndarray, sample_rate: float) -> np.ndarray:
        return self.process(audio, sample_rate, reset=True)

    def process(self, chunk: np.ndarray, sample_rate: float, reset: bool = False) -> np.ndarray:
        """Process ``chunk``; ``reset=True`` forgets all earlier audio first."""
        audio = np.asarray(chunk, np.float32)
        two_d = channels_first(audio, (1, 2))
        if int(sample_rate) != sample_rate:
            raise ValueError(f"sample_rate must be a whole number of Hz, got {sample_rate}")
        self._prepare(int(sample_rate), two_d.shape[0], reset)
        out = self._stream(two_d)
        return out.reshape(audio.shape)

    def _prepare(self, sample_rate: int, channels: int, reset: bool) -> None:
        if self._format != (sample_rate, channels):
            if self._format is not None:
                self.client.close(self.session)
            self._buffer_frames = max(1, int(round(self.block_seconds * sample_rate)))
            info = self.client.open(self.session, sample_rate, channels, self._buffer_frames, self.preset,
                                    deadline_ms=0, **self.params)
            self._format, self.latency_samples, self._fresh = (sample_rate, channels), info.latency_samples, True
        elif reset and not self._fresh:
            self.latency_samples = self.client.reset(self.session).latency_samples
            self._fresh = True
        if reset:
            self.flags = BlockFlag(0)

    def _stream(self, audio: np.ndarray) -> np.ndarray:
        """Blocks out with up to ``window`` in flight; replies joined back in order."""
        spans = list(range(0, audio.shape[1], self._buffer_frames))
        pieces, in_flight = [], deque()
        for start in spans:
            in_flight.append(self.client.send_block(self.session, audio[:, start: start + self._buffer_frames]))
            self._fresh = False
            if len(in_flight) >= self.window:
                pieces.append(self._receive(in_flight.popleft()))
        while in_flight:
            pieces.append(self._receive(in_flight.popleft()))
        return np.concatenate(pieces, 1) if pieces else audio.copy()

    def _receive(self, seq: int) -> np.ndarray:
        result = self.client.receive_block(self.session, seq)
        self.flags |= result.flags
        return result.audio

    def close(self) -> None:
        """Close the remote session and the connection."""
        if self._format is not None:
            self.client.close(self.session)
            self._format = None
        self.client.close_connection()

    def __enter__(self) -> "BridgeEffect":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
