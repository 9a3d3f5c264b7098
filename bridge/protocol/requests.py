"""Host -> bridge requests: OSC messages parsed into dataclasses by ``parse_request``, with a ``ProtocolError`` that
names the argument at fault."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmdm_bridge.wire.osc import Message
from lmdm_engine.stream.params import PARAM_SPECS

from .namespace import (AUDIO, CLOSE, LIVE_FIELDS, MAX_PROMPT_BYTES, OPEN, PARAM, PING, PRESET, RESET, SAMPLE_RATES,
                        STATUS, STYLE_PREFIX, ErrorCode, ProtocolError, brief, expect_count, read_float, read_int,
                        read_pairs, read_session, read_str, type_name)

MAX_COOKIE_CHARS = 64


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
    buffer_frames: int  # the longest buffer the host sends, in host frames
    preset: str | None  # None: the server's default preset
    params: LiveParams
    token: str | None = None
    deadline_ms: float | None = None  # None: one block's duration; 0: no deadline
    reply_port: int | None = None
    cookie: str | None = None  # UDP: the cookie of an earlier /lmdm/cookie answer (proves the host's address)


@dataclass(slots=True)  # not frozen: one is built per chunk, and frozen ones take 5 times as long to build
class AudioChunk:
    session: str
    seq: int
    frame_offset: int
    total_frames: int
    samples: bytes | memoryview  # a view of its packet when read by read_audio_packet
    cookie: str | None = None  # the session's cookie (required over UDP), a trailing argument


@dataclass(frozen=True)
class ParamRequest:
    session: str
    params: LiveParams
    cookie: str | None = None


@dataclass(frozen=True)
class PresetRequest:
    session: str
    preset: str
    cookie: str | None = None


@dataclass(frozen=True)
class ResetRequest:
    session: str
    cookie: str | None = None


@dataclass(frozen=True)
class CloseRequest:
    session: str
    cookie: str | None = None


@dataclass(frozen=True)
class PingRequest:
    args: tuple


@dataclass(frozen=True)
class StatusRequest:
    token: str | None


Request = (OpenRequest | AudioChunk | ParamRequest | PresetRequest | ResetRequest | CloseRequest | PingRequest
           | StatusRequest)


def _preset_name(value, where: str, session: str) -> str:
    """A preset name: hosts choose presets by name (shipped, or the server's own --preset), never by path."""
    name = read_str(value, "preset", where)
    if "/" in name or "\\" in name or name.endswith(".toml"):
        raise ProtocolError(ErrorCode.BAD_PARAMETER, f"{where}: preset {brief(name)}: over the bridge, presets are "
                                                     "chosen by name (a shipped preset, or the server's --preset)",
                            session)
    return name


def live_params(pairs: dict, where: str, session: str) -> LiveParams:
    """Key value pairs as parameter changes, checked against the Session's parameter specs (names, types; the
    engine checks ranges): ``style.<tag>`` keys set one style weight."""
    fields, style = {}, {}
    for key, value in pairs.items():
        if key.startswith(STYLE_PREFIX):
            style[key[len(STYLE_PREFIX):]] = read_float(value, key, where)
            continue
        if key not in LIVE_FIELDS:
            raise ProtocolError(ErrorCode.BAD_PARAMETER, f"{where}: {brief(key)} is not a live parameter; parameters: "
                                                         f"{', '.join(LIVE_FIELDS)}, {STYLE_PREFIX}<tag>", session)
        spec = PARAM_SPECS[key]
        if spec.kind == "int":
            fields[key] = read_int(value, key, where)
        elif spec.kind == "float":
            fields[key] = read_float(value, key, where)
        else:
            fields[key] = read_str(value, key, where)
            if key == "prompt" and (len(fields[key].encode()) > MAX_PROMPT_BYTES or not fields[key].isprintable()):
                raise ProtocolError(ErrorCode.BAD_PARAMETER, f"{where}: prompt: expected at most {MAX_PROMPT_BYTES} "
                                                             f"bytes of printable text", session)
    return LiveParams(fields, style)


def valid_cookie(cookie: str) -> bool:
    """Whether a cookie is 1 to MAX_COOKIE_CHARS printable ASCII characters (the dispatcher compares cookies with
    ``hmac.compare_digest``, which takes ASCII strings only)."""
    return 1 <= len(cookie) <= MAX_COOKIE_CHARS and cookie.isascii() and cookie.isprintable()


def read_cookie(value, where: str, session: str) -> str:
    cookie = read_str(value, "cookie", where)
    if not valid_cookie(cookie):
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: cookie {brief(cookie)} must be 1 to "
                                                     f"{MAX_COOKIE_CHARS} printable ASCII characters", session)
    return cookie


