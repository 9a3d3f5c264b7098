"""The bridge's OSC namespace (bridge/PROTOCOL.md): OSC messages <-> typed requests and replies. No sockets.

Host -> bridge requests are parsed by ``parse_request`` into dataclasses, with a ``ProtocolError`` that names the
argument at fault; replies are built by the ``*_reply`` functions. The client side reads replies back with
``parse_reply``. Every reply's address is its request's address + ``/reply``; errors go to ``/lmdm/error``.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass, field

import numpy as np

from lmdm_engine.io.presets import SCHEMA

from lmdm_bridge.wire.blocks import SAMPLE_DTYPE, audio_to_bytes, chunk_spans, interleave_into
from lmdm_bridge.wire.osc import Message, encode_message, encode_string, pad4

PREFIX = "/lmdm"
OPEN, AUDIO, PARAM, PRESET, RESET, CLOSE, PING, STATUS = (
    f"{PREFIX}/{verb}" for verb in ("open", "audio", "param", "preset", "reset", "close", "ping", "status"))
ERROR = f"{PREFIX}/error"
REPLY_SUFFIX = "/reply"
MAX_SESSION_ID_BYTES = 64
# host rates the bridge takes: a session's set-up cost grows with rate / gcd(rate, model rate), which is small for
# these and can reach seconds for odd rates (e.g. 96001 Hz)
SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000)
STYLE_PREFIX = "style."
# preset fields settable one value at a time (numbers and choices); the style goes tag by tag as style.<tag>, and
# the rest (name, description, plugin chains) comes with a preset
# Preset fields a host may change live: numbers, choices and the text prompt (not the name or the description).
LIVE_FIELDS = tuple(name for name, spec in SCHEMA.items()
                    if spec.kind in ("int", "float", "choice") or name == "prompt")
MAX_PROMPT_BYTES = 512


def reply_address(request_address: str) -> str:
    return request_address + REPLY_SUFFIX


class ErrorCode(enum.IntEnum):
    """Codes of ``/lmdm/error`` (their names are sent too)."""

    MALFORMED = 1  # not an OSC packet, or a stream frame that could not be read
    UNKNOWN_ADDRESS = 2
    BAD_ARGUMENTS = 3  # wrong number or types of arguments
    UNKNOWN_SESSION = 4
    SESSION_EXISTS = 5
    TOO_MANY_SESSIONS = 6
    BAD_PARAMETER = 7  # a preset or parameter the engine refuses
    BAD_AUDIO = 8  # a chunk that cannot be read as the session's audio, or non-finite samples
    TOO_LARGE = 9
    RATE_LIMITED = 10
    UNAUTHORIZED = 11
    SHUTTING_DOWN = 12
    ENGINE_ERROR = 13  # the engine failed on a block (answered dry)


class BlockFlag(enum.IntFlag):
    """Bits of an audio reply's ``flags``; 0 means processed normally."""

    LATE = 1  # dry: the engine had fallen behind (deadline passed or queue full)
    BAD_INPUT = 2  # dry: the block held NaN or Inf samples (replaced by silence)
    CONCEALED = 4  # some frames never arrived and were replaced by silence
    RESTARTED = 8  # the session's echo restarted here, after blocks were skipped or lost
    ENGINE_ERROR = 16  # dry: the engine failed on this block


class ProtocolError(ValueError):
    """A request that cannot be served; becomes an ``/lmdm/error`` reply."""

    def __init__(self, code: ErrorCode, message: str, session: str = "", seq: int = -1):
        super().__init__(message)
        self.code, self.session, self.seq = ErrorCode(code), session, seq


# ---- requests -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveParams:
    """Parameter changes: preset fields, and style tag weights merged into the current style."""

    fields: dict = field(default_factory=dict)
    style: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OpenRequest:
    session: str
    sample_rate: int
    channels: int
    block_frames: int
    preset: str | None  # None: the server's default preset
    params: LiveParams
    token: str | None = None
    deadline_ms: float | None = None  # None: one block's duration; 0: no deadline
    reply_port: int | None = None


@dataclass(slots=True)  # not frozen: one is built per chunk, and frozen ones take 5 times as long to build
class AudioChunk:
    session: str
    seq: int
    frame_offset: int
    total_frames: int
    samples: bytes


@dataclass(frozen=True)
class ParamRequest:
    session: str
    params: LiveParams


@dataclass(frozen=True)
class PresetRequest:
    session: str
    preset: str


