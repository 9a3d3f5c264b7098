"""Bridge -> host replies: built by the ``*_reply`` functions, read back by clients with ``parse_reply``. Every reply's
address is its request's address + ``/reply``; errors go to ``/lmdm/error``."""

from __future__ import annotations

from dataclasses import dataclass

from lmdm_bridge.wire.osc import Message
from lmdm_engine.stream.params import SessionParams

from .namespace import (AUDIO, CLOSE, COOKIE, ERROR, LIVE_FIELDS, MAX_ERROR_TEXT, MAX_SESSION_ID_BYTES, OPEN, PARAM,
                        PING, REPLY_SUFFIX, REQUESTS, RESET, STATUS, STYLE_PREFIX, ErrorCode, ProtocolError, brief,
                        expect_count, read_int, read_pairs, read_session, read_str, reply_address)


def flatten(pairs: dict) -> tuple:
    return tuple(item for key, value in pairs.items() for item in (key, value))


def open_reply(session: str, latency_samples: int, info: dict, address: str = OPEN) -> Message:
    """Answer to open (and to reset, with ``address=RESET``): the latency, then facts as key value pairs."""
    return Message(reply_address(address), (session, int(latency_samples), *flatten(info)))


def params_pairs(preset: str, params: SessionParams) -> dict:
    """A session's preset name and live parameters as key value pairs (style as ``style.<tag>``)."""
    pairs = {"preset": preset}
    pairs.update({key: getattr(params, key) for key in LIVE_FIELDS})
    pairs.update({STYLE_PREFIX + tag: weight for tag, weight in params.style.items()})
    return pairs


def params_reply(session: str, preset: str, params: SessionParams, address: str = PARAM) -> Message:
    """Answer to param (and preset): the session's parameters after the change."""
    return Message(reply_address(address), (session, *flatten(params_pairs(preset, params))))


def close_reply(session: str, counts: dict) -> Message:
    return Message(reply_address(CLOSE), (session, *flatten(counts)))


def ping_reply(args: tuple) -> Message:
    return Message(reply_address(PING), tuple(args))


def status_reply(info: dict) -> Message:
    return Message(reply_address(STATUS), flatten(info))


def cookie_reply(session: str, cookie: str) -> Message:
    """UDP: the answer to an open without a valid cookie (small: it may go to an address that never asked)."""
    return Message(COOKIE, (session, cookie))


def error_message(error: ProtocolError) -> Message:
    """The error as sent: short whatever the request held (the message cut to MAX_ERROR_TEXT characters)."""
    text = str(error)
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT - 3] + "..."
    session = error.session if len(error.session.encode()) <= MAX_SESSION_ID_BYTES else brief(error.session)
    return Message(ERROR, (int(error.code), error.code.name.lower(), session, int(error.seq), text))


@dataclass(slots=True)  # not frozen, as AudioChunk
class AudioReply:
    session: str
    seq: int
    frame_offset: int
    total_frames: int
    flags: int  # BlockFlag bits, as read (a BlockFlag is built once per block, by whoever needs one)
    samples: bytes | memoryview  # a view of its packet when read by read_audio_packet


@dataclass(frozen=True)
class InfoReply:
    """Answer to open, reset, param, preset, close, ping or status: ``request`` is the request's address (or
    ``COOKIE`` for a cookie answer to an open over UDP)."""

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
    where = f"reply {brief(address)}"
    if address == ERROR:
        expect_count(args, 5, "code, name, session, seq, message", where)
        return ErrorReply(read_int(args[0], "code", where), read_str(args[1], "name", where),
                          read_str(args[2], "session", where), read_int(args[3], "seq", where),
                          read_str(args[4], "message", where))
    if address == reply_address(AUDIO):
        expect_count(args, 6, "session, seq, frame_offset, total_frames, flags, samples", where)
        if not isinstance(args[5], bytes):
            raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: samples must be a blob")
        return AudioReply(read_str(args[0], "session", where), read_int(args[1], "seq", where),
                          read_int(args[2], "frame_offset", where), read_int(args[3], "total_frames", where),
                          read_int(args[4], "flags", where), args[5])
    if address == COOKIE:
        expect_count(args, 2, "session, cookie", where)
        session = read_session(args, where)
        return InfoReply(COOKIE, session, {"cookie": read_str(args[1], "cookie", where)}, args)
    request = address[: -len(REPLY_SUFFIX)] if address.endswith(REPLY_SUFFIX) else ""
    if request not in REQUESTS:
        raise ProtocolError(ErrorCode.UNKNOWN_ADDRESS, f"{where} is not a bridge reply")
    if request in (PING, STATUS):
        session, rest = "", args
    else:
        session = read_session(args, where)
        rest = args[1:]
        if request in (OPEN, RESET):
            rest = ("latency_samples", *rest)
    values = read_pairs(rest, where, session) if request != PING else {}
    return InfoReply(request, session, values, args)
