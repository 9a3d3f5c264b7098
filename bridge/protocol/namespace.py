"""The bridge's OSC namespace (bridge/PROTOCOL.md): addresses, limits, error codes, reply flags, and the readers of
arguments that every request and reply parser shares (errors name the argument at fault). No sockets."""

from __future__ import annotations

import enum

from lmdm_engine.stream.params import PARAM_SPECS, SessionParams

PREFIX = "/lmdm"
OPEN, AUDIO, PARAM, PRESET, RESET, CLOSE, PING, STATUS = (
    f"{PREFIX}/{verb}" for verb in ("open", "audio", "param", "preset", "reset", "close", "ping", "status"))
REQUESTS = (OPEN, AUDIO, PARAM, PRESET, RESET, CLOSE, PING, STATUS)
ERROR = f"{PREFIX}/error"
# UDP: the answer to an open that carries no (or a stale) cookie: ``s session s cookie``; the host sends the same open
# again with ``"cookie" <cookie>``, which proves it receives what is sent to its (reply) address
COOKIE = f"{PREFIX}/cookie"
REPLY_SUFFIX = "/reply"
MAX_SESSION_ID_BYTES = 64
# host rates the bridge takes: a session's set-up cost grows with rate / gcd(rate, model rate), which is small for
# these and can reach seconds for odd rates (e.g. 96001 Hz)
SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000)
STYLE_PREFIX = "style."
# Session parameters a host sets one value at a time; the style goes tag by tag, as style.<tag>.
LIVE_FIELDS = tuple(name for name in PARAM_SPECS if name in SessionParams.LIVE and name != "style")
MAX_PROMPT_BYTES = 512
MAX_ERROR_TEXT = 240  # an error's message is cut to this many characters: errors never echo large arguments
BRIEF_CHARS = 40  # an argument quoted in an error is cut to this many characters


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
    OVER_QUOTA = 14  # a peer's or the server's quota (bytes in flight, compute) is reached


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


def type_name(value) -> str:
    return {bytes: "blob", str: "string", bool: "boolean", type(None): "nil"}.get(type(value), type(value).__name__)


def brief(value) -> str:
    """``repr(value)`` cut to BRIEF_CHARS characters (a blob by its size): what errors quote of an argument."""
    if isinstance(value, (bytes, bytearray)):
        return f"<blob of {len(value)} bytes>"
    text = repr(value)
    return text if len(text) <= BRIEF_CHARS else f"{text[:BRIEF_CHARS]}... ({len(text)} characters)"


def read_int(value, what: str, where: str) -> int:
    """Ints, and floats holding a whole number (Max and Pure Data send numbers as floats)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: {what} = {brief(value)} ({type_name(value)}); "
                                                     "expected an int")
    return value


def read_float(value, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: {what} = {brief(value)} ({type_name(value)}); "
                                                     "expected a number")
    return float(value)


def read_str(value, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: {what} = {brief(value)} ({type_name(value)}); "
                                                     "expected a string")
    return value


def read_session(args: tuple, where: str) -> str:
    if not args:
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: missing the session id (first argument)")
    session = read_str(args[0], "session", where)
    if not session or len(session.encode()) > MAX_SESSION_ID_BYTES or not session.isprintable():
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: session id {brief(session)} must be 1 to "
                                                     f"{MAX_SESSION_ID_BYTES} bytes of printable text")
    return session


def expect_count(args: tuple, n: int, names: str, where: str, session: str = "") -> None:
    if len(args) != n:
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: expected {n} arguments ({names}), got {len(args)}",
                            session)


def read_pairs(args: tuple, where: str, session: str) -> dict:
    """Trailing ``key value`` arguments as a dict."""
    if len(args) % 2:
        raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: options must come in key value pairs; "
                                                     f"{len(args)} arguments left", session)
    out = {}
    for key, value in zip(args[::2], args[1::2]):
        key = read_str(key, "option key", where)
        if key in out:
            raise ProtocolError(ErrorCode.BAD_ARGUMENTS, f"{where}: option {brief(key)} given twice", session)
        out[key] = value
    return out