@dataclass(frozen=True)
class ResetRequest:
    session: str


@dataclass(frozen=True)
class CloseRequest:
    session: str


@dataclass(frozen=True)
class PingRequest:
    args: tuple


@dataclass(frozen=True)
class StatusRequest:
    token: str | None


Request = (OpenRequest | AudioChunk | ParamRequest | PresetRequest | ResetRequest | CloseRequest | PingRequest
           | StatusRequest)


def _type_name(value) -> str:
    return {bytes: "blob", str: "string", bool: "boolean", type(None): "nil"}.get(type(value), type(value).__name__)


def _as_int(value, what: str, where: str) -> int:
    """Ints, and floats holding a whole number (Max and Pure Data send numbers as floats)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: {what} = {value!r} ({_type_name(value)}); "
                                                     "expected an int")
    return value


def _as_float(value, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: {what} = {value!r} ({_type_name(value)}); "
                                                     "expected a number")
    return float(value)


def _as_str(value, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: {what} = {value!r} ({_type_name(value)}); "
                                                     "expected a string")
    return value


def _preset_name(value, where: str, session: str) -> str:
    """A preset name: hosts choose presets by name (shipped, or the server's own --preset), never by path."""
    name = _as_str(value, "preset", where)
    if "/" in name or "\\" in name or name.endswith(".toml"):
        raise ProtocolError(ErrorCode.BAD_PARAMETER, f"{where}: preset {name[:80]!r}: over the bridge, presets are "
                                                     "chosen by name (a shipped preset, or the server's --preset)",
                            session)
    return name


def _session_id(args: tuple, where: str) -> str:
    if not args:
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: missing the session id (first argument)")
    session = _as_str(args[0], "session", where)
    if not session or len(session.encode()) > MAX_SESSION_ID_BYTES or not session.isprintable():
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: session id {session[:80]!r} must be 1 to "
                                                     f"{MAX_SESSION_ID_BYTES} bytes of printable text")
    return session


def _count(args: tuple, n: int, names: str, where: str, session: str = "") -> None:
    if len(args) != n:
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: expected {n} arguments ({names}), got {len(args)}",
                            session)


def _pairs(args: tuple, where: str, session: str) -> dict:
    """Trailing ``key value`` arguments as a dict."""
    if len(args) % 2:
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: options must come in key value pairs; "
                                                     f"{len(args)} arguments left", session)
    out = {}
    for key, value in zip(args[::2], args[1::2]):
        key = _as_str(key, "option key", where)
        if key in out:
            raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: option {key!r} given twice", session)
        out[key] = value
    return out


def live_params(pairs: dict, where: str, session: str) -> LiveParams:
    """Key value pairs as parameter changes, checked against the preset schema (names, types; the engine
    checks ranges): ``style.<tag>`` keys set one style weight."""
    fields, style = {}, {}
    for key, value in pairs.items():
        if key.startswith(STYLE_PREFIX):
            style[key[len(STYLE_PREFIX):]] = _as_float(value, key, where)
            continue
        if key not in LIVE_FIELDS:
            raise ProtocolError(ErrorCode.BAD_PARAMETER, f"{where}: {key!r} is not a live parameter; parameters: "
                                                         f"{', '.join(LIVE_FIELDS)}, {STYLE_PREFIX}<tag>", session)
        spec = SCHEMA[key]
        if spec.kind == "int":
            fields[key] = _as_int(value, key, where)
        elif spec.kind == "float":
            fields[key] = _as_float(value, key, where)
        else:
            fields[key] = _as_str(value, key, where)
            if key == "prompt" and (len(fields[key].encode()) > MAX_PROMPT_BYTES or not fields[key].isprintable()):
                raise ProtocolError(ErrorCode.BAD_PARAMETER, f"{where}: prompt: expected at most {MAX_PROMPT_BYTES} "
                                                             f"bytes of printable text", session)
    return LiveParams(fields, style)