def _trailing_cookie(args: tuple, counts: tuple[int, ...], names: str, where: str, session: str):
    """The arguments before an optional trailing cookie, and the cookie (None when absent): ``counts`` are the
    argument counts without it."""
    if len(args) in counts:
        return args, None
    if len(args) - 1 in counts:
        return args[:-1], read_cookie(args[-1], where, session)
    expect_count(args, counts[0], names + ", [cookie]", where, session)


def _parse_open(args: tuple) -> OpenRequest:
    where = OPEN
    session = read_session(args, where)
    if len(args) < 5:
        expect_count(args, 5, "session, sample_rate, channels, buffer_frames, preset", where, session)
    sample_rate = read_int(args[1], "sample_rate", where)
    channels = read_int(args[2], "channels", where)
    buffer_frames = read_int(args[3], "buffer_frames", where)
    preset = _preset_name(args[4], where, session)
    if sample_rate not in SAMPLE_RATES:
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: sample_rate = {sample_rate}; the bridge takes "
                                                     f"{', '.join(map(str, SAMPLE_RATES))} Hz", session)
    if channels not in (1, 2):
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: channels = {channels}; expected 1 or 2", session)
    if buffer_frames < 1:
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: buffer_frames = {buffer_frames}; expected >= 1",
                            session)
    options = read_pairs(args[5:], where, session)
    token = options.pop("token", None)
    deadline = options.pop("deadline_ms", None)
    reply_port = options.pop("reply_port", None)
    cookie = options.pop("cookie", None)
    if cookie is not None:
        cookie = read_cookie(cookie, where, session)
    if token is not None:
        token = read_str(token, "token", where)
    if deadline is not None:
        deadline = read_float(deadline, "deadline_ms", where)
        if not 0 <= deadline <= 60_000:
            raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: deadline_ms = {deadline}; expected 0 (none) "
                                                         "to 60000", session)
    if reply_port is not None:
        reply_port = read_int(reply_port, "reply_port", where)
        if not 1 <= reply_port <= 65535:
            raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: reply_port = {reply_port}; expected 1 to 65535",
                                session)
    return OpenRequest(session, sample_rate, channels, buffer_frames, preset or None,
                       live_params(options, where, session), token, deadline, reply_port, cookie)


def _parse_audio(args: tuple) -> AudioChunk:
    where = AUDIO
    session = read_session(args, where)
    args, cookie = _trailing_cookie(args, (5,), "session, seq, frame_offset, total_frames, samples", where, session)
    seq = read_int(args[1], "seq", where)
    offset = read_int(args[2], "frame_offset", where)
    total = read_int(args[3], "total_frames", where)
    if not isinstance(args[4], bytes):
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: samples = ({type_name(args[4])}); expected a blob "
                                                     "of float32 little-endian samples", session, seq)
    return AudioChunk(session, seq, offset, total, args[4], cookie)


def _parse_param(args: tuple) -> ParamRequest:
    session = read_session(args, PARAM)
    cookie = None
    if len(args) % 2 == 0:  # the session, key value pairs, and a trailing cookie
        args, cookie = args[:-1], read_cookie(args[-1], PARAM, session)
    if len(args) < 3:
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{PARAM}: expected the session and at least one key value "
                                                     "pair", session)
    return ParamRequest(session, live_params(read_pairs(args[1:], PARAM, session), PARAM, session), cookie)


def _parse_preset(args: tuple) -> PresetRequest:
    session = read_session(args, PRESET)
    args, cookie = _trailing_cookie(args, (2,), "session, preset", PRESET, session)
    return PresetRequest(session, _preset_name(args[1], PRESET, session), cookie)


def _parse_session_only(cls, where: str):
    def parse(args: tuple):
        session = read_session(args, where)
        _, cookie = _trailing_cookie(args, (1,), "session", where, session)
        return cls(session, cookie)
    return parse


def _parse_status(args: tuple) -> StatusRequest:
    if len(args) > 1:
        expect_count(args, 1, "token, optional", STATUS)
    return StatusRequest(read_str(args[0], "token", STATUS) if args else None)


PARSERS = {
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
    parser = PARSERS.get(message.address)
    if parser is None:
        raise ProtocolError(ErrorCode.UNKNOWN_ADDRESS, f"unknown address {brief(message.address)}; the bridge "
                                                       f"answers {', '.join(PARSERS)}")
    return parser(message.args)
