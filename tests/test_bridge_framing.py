"""TCP stream framing: OSC 1.0 length prefix and OSC 1.1 SLIP, fed in arbitrary pieces."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmdm_bridge.wire.framing import SLIP_END, SLIP_ESC, FramingError, LengthPrefixFraming, SlipFraming, detect_framing

FRAMINGS = [LengthPrefixFraming, SlipFraming]
# packets full of the bytes SLIP must escape
packets = st.lists(st.binary(min_size=1, max_size=64).map(lambda b: b + bytes([SLIP_END, SLIP_ESC])), max_size=6)


def feed_in_pieces(decoder, stream: bytes, cuts: list[int]) -> list:
    out, last = [], 0
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [len(stream)]:
        out += decoder.feed(stream[last:cut])
        last = cut
    return out


@pytest.mark.parametrize("framing", FRAMINGS)
@given(packets=packets, cuts=st.lists(st.integers(0, 10_000), max_size=10))
@settings(max_examples=100, deadline=None)
def test_packets_survive_any_split(framing, packets, cuts):
    stream = b"".join(framing.encode(p) for p in packets)
    assert feed_in_pieces(framing(1024), stream, cuts) == packets


def test_slip_escapes_and_double_ends():
    assert SlipFraming.encode(b"a\xc0b\xdbc") == b"\xc0a\xdb\xdcb\xdb\xddc\xc0"
    assert SlipFraming(100).feed(b"\xc0\xc0/x\xc0") == [b"/x"]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_oversized_frames_are_skipped_and_the_stream_goes_on(framing):
    decoder = framing(16)
    stream = framing.encode(b"/small") + framing.encode(b"/" + b"x" * 40) + framing.encode(b"/after")
    out = feed_in_pieces(decoder, stream, [3, 10, 30])
    assert out[0] == b"/small" and out[2] == b"/after"
    assert isinstance(out[1], FramingError) and "larger than the limit of 16" in str(out[1])


def test_length_prefix_skips_an_oversized_frame_without_buffering_it():
    decoder = LengthPrefixFraming(16)
    assert isinstance(decoder.feed(struct.pack(">i", 10_000_000))[0], FramingError)
    for _ in range(100):
        assert decoder.feed(b"\0" * 100_000) == []
    assert len(decoder._buffer) == 0
    assert decoder.feed(LengthPrefixFraming.encode(b"/ok")) == [b"/ok"]  # exactly 10,000,000 bytes skipped


def test_slip_drops_an_endless_frame_without_buffering_it():
    decoder = SlipFraming(16)
    errors = sum(len(decoder.feed(b"x" * 1000)) for _ in range(50))
    assert errors == 1 and len(decoder._buffer) <= 1000
    assert decoder.feed(b"\xc0" + SlipFraming.encode(b"/ok")) == [b"/ok"]


def test_slip_bad_escape_is_reported_and_skipped():
    out = SlipFraming(100).feed(b"\xc0/a\xdbX\xc0" + SlipFraming.encode(b"/b"))
    assert isinstance(out[0], FramingError) and "escape" in str(out[0])
    assert out[1:] == [b"/b"]


def test_negative_length_cannot_be_resynchronised():
    with pytest.raises(FramingError, match="negative frame size"):
        LengthPrefixFraming(100).feed(b"\xff\xff\xff\xf0")


def test_detect_framing_from_the_first_byte():
    assert detect_framing(0x00) is LengthPrefixFraming
    assert detect_framing(SLIP_END) is SlipFraming
    assert detect_framing(ord("/")) is SlipFraming
    with pytest.raises(FramingError, match="0x47"):
        detect_framing(ord("G"))  # e.g. an HTTP request


@pytest.mark.parametrize("framing", FRAMINGS)
def test_decoders_keep_no_view_of_the_bytes_fed(framing):
    """Clients read into one reused buffer and feed views of it: what a decoder keeps must be its own copy."""
    packets = [b"/a\0\0" * 3, b"/b\0\0" * 5, b"/c\0\0" * 2]
    stream = b"".join(framing.encode(p) for p in packets)
    buffer = bytearray(stream)
    decoder, out = framing(1024), []
    for start, end in ((0, 7), (7, len(stream) - 3), (len(stream) - 3, len(stream))):
        piece = bytearray(buffer[start:end])
        out += decoder.feed(memoryview(piece))
        piece[:] = b"\xff" * len(piece)  # the reader's buffer is overwritten by the next read
    assert out == packets and all(type(p) is bytes for p in out)