def _parse_open(args: tuple) -> OpenRequest:
    where = OPEN
    session = _session_id(args, where)
    if len(args) < 5:
        _count(args, 5, "session, sample_rate, channels, block_frames, preset", where, session)
    sample_rate = _as_int(args[1], "sample_rate", where)
    channels = _as_int(args[2], "channels", where)
    block_frames = _as_int(args[3], "block_frames", where)
    preset = _preset_name(args[4], where, session)
    if sample_rate not in SAMPLE_RATES:
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: sample_rate = {sample_rate}; the bridge takes "
                                                     f"{', '.join(map(str, SAMPLE_RATES))} Hz", session)
    if channels not in (1, 2):
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: channels = {channels}; expected 1 or 2", session)
    if block_frames < 1:
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: block_frames = {block_frames}; expected >= 1",
                            session)
    options = _pairs(args[5:], where, session)
    token = options.pop("token", None)
    deadline = options.pop("deadline_ms", None)
    reply_port = options.pop("reply_port", None)
    if token is not None:
        token = _as_str(token, "token", where)
    if deadline is not None:
        deadline = _as_float(deadline, "deadline_ms", where)
        if not 0 <= deadline <= 60_000:
            raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: deadline_ms = {deadline}; expected 0 (none) "
                                                         "to 60000", session)
    if reply_port is not None:
        reply_port = _as_int(reply_port, "reply_port", where)
        if not 1 <= reply_port <= 65535:
            raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: reply_port = {reply_port}; expected 1 to 65535",
                                session)
    return OpenRequest(session, sample_rate, channels, block_frames, preset or None,
                       live_params(options, where, session), token, deadline, reply_port)


def _parse_audio(args: tuple) -> AudioChunk:
    where = AUDIO
    session = _session_id(args, where)
    _count(args, 5, "session, seq, frame_offset, total_frames, samples", where, session)
    seq = _as_int(args[1], "seq", where)
    offset = _as_int(args[2], "frame_offset", where)
    total = _as_int(args[3], "total_frames", where)
    if not isinstance(args[4], bytes):
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: samples = ({_type_name(args[4])}); expected a blob "
                                                     "of float32 little-endian samples", session, seq)
    return AudioChunk(session, seq, offset, total, args[4])


def _parse_param(args: tuple) -> ParamRequest:
    session = _session_id(args, PARAM)
    if len(args) < 3:
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{PARAM}: expected the session and at least one key value "
                                                     "pair", session)
    return ParamRequest(session, live_params(_pairs(args[1:], PARAM, session), PARAM, session))


def _parse_preset(args: tuple) -> PresetRequest:
    session = _session_id(args, PRESET)
    _count(args, 2, "session, preset", PRESET, session)
    return PresetRequest(session, _preset_name(args[1], PRESET, session))


def _parse_session_only(cls, where: str):
    def parse(args: tuple):
        session = _session_id(args, where)
        _count(args, 1, "session", where, session)
        return cls(session)
    return parse


def _parse_status(args: tuple) -> StatusRequest:
    if len(args) > 1:
        _count(args, 1, "token, optional", STATUS)
    return StatusRequest(_as_str(args[0], "token", STATUS) if args else None)


_PARSERS = {
    OPEN: _parse_open,
    AUDIO: _parse_audio,
    PARAM: _parse_param,
    PRESET: _parse_preset,
    RESET: _parse_session_only(ResetRequest, RESET),
    CLOSE: _parse_session_only(CloseRequest, CLOSE),
    PING: PingRequest,
    STATUS: _parse_status,
}


def parse_request(message: Message) -> Request:
    """The request a message carries; raises ProtocolError naming the argument at fault."""
    parser = _PARSERS.get(message.address)
    if parser is None:
        raise ProtocolError(ErrorCode.UNKNOWN_ADDRESS, f"unknown address {message.address[:80]!r}; the bridge "
                                                       f"answers {', '.join(_PARSERS)}")
    return parser(message.args)


# ---- replies --------------------------------------------------------------------------------------
def _flatten(pairs: dict) -> tuple:
    return tuple(item for key, value in pairs.items() for item in (key, value))


def open_reply(session: str, latency_samples: int, info: dict, address: str = OPEN) -> Message:
    """Answer to open (and to reset, with ``address=RESET``): the latency, then facts as key value pairs."""
    return Message(reply_address(address), (session, int(latency_samples), *_flatten(info)))


def params_pairs(params) -> dict:
    """A Preset's live parameters as key value pairs (style as ``style.<tag>``)."""
    pairs = {"preset": params.name}
    pairs.update({key: getattr(params, key) for key in LIVE_FIELDS})
    pairs.update({STYLE_PREFIX + tag: weight for tag, weight in params.style.items()})
    return pairs


def params_reply(session: str, params, address: str = PARAM) -> Message:
    """Answer to param (and preset): the session's parameters after the change."""
    return Message(reply_address(address), (session, *_flatten(params_pairs(params))))


