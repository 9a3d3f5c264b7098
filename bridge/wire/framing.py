"""OSC packet framing on a byte stream (TCP), both ways the OSC specs define it. No sockets here.

- OSC 1.0: each packet is preceded by its size as a big-endian int32 (``LengthPrefixFraming``).
- OSC 1.1: each packet is SLIP-encoded (RFC 1055) between END bytes, double-ended (``SlipFraming``).

A decoder is fed bytes as they arrive, in pieces of any size, and returns the complete packets. A frame larger
than ``max_packet`` bytes is skipped without buffering it, and a ``FramingError`` takes its place in the output,
so one bad frame never stalls or desynchronises the stream. ``detect_framing`` picks the framing from a
connection's first byte: a size prefix starts with 0x00 (packets are smaller than 16 MiB), SLIP with END (0xC0)
or directly with an OSC packet's '/' or '#'.
"""

from __future__ import annotations

import struct

_SIZE = struct.Struct(">i")

SLIP_END, SLIP_ESC, SLIP_ESC_END, SLIP_ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD
_END, _ESC = bytes([SLIP_END]), bytes([SLIP_ESC])
_ESCAPED_END, _ESCAPED_ESC = bytes([SLIP_ESC, SLIP_ESC_END]), bytes([SLIP_ESC, SLIP_ESC_ESC])


class FramingError(ValueError):
    """A frame that could not be read (too large, or a bad SLIP escape); the stream goes on after it."""


class LengthPrefixFraming:
    """OSC 1.0 stream framing: int32 big-endian size, then the packet."""

    name = "length-prefix"

    def __init__(self, max_packet: int):
        self.max_packet = max_packet
        self._buffer = bytearray()
        self._skip = 0  # bytes of an oversized frame still to discard

    header_size = 4  # bytes a packet built for ``frame`` leaves free in front

    @staticmethod
    def encode(packet: bytes) -> bytes:
        return _SIZE.pack(len(packet)) + packet

    @staticmethod
    def frame(buffer: bytearray) -> bytearray:
        """A packet built after ``header_size`` free bytes, framed in place (no copy of the packet)."""
        _SIZE.pack_into(buffer, 0, len(buffer) - 4)
        return buffer

    def feed(self, data: bytes) -> list[bytes | FramingError]:
        """Packets completed by ``data``, with a FramingError in place of each skipped frame. Raises
        FramingError for a negative size: there is no size to skip by, so the stream cannot go on."""
        out: list[bytes | FramingError] = []
        view = memoryview(data)
        if self._skip:
            dropped = min(self._skip, len(view))
            self._skip -= dropped
            view = view[dropped:]
        buf = self._buffer
        # frames are read straight from ``data`` when nothing is buffered (a whole packet in one read: one copy,
        # into the packet), else from the buffer; only what is left over is buffered
        if buf:
            buf += view
            src = memoryview(buf)
        else:
            src = view
        pos = 0
        try:
            while len(src) - pos >= 4:
                size = _SIZE.unpack_from(src, pos)[0]
                if size < 0:
                    raise FramingError(f"negative frame size {size}: not an OSC 1.0 length-prefixed stream")
                available = len(src) - pos - 4
                if size > self.max_packet:
                    out.append(FramingError(f"frame of {size} bytes is larger than the limit of {self.max_packet}"))
                    if available < size:
                        self._skip = size - available
                        pos = len(src)
                        break
                    pos += 4 + size
                    continue
                if available < size:
                    break
                if size:  # an empty frame carries no packet
                    out.append(bytes(src[pos + 4: pos + 4 + size]))
                pos += 4 + size
        finally:
            if src is not view:
                src.release()
        if src is view:
            buf += view[pos:]
        else:
            del buf[:pos]
        return out


class SlipFraming:
    """OSC 1.1 stream framing: SLIP (RFC 1055), double-ended (END before and after each packet)."""

    name = "slip"

    def __init__(self, max_packet: int):
        self.max_packet = max_packet
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already searched for END
        self._oversized = False  # inside a frame already reported as too large: discard up to its END

    header_size = 0  # escaping rewrites the packet anyway: nothing to leave free in front

    @staticmethod
    def encode(packet: bytes) -> bytes:
        return _END + packet.replace(_ESC, _ESCAPED_ESC).replace(_END, _ESCAPED_END) + _END

    @staticmethod
    def frame(buffer: bytearray) -> bytes:
        """The framed packet (see LengthPrefixFraming.frame)."""
        return SlipFraming.encode(bytes(buffer))

    @staticmethod
    def _unescape(frame: bytes) -> bytes:
        parts = frame.split(_ESC)
        out = [parts[0]]
        for part in parts[1:]:
            if not part or part[0] not in (SLIP_ESC_END, SLIP_ESC_ESC):
                raise FramingError("SLIP escape byte 0xDB not followed by 0xDC or 0xDD")
            out.append(_END if part[0] == SLIP_ESC_END else _ESC)
            out.append(part[1:])
        return b"".join(out)

    def feed(self, data: bytes) -> list[bytes | FramingError]:
        """Packets completed by ``data``, with a FramingError in place of each frame that could not be read."""
        out: list[bytes | FramingError] = []
        self._buffer += data
        # an escaped packet is at most twice its size: past that, no END can make the frame acceptable
        escaped_limit = 2 * self.max_packet
        while True:
            end = self._buffer.find(_END, self._scanned)
            if end < 0:
                self._scanned = len(self._buffer)
                if len(self._buffer) > escaped_limit:
                    if not self._oversized:
                        out.append(FramingError(f"SLIP frame is larger than the limit of {self.max_packet} bytes"))
                    self._oversized = True
                    self._buffer.clear()
                    self._scanned = 0
                return out
            frame = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._scanned = 0
            if self._oversized:
                self._oversized = False
                continue
            if not frame:  # the END opening a frame, or between two frames
                continue
            try:
                packet = self._unescape(frame)
            except FramingError as e:
                out.append(e)
                continue
            if len(packet) > self.max_packet:
                out.append(FramingError(f"frame of {len(packet)} bytes is larger than the limit of {self.max_packet}"))
                continue
            out.append(packet)


FRAMINGS = {"length-prefix": LengthPrefixFraming, "slip": SlipFraming}


def detect_framing(first_byte: int) -> type[LengthPrefixFraming] | type[SlipFraming]:
    """The framing a stream uses, from its first byte."""
    if first_byte == 0x00:
        return LengthPrefixFraming
    if first_byte in (SLIP_END, ord("/"), ord("#")):
        return SlipFraming
    raise FramingError(f"first byte 0x{first_byte:02X} starts neither an OSC 1.0 size prefix (0x00) "
                       "nor an OSC 1.1 SLIP frame (0xC0, '/' or '#')")
