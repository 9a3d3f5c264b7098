"""The strict OSC codec: round trips, interoperability with python-osc, and rejection of malformed packets."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from lmdm_bridge.wire.osc import Message, OscDecodeError, decode_message, decode_packet, encode_message

osc_args = st.lists(st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.integers(2**31, 2**62),
    st.floats(width=32, allow_nan=False),
    st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20),
    st.binary(max_size=40),
    st.booleans(),
    st.none(),
), max_size=8)


@given(args=osc_args)
@settings(max_examples=150, deadline=None)
def test_round_trip(args):
    message = Message("/lmdm/test", tuple(args))
    packet = encode_message(message)
    assert len(packet) % 4 == 0
    assert decode_packet(packet) == [message]


def test_doubles_keep_every_bit():
    packet = encode_message(Message("/x", (0.1, 2)), doubles=True)
    assert decode_message(packet).args == (0.1, 2)
    assert decode_message(encode_message(Message("/x", (0.1,)))).args[0] == pytest.approx(0.1, abs=1e-8)


def test_reads_python_osc_messages_and_bundles():
    builder = OscMessageBuilder("/lmdm/open")
    for value, tag in (("a", "s"), (48000, "i"), (2, "i"), (0.5, "f"), (0.25, "d"), (b"\x01\x02\x03", "b"),
                       (True, "T"), (None, "N"), (2**40, "h")):
        builder.add_arg(value, tag)
    msg = builder.build()
    assert decode_message(msg.dgram).args == ("a", 48000, 2, 0.5, 0.25, b"\x01\x02\x03", True, None, 2**40)
    bundle = OscBundleBuilder(IMMEDIATELY)
    bundle.add_content(msg)
    bundle.add_content(OscMessageBuilder("/lmdm/ping").build())
    assert [m.address for m in decode_packet(bundle.build().dgram)] == ["/lmdm/open", "/lmdm/ping"]


def test_python_osc_reads_ours():
    audio = np.arange(6, dtype="<f4").tobytes()
    parsed = OscMessage(encode_message(Message("/lmdm/audio/reply", ("a", 3, 0, 3, 1, audio))))
    assert parsed.address == "/lmdm/audio/reply"
    assert parsed.params == ["a", 3, 0, 3, 1, audio]


def _string(text: bytes) -> bytes:
    return text + b"\0" * (4 - len(text) % 4)


@pytest.mark.parametrize("packet, complaint", [
    (b"", "no NUL terminator"),
    (b"/abc", "no NUL terminator"),
    (_string(b"abc") + _string(b","), "does not start with '/'"),
    (_string(b"/a"), "no type tag string"),
    (_string(b"/a") + _string(b"i"), "does not start with ','"),
    (_string(b"/a") + _string(b",i"), "runs past the end"),
    (_string(b"/a") + _string(b",b") + struct.pack(">i", 100) + b"1234", "claims 100 bytes"),
    (_string(b"/a") + _string(b",b") + struct.pack(">i", -4), "claims -4 bytes"),
    (_string(b"/a") + _string(b",r") + b"\0\0\0\0", "unsupported OSC type tag 'r'"),
    (_string(b"/a") + _string(b",i") + b"\0\0\0\1" + b"\0\0\0\0", "4 trailing bytes"),
    (_string(b"/a") + _string(b",s") + b"\xff\xfe\0\0", "not UTF-8"),
    (_string(b"/a") + b"\0", "not a multiple of 4"),
    (b"#bundle\0" + b"\0" * 8 + struct.pack(">i", 7) + b"\0" * 8, "bad size 7"),
    (b"#bundle\0" + b"\0" * 4, "shorter than its header"),
])
def test_rejects_malformed_packets_with_a_reason(packet, complaint):
    with pytest.raises(OscDecodeError, match=complaint):
        decode_packet(packet)


def test_bundle_nesting_and_size_are_bounded():
    inner = encode_message(Message("/a"))
    for _ in range(5):
        inner = b"#bundle\0" + b"\0" * 8 + struct.pack(">i", len(inner)) + inner
    with pytest.raises(OscDecodeError, match="nested deeper"):
        decode_packet(inner)
    one = encode_message(Message("/a"))
    many = b"#bundle\0" + b"\0" * 8 + (struct.pack(">i", len(one)) + one) * 300
    with pytest.raises(OscDecodeError, match="more than 256 messages"):
        decode_packet(many)


def test_encoding_refuses_what_osc_cannot_carry():
    with pytest.raises(ValueError, match="start with '/'"):
        encode_message(Message("lmdm"))
    with pytest.raises(TypeError, match="cannot encode list"):
        encode_message(Message("/a", ([1],)))
    with pytest.raises(ValueError, match="NUL"):
        encode_message(Message("/a", ("x\0y",)))


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_bytes_decode_or_raise_decode_error(data):
    try:
        decode_packet(data)
    except OscDecodeError:
        pass