def close_reply(session: str, counts: dict) -> Message:
    return Message(reply_address(CLOSE), (session, *_flatten(counts)))


def ping_reply(args: tuple) -> Message:
    return Message(reply_address(PING), tuple(args))


def status_reply(info: dict) -> Message:
    return Message(reply_address(STATUS), _flatten(info))


def error_message(error: ProtocolError) -> Message:
    return Message(ERROR, (int(error.code), error.code.name.lower(), error.session, int(error.seq), str(error)))


def audio_messages(address: str, session: str, seq: int, audio: np.ndarray, flags: int | None = None,
                   max_packet: int | None = None) -> list[Message]:
    """One block as audio messages (requests without ``flags``, replies with them), split into chunks so that
    each encoded message is at most ``max_packet`` bytes (None: one message)."""
    channels, total = audio.shape
    extra = () if flags is None else (int(flags),)
    samples = audio_to_bytes(audio)
    if max_packet is None:
        return [Message(address, (session, seq, 0, total, *extra, samples))]
    header = len(encode_message(Message(address, (session, seq, 0, total, *extra, b""))))
    frame_bytes = 4 * channels
    frames_per_chunk = (max_packet - header) // frame_bytes
    if frames_per_chunk < 1:
        raise ValueError(f"max_packet={max_packet} bytes leaves no room for audio after the {header}-byte header")
    return [Message(address, (session, seq, start, total, *extra,
                              samples[start * frame_bytes: (start + n) * frame_bytes]))
            for start, n in chunk_spans(total, frames_per_chunk)]


def audio_packets(address: str, session: str, seq: int, audio: np.ndarray, flags: int | None = None,
                  max_packet: int | None = None, reserve: int = 0) -> list[bytearray]:
    """The encoded packets of ``audio_messages(...)`` (the same bytes as ``encode_message`` makes of each), each
    built in one buffer: the samples are written interleaved straight into it, with no intermediate copies of the
    block. ``reserve`` bytes are left free at the start of each buffer (for a stream framing's size prefix)."""
    channels, total = audio.shape
    numbers = (seq, 0, total) if flags is None else (seq, 0, total, int(flags))
    frame_bytes = 4 * channels
    # everything before the blob's size; the chunks' headers differ only in frame_offset, an int32 followed by
    # total_frames, the flags if any, and the blob size
    if all(-2**31 <= n < 2**31 for n in numbers):
        head = _audio_prefix(address, session, len(numbers)) + struct.pack(f">{len(numbers)}i", *numbers)
    else:  # a seq past int32 is written as int64, as encode_message writes it
        head = encode_message(Message(address, (session, *numbers, b"")))[:-4]
    at = len(head) - 4 * (len(numbers) - 1)  # where frame_offset sits
    if max_packet is None:
        spans = [(0, total)]
    else:
        frames_per_chunk = (max_packet - len(head) - 4) // frame_bytes
        if frames_per_chunk < 1:
            raise ValueError(f"max_packet={max_packet} bytes leaves no room for audio after the "
                             f"{len(head) + 4}-byte header")
        spans = chunk_spans(total, frames_per_chunk)
    if len(spans) == 1:  # one packet: the samples are interleaved straight into it
        offset = reserve + len(head) + 4
        packet = bytearray(offset + total * frame_bytes)
        packet[reserve: offset - 4] = head
        packet[offset - 4: offset] = _INT32_BE.pack(total * frame_bytes)
        interleave_into(np.frombuffer(packet, SAMPLE_DTYPE, total * channels, offset).reshape(total, channels), audio)
        return [packet]
    # chunks: the block interleaved once, each chunk's bytes joined behind its header (cheaper than per-chunk numpy)
    samples = memoryview(audio_to_bytes(audio))
    before, after, pad = head[:at], head[at + 4:], bytes(reserve)
    return [bytearray().join((pad, before, _INT32_BE.pack(start), after, _INT32_BE.pack(n * frame_bytes),
                              samples[start * frame_bytes: (start + n) * frame_bytes]))
            for start, n in spans]


def _audio_head(address: str, numbers: int) -> bytes:
    """An audio message's address and type tags (a session id, ``numbers`` int32s, a blob), as encode_message
    writes them."""
    return encode_string(address) + encode_string(",s" + "i" * numbers + "b")


