"""The plugin's OSC codec (bridge/plugin/src/Osc.cpp) against the bridge's Python codec, byte for byte: what the
plugin encodes is what Python encodes, what Python encodes the plugin decodes to the same values, both refuse the
same malformed packets, and the stream framing cuts the same packets from the same bytes however they arrive."""

from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest

from plugin_support import TOOLS, build_plugin, python_osc, python_protocol

Message, encode_message, decode_packet, OscDecodeError, LengthPrefixFraming, FramingError = python_osc()
parse_request, open_reply = python_protocol()


@pytest.fixture(scope="module")
def codec():
    """The plugin's codec as a line-by-line process (tools/osc_check.cpp)."""
    build_plugin()
    process = subprocess.Popen([str(TOOLS / "osc_check")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(line: str) -> list[str]:
        process.stdin.write(line + "\n")
        process.stdin.flush()
        out = [process.stdout.readline().strip()]
        while line.startswith("F ") and not out[-1].startswith(("END", "X ")):
            out.append(process.stdout.readline().strip())
        return out

    yield ask
    process.stdin.close()
    process.wait(10)


def encode_line(address: str, args: tuple) -> str:
    tokens = []
    for value in args:
        if isinstance(value, int):
            tokens.append(f"i:{value & 0xFFFFFFFF:08x}")
        elif isinstance(value, np.float32):
            tokens.append(f"f:{struct.unpack('>I', struct.pack('>f', value))[0]:08x}")
        elif isinstance(value, str):
            tokens.append(f"s:{value.encode().hex()}")
        else:
            tokens.append(f"b:{bytes(value).hex()}")
    return " ".join(["E", address.encode().hex(), *tokens])


def python_values(packet: bytes) -> str:
    """Python's decoding of a packet, in osc_check's notation."""
    (message,) = decode_packet(packet)
    tokens = [message.address.encode().hex()]
    for value in message.args:
        if value is True or value is False or value is None:
            tokens.append({True: "T", False: "F", None: "N"}[value])
        elif isinstance(value, int):
            tokens.append(f"n:{value}")
        elif isinstance(value, float):
            tokens.append(f"r:{struct.pack('>d', value).hex()}")
        elif isinstance(value, str):
            tokens.append(f"s:{value.encode().hex()}")
        else:
            tokens.append(f"b:{value.hex()}")
    return "M " + " ".join(tokens)


samples = np.linspace(-1, 1, 2 * 37, dtype=np.float32).tobytes()
# what the plugin sends (src/Link.cpp): open with its options, audio blocks, parameter and preset changes, close
SENT = [  # the open's 2048: buffer_frames, the plugin's block (test_the_bridge_reads_the_plugins_open)
    ("/lmdm/open", ("lmdm-4242-1-1", 48000, 2, 2048, "glass_bells", "deadline_ms", np.float32(0.0),
                    "mix", np.float32(0.35), "strength", np.float32(0.2), "feedback", np.float32(0.45), "steps", 2,
                    "seed", 65535, "delay_seconds", np.float32(0.1), "mode", "delay", "token", "s3cr3t")),
    ("/lmdm/audio", ("lmdm-4242-1-1", 0, 0, 37, samples)),
    ("/lmdm/audio", ("a", 2**31 - 1, 7, 1, b"\x00\x00\x80\x7f")),  # largest seq; +inf as a sample
    ("/lmdm/param", ("lmdm-4242-1-2", "mix", np.float32(0.75), "mode", "jam", "seed", 0)),
    ("/lmdm/preset", ("lmdm-4242-1-2", "dark_pad_wash")),
    ("/lmdm/close", ("lmdm-4242-1-2",)),
    ("/lmdm/ping", (-1, -(2**31), np.float32("nan"), np.float32("-inf"), np.float32(1e-45), "", b"", "café ♪")),
    ("/x", ()),
    ("/lmdm/audio", ("abc", 1, 2, 3, b"\x01\x02\x03")),  # a blob that needs padding
]


@pytest.mark.parametrize("address,args", SENT, ids=[f"{a}-{i}" for i, (a, _) in enumerate(SENT)])
def test_the_plugin_encodes_what_python_encodes(codec, address, args):
    want = encode_message(Message(address, tuple(float(a) if isinstance(a, np.float32) else a for a in args)))
    (line,) = codec(encode_line(address, args))
    assert line == "P " + want.hex()


def test_a_length_prefixed_frame_is_the_packet_behind_its_size(codec):
    packet = encode_message(Message("/lmdm/ping", (42,)))
    framed = LengthPrefixFraming.encode(packet)
    assert framed.hex() == "00000014" + packet.hex()  # PROTOCOL.md's example, byte for byte
    assert codec("F " + framed.hex()) == ["P " + packet.hex(), "END"]


def test_the_bridge_reads_the_plugins_open():
    """The open the plugin sends is one the bridge's protocol takes, with the plugin's block as buffer_frames."""
    address, args = SENT[0]
    request = parse_request(Message(address, tuple(float(a) if isinstance(a, np.float32) else a for a in args)))
    assert (request.sample_rate, request.channels, request.buffer_frames, request.preset) == \
        (48000, 2, 2048, "glass_bells")
    assert request.params.fields["steps"] == 2 and request.deadline_ms == 0.0 and request.token == "s3cr3t"


# what the plugin reads: every reply the bridge sends, as Python encodes it (floats as float32, and as float64 from
# a client that sends doubles); the open reply as the bridge writes it, buffer_frames and its old name included
OPEN_INFO = {"sample_rate": 48000, "channels": 2, "buffer_frames": 2048, "block_frames": 2048,
             "model_sample_rate": 8000, "model_hop": 64, "runtime": "torch", "model": "debug",
             "max_packet_bytes": 1 << 20, "preset": "glass_bells", "delay_seconds": 0.10000000149011612,
             "model_block_frames": 13, "deadline_ms": 0.0}
REPLIES = [
    open_reply("lmdm-1-1-1", 5456, OPEN_INFO),
    Message("/lmdm/audio/reply", ("lmdm-1-1-1", 3, 0, 37, 9, samples)),
    Message("/lmdm/error", (7, "bad_parameter", "lmdm-1-1-1", -1,
                            "session parameters: field 'strength' = 2.0 is out of range [0.0, 1.0]")),
    Message("/lmdm/param/reply", ("s", "preset", "tape_echo", "mix", 0.5, "steps", 2, "style.bell", 1.0)),
    Message("/lmdm/close/reply", ("s", "blocks", 10, "processed", 9, "late", 1)),
    Message("/lmdm/ping/reply", (True, False, None, 2**40, -(2**63), "é", b"\xff" * 5)),
    Message("/lmdm/status/reply", ()),
]


@pytest.mark.parametrize("reply", REPLIES, ids=[m.address for m in REPLIES])
@pytest.mark.parametrize("doubles", [False, True], ids=["float32", "float64"])
def test_the_plugin_decodes_what_python_encodes(codec, reply, doubles):
    packet = encode_message(reply, doubles=doubles)
    assert codec("D " + packet.hex()) == [python_values(packet)]


def _good() -> bytes:
    return encode_message(Message("/lmdm/open/reply", ("s", 12, "x", 1.5, "b", b"abc")))


MALFORMED = {
    "empty": b"",
    "not a multiple of 4": _good()[:-1],
    "cut short": _good()[:-4],
    "no address terminator": b"/abc",
    "address without slash": b"abc\0,i\0\0\0\0\0\1",
    "no type tags": b"/ab\0",
    "type tags without comma": b"/ab\0i\0\0\0\0\0\0\1",
    "unknown type tag": b"/ab\0,x\0\0",
    "int past the end": b"/ab\0,i\0\0\0\0",
    "blob past the end": b"/ab\0,b\0\0\0\0\0\x10abcd",
    "negative blob size": b"/ab\0,b\0\0\xff\xff\xff\xffabcd",
    "trailing bytes": _good() + b"\0\0\0\0",
    "string not padded": b"/ab\0,s\0\0abcd",
    "string not UTF-8": b"/ab\0,s\0\0\xff\xfe\0\0",
    "overlong UTF-8": b"/ab\0,s\0\0\xc0\xaf\0\0",
    "surrogate in UTF-8": b"/ab\0,s\0\0\xed\xa0\x80\0",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_both_codecs_refuse_the_same_malformed_packets(codec, name):
    packet = MALFORMED[name]
    with pytest.raises(OscDecodeError):
        decode_packet(packet)
    (line,) = codec("D " + packet.hex())
    assert line.startswith("X "), line


def test_a_stream_in_any_pieces_gives_the_same_packets_as_python(codec):
    rng = np.random.default_rng(5)
    packets = [encode_message(m) for m in REPLIES] + [b""] + [encode_message(REPLIES[1])]
    stream = b"".join(LengthPrefixFraming.encode(p) for p in packets)
    want = [p for p in LengthPrefixFraming(1 << 20).feed(stream)]
    assert len(want) == len(packets) - 1  # the empty frame carries no packet
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, len(stream)), 12, replace=False))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        assert codec("F " + ",".join(c.hex() for c in chunks)) == [*("P " + p.hex() for p in want), "END"]


def test_a_negative_frame_size_stops_the_stream_in_both(codec):
    stream = struct.pack(">i", -1) + b"\0" * 8
    with pytest.raises(FramingError):
        LengthPrefixFraming(1 << 20).feed(stream)
    lines = codec("F " + stream.hex())
    assert len(lines) == 1 and lines[0].startswith("X frame size -1"), lines


def test_an_oversized_frame_is_refused_by_both(codec):
    """Python's server skips it and reads on; the plugin, a client of one server, drops the connection instead."""
    stream = struct.pack(">i", (1 << 20) + 4) + b"\0" * 8
    assert isinstance(LengthPrefixFraming(1 << 20).feed(stream)[0], FramingError)
    lines = codec("F " + stream.hex())
    assert len(lines) == 1 and lines[0].startswith("X frame size 1048580"), lines
