"""Audio requests and replies read straight from their packets: the fast path for nearly all of the traffic."""

from __future__ import annotations

import struct

from lmdm_bridge.wire.blocks import audio_head
from lmdm_bridge.wire.osc import pad4

from .namespace import AUDIO, MAX_SESSION_ID_BYTES, reply_address
from .replies import AudioReply
from .requests import AudioChunk, valid_cookie

_AUDIO_REQUEST_HEAD = audio_head(AUDIO, 3)
_AUDIO_REQUEST_COOKIE_HEAD = audio_head(AUDIO, 3, cookie=True)  # the same with a trailing cookie (UDP)
_AUDIO_REPLY_HEAD = audio_head(reply_address(AUDIO), 4)
_REQUEST_NUMBERS = struct.Struct(">iiii")  # seq, frame_offset, total_frames, blob size
_REPLY_NUMBERS = struct.Struct(">iiiii")  # seq, frame_offset, total_frames, flags, blob size


def read_audio_packet(packet: bytes, reply: bool = False) -> AudioChunk | AudioReply | None:
    """An audio request (an audio reply with ``reply``) read straight from a packet that is exactly one such
    message in the layout OSC encoders write for it (int32 numbers, a blob). Audio is nearly all the traffic, and
    over UDP a block is tens of packets; this reads them 3 times faster than ``decode_packet`` and
    ``parse_request`` / ``parse_reply``, with the same result. None for anything else (a bundle, numbers sent as
    floats, another message, any fault), which those then read and report. The samples are a view of the packet,
    not a copy of them (the assembler copies them once, into the block)."""
    if type(packet) is not bytes:
        packet = bytes(packet)
    head, numbers = (_AUDIO_REPLY_HEAD, _REPLY_NUMBERS) if reply else (_AUDIO_REQUEST_HEAD, _REQUEST_NUMBERS)
    with_cookie = False
    if not packet.startswith(head):
        if reply or not packet.startswith(_AUDIO_REQUEST_COOKIE_HEAD):
            return None
        head, with_cookie = _AUDIO_REQUEST_COOKIE_HEAD, True
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
    cookie = None
    if size < 0:
        return None
    if with_cookie:  # the cookie: a string after the blob, ending the packet
        start = blob + pad4(size)
        stop = packet.find(b"\0", start)
        if stop < 0 or pad4(stop + 1) != len(packet):
            return None
        try:
            cookie = packet[start: stop].decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not valid_cookie(cookie):
            return None
    elif blob + pad4(size) != len(packet):
        return None
    samples = memoryview(packet)[blob: blob + size]
    if reply:
        seq, offset, total, flags = values
        return AudioReply(session, seq, offset, total, flags, samples)
    if not session or end - len(head) > MAX_SESSION_ID_BYTES or not session.isprintable():
        return None
    return AudioChunk(session, *values, samples, cookie)