@functools.lru_cache(maxsize=1024)
def _audio_prefix(address: str, session: str, numbers: int) -> bytes:
    """An audio message's bytes before its int32 numbers: kept per session, as encoding them again for every
    block is most of the work of building its header."""
    return _audio_head(address, numbers) + encode_string(session)


_INT32_BE = struct.Struct(">i")


# ---- reading replies (clients) ----------------------------------------------------------------------
@dataclass(slots=True)  # not frozen, as AudioChunk
class AudioReply:
    session: str
    seq: int
    frame_offset: int
    total_frames: int
    flags: int  # BlockFlag bits, as read (a BlockFlag is built once per block, by whoever needs one)
    samples: bytes


@dataclass(frozen=True)
class InfoReply:
    """Answer to open, reset, param, preset, close, ping or status: ``request`` is the request's address."""

    request: str
    session: str
    values: dict
    args: tuple


@dataclass(frozen=True)
class ErrorReply:
    code: int
    name: str
    session: str
    seq: int
    message: str


def parse_reply(message: Message) -> AudioReply | InfoReply | ErrorReply:
    """A reply message read back (raises ProtocolError when it is not one)."""
    args, address = message.args, message.address
    where = f"reply {address[:80]!r}"
    if address == ERROR:
        _count(args, 5, "code, name, session, seq, message", where)
        return ErrorReply(_as_int(args[0], "code", where), _as_str(args[1], "name", where),
                          _as_str(args[2], "session", where), _as_int(args[3], "seq", where),
                          _as_str(args[4], "message", where))
    if address == reply_address(AUDIO):
        _count(args, 6, "session, seq, frame_offset, total_frames, flags, samples", where)
        if not isinstance(args[5], bytes):
            raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: samples must be a blob")
        return AudioReply(_as_str(args[0], "session", where), _as_int(args[1], "seq", where),
                          _as_int(args[2], "frame_offset", where), _as_int(args[3], "total_frames", where),
                          _as_int(args[4], "flags", where), args[5])
    request = address[: -len(REPLY_SUFFIX)] if address.endswith(REPLY_SUFFIX) else ""
    if request not in _PARSERS:
        raise ProtocolError(ErrorCode.UNKNOWN_ADDRESS, f"{where} is not a bridge reply")
    if request in (PING, STATUS):
        session, rest = "", args
    else:
        session = _session_id(args, where)
        rest = args[1:]
        if request in (OPEN, RESET):
            rest = ("latency_samples", *rest)
    values = _pairs(rest, where, session) if request != PING else {}
    return InfoReply(request, session, values, args)


# ---- audio, read straight from the packet -------------------------------------------------------------
_AUDIO_REQUEST_HEAD = _audio_head(AUDIO, 3)
_AUDIO_REPLY_HEAD = _audio_head(reply_address(AUDIO), 4)
_REQUEST_NUMBERS = struct.Struct(">iiii")  # seq, frame_offset, total_frames, blob size
_REPLY_NUMBERS = struct.Struct(">iiiii")  # seq, frame_offset, total_frames, flags, blob size


def read_audio_packet(packet: bytes, reply: bool = False) -> AudioChunk | AudioReply | None:
    """An audio request (an audio reply with ``reply``) read straight from a packet that is exactly one such
    message in the layout OSC encoders write for it (int32 numbers, a blob). Audio is nearly all the traffic, and
    over UDP a block is tens of packets; this reads them 3 times faster than ``decode_packet`` and
    ``parse_request`` / ``parse_reply``, with the same result. None for anything else (a bundle, numbers sent as
    floats, another message, any fault), which those then read and report."""
    if type(packet) is not bytes:
        packet = bytes(packet)
    head, numbers = (_AUDIO_REPLY_HEAD, _REPLY_NUMBERS) if reply else (_AUDIO_REQUEST_HEAD, _REQUEST_NUMBERS)
    if not packet.startswith(head):
        return None
    end = packet.find(b"\0", len(head))
    pos = pad4(end + 1)
    if end < 0 or pos + numbers.size > len(packet):
        return None
    try:
        session = packet[len(head): end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    *values, size = numbers.unpack_from(packet, pos)
    blob = pos + numbers.size
    if size < 0 or blob + pad4(size) != len(packet):
        return None
    samples = packet[blob: blob + size]
    if reply:
        seq, offset, total, flags = values
        return AudioReply(session, seq, offset, total, flags, samples)
    if not session or end - len(head) > MAX_SESSION_ID_BYTES or not session.isprintable():
        return None
    return AudioChunk(session, *values, samples)
