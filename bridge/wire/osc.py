"""A small, strict OSC 1.0 codec: bytes <-> ``Message`` (no sockets, no framing).

Strict means every packet is either decoded completely or rejected with one exception type, ``OscDecodeError``,
whose message says what is wrong and where: missing NUL terminators, sizes past the end, unknown type tags and
trailing bytes are all errors. The bridge decodes untrusted bytes with it, so nothing else may escape it.

Type tags read: ``i`` int32, ``h`` int64, ``f`` float32, ``d`` float64, ``s``/``S`` string, ``b`` blob,
``T``/``F`` booleans, ``N`` nil. Bundles (``#bundle``) are unpacked into their messages (time tags ignored:
everything runs on arrival). Written: ``i`` (or ``h`` past int32), ``f`` (or ``d`` with ``doubles=True``), ``s``,
``b``, ``T``/``F``, ``N``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

BUNDLE_TAG = b"#bundle\0"
MAX_BUNDLE_DEPTH = 4
MAX_MESSAGES_PER_PACKET = 256

_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_FLOAT32 = struct.Struct(">f")
_FLOAT64 = struct.Struct(">d")
_FIXED_SIZE = {"i": (_INT32, 4), "h": (_INT64, 8), "f": (_FLOAT32, 4), "d": (_FLOAT64, 8)}
_NO_DATA = {"T": True, "F": False, "N": None}


class OscDecodeError(ValueError):
    """Bytes that are not a valid OSC packet; the message says what and at which byte offset."""


@dataclass(frozen=True)
class Message:
    """One OSC message: an address and its arguments (int, float, str, bytes, bool or None)."""

    address: str
    args: tuple = ()


def pad4(n: int) -> int:
    return (n + 3) & ~3


# ---- encoding -------------------------------------------------------------------------------------
def encode_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    if b"\0" in raw:
        raise ValueError(f"OSC strings cannot hold NUL characters: {text!r}")
    return raw + b"\0" * (pad4(len(raw) + 1) - len(raw))


def _encode_arg(value, doubles: bool) -> tuple[str, bytes]:
    if value is None:
        return "N", b""
    if isinstance(value, (bool, np.bool_)):
        return ("T" if value else "F"), b""
    if isinstance(value, (int, np.integer)):
        value = int(value)
        if -(2**31) <= value < 2**31:
            return "i", _INT32.pack(value)
        return "h", _INT64.pack(value)
    if isinstance(value, (float, np.floating)):
        return ("d", _FLOAT64.pack(float(value))) if doubles else ("f", _FLOAT32.pack(float(value)))
    if isinstance(value, str):
        return "s", encode_string(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return "b", _INT32.pack(len(data)) + data + b"\0" * (pad4(len(data)) - len(data))
    raise TypeError(f"cannot encode {type(value).__name__} {value!r} as an OSC argument")


def encode_message(message: Message, doubles: bool = False) -> bytes:
    """The message as one OSC packet; floats as float32 (what every OSC host reads), or float64 with ``doubles``."""
    if not message.address.startswith("/"):
        raise ValueError(f"OSC addresses start with '/', got {message.address!r}")
    tags, parts = [","], []
    for value in message.args:
        tag, data = _encode_arg(value, doubles)
        tags.append(tag)
        parts.append(data)
    return b"".join([encode_string(message.address), encode_string("".join(tags)), *parts])


# ---- decoding -------------------------------------------------------------------------------------
def _read_string(data: bytes, pos: int, what: str) -> tuple[str, int]:
    end = data.find(b"\0", pos)
    if end < 0:
        raise OscDecodeError(f"{what} at byte {pos} has no NUL terminator")
    nxt = pad4(end + 1)
    if nxt > len(data):
        raise OscDecodeError(f"{what} at byte {pos} is not padded to a multiple of 4 bytes")
    try:
        return data[pos:end].decode("utf-8"), nxt
    except UnicodeDecodeError:
        raise OscDecodeError(f"{what} at byte {pos} is not UTF-8 text") from None


def _read_arg(tag: str, data: bytes, pos: int):
    if tag in _NO_DATA:
        return _NO_DATA[tag], pos
    if tag in _FIXED_SIZE:
        codec, size = _FIXED_SIZE[tag]
        if pos + size > len(data):
            raise OscDecodeError(f"argument '{tag}' at byte {pos} runs past the end of the packet")
        return codec.unpack_from(data, pos)[0], pos + size
    if tag in "sS":
        return _read_string(data, pos, "string argument")
    if tag == "b":
        if pos + 4 > len(data):
            raise OscDecodeError(f"blob size at byte {pos} runs past the end of the packet")
        size = _INT32.unpack_from(data, pos)[0]
        start = pos + 4
        if size < 0 or start + pad4(size) > len(data):
            raise OscDecodeError(f"blob at byte {pos} claims {size} bytes; the packet holds {len(data) - start}")
        return data[start: start + size], start + pad4(size)
    raise OscDecodeError(f"unsupported OSC type tag {tag!r}")


def decode_message(data: bytes) -> Message:
    """One OSC message from exactly these bytes."""
    address, pos = _read_string(data, 0, "address")
    if not address.startswith("/"):
        raise OscDecodeError(f"address {address[:64]!r} does not start with '/'")
    if pos == len(data):
        raise OscDecodeError(f"message {address[:64]!r} has no type tag string")
    tags, pos = _read_string(data, pos, "type tag string")
    if not tags.startswith(","):
        raise OscDecodeError(f"type tag string {tags[:64]!r} does not start with ','")
    args = []
    for tag in tags[1:]:
        value, pos = _read_arg(tag, data, pos)
        args.append(value)
    if pos != len(data):
        raise OscDecodeError(f"{len(data) - pos} trailing bytes after the arguments of {address[:64]!r}")
    return Message(address, tuple(args))


def _decode_into(data: bytes, out: list[Message], depth: int) -> None:
    if not data.startswith(BUNDLE_TAG):
        if len(out) >= MAX_MESSAGES_PER_PACKET:
            raise OscDecodeError(f"packet holds more than {MAX_MESSAGES_PER_PACKET} messages")
        out.append(decode_message(data))
        return
    if depth >= MAX_BUNDLE_DEPTH:
        raise OscDecodeError(f"bundles nested deeper than {MAX_BUNDLE_DEPTH}")
    pos = len(BUNDLE_TAG) + 8  # skip the time tag
    if pos > len(data):
        raise OscDecodeError("bundle is shorter than its header")
    while pos < len(data):
        if pos + 4 > len(data):
            raise OscDecodeError(f"bundle element size at byte {pos} runs past the end")
        size = _INT32.unpack_from(data, pos)[0]
        pos += 4
        if size <= 0 or size % 4 or pos + size > len(data):
            raise OscDecodeError(f"bundle element at byte {pos - 4} has a bad size {size}")
        _decode_into(data[pos: pos + size], out, depth + 1)
        pos += size


def decode_packet(data: bytes) -> list[Message]:
    """The messages of one OSC packet (a message, or a bundle of them)."""
    if len(data) % 4:
        raise OscDecodeError(f"packet size {len(data)} is not a multiple of 4")
    out: list[Message] = []
    _decode_into(data if type(data) is bytes else bytes(data), out, 0)
    return out
