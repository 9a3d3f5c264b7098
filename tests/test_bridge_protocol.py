"""The OSC namespace: requests parsed with errors naming the argument at fault, replies built and read back."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmdm_bridge.protocol.namespace import AUDIO, OPEN, BlockFlag, ErrorCode, ProtocolError, reply_address
from lmdm_bridge.protocol.packets import read_audio_packet
from lmdm_bridge.protocol.replies import (AudioReply, ErrorReply, InfoReply, error_message, open_reply, params_reply,
                                          parse_reply)
from lmdm_bridge.protocol.requests import (AudioChunk, LiveParams, OpenRequest, ParamRequest, PingRequest,
                                           StatusRequest, parse_request)
from lmdm_bridge.wire.blocks import audio_messages, audio_packets
from lmdm_bridge.wire.osc import Message, OscDecodeError, decode_packet, encode_message
from lmdm_engine.io.presets import load_preset


def parse(address, *args):
    return parse_request(Message(address, args))


def test_open_with_options_and_parameters():
    r = parse(OPEN, "track 1", 48000.0, 2, 24000, "glass_bells", "token", "t", "deadline_ms", 250, "reply_port",
              9001, "strength", 1, "steps", 4.0, "sampler", "euler", "style.pad", 1)
    assert r == OpenRequest("track 1", 48000, 2, 24000, "glass_bells",
                            LiveParams({"strength": 1.0, "steps": 4, "sampler": "euler"}, {"pad": 1.0}),
                            "t", 250.0, 9001)
    assert parse(OPEN, "a", 44100, 1, 512, "").preset is None  # the server's default preset


@pytest.mark.parametrize("args, code, complaint", [
    ((), ErrorCode.BAD_ARGUMENTS, "missing the session id"),
    (("",), ErrorCode.BAD_ARGUMENTS, "must be 1 to 64 bytes"),
    (("a" * 65,), ErrorCode.BAD_ARGUMENTS, "must be 1 to 64 bytes"),
    (("a", 48000, 2), ErrorCode.BAD_ARGUMENTS, "expected 5 arguments"),
    (("a", "fast", 2, 512, ""), ErrorCode.BAD_ARGUMENTS, "sample_rate = 'fast' \\(string\\); expected an int"),
    (("a", 48000, 3, 512, ""), ErrorCode.BAD_ARGUMENTS, "channels = 3; expected 1 or 2"),
    (("a", 96001, 2, 512, ""), ErrorCode.BAD_ARGUMENTS, "sample_rate = 96001; the bridge takes 8000, 11025"),
    (("a", 48000, 2, 0, ""), ErrorCode.BAD_ARGUMENTS, "buffer_frames = 0"),
    (("a", 48000, 2, 512, "", "mix"), ErrorCode.BAD_ARGUMENTS, "key value pairs"),
    (("a", 48000, 2, 512, "", "mix", 0.5, "mix", 0.2), ErrorCode.BAD_ARGUMENTS, "'mix' given twice"),
    (("a", 48000, 2, 512, "", "strenght", 0.5), ErrorCode.BAD_PARAMETER, "'strenght' is not a live parameter"),
    (("a", 48000, 2, 512, "", "steps", 2.5), ErrorCode.BAD_ARGUMENTS, "steps = 2.5 \\(float\\); expected an int"),
    (("a", 48000, 2, 512, "", "deadline_ms", -1), ErrorCode.BAD_ARGUMENTS, "deadline_ms = -1.0"),
    (("a", 48000, 2, 512, "", "reply_port", 70000), ErrorCode.BAD_ARGUMENTS, "reply_port = 70000"),
    (("a", 48000, 2, 512, "", "name", "x"), ErrorCode.BAD_PARAMETER, "'name' is not a live parameter"),
])
def test_open_errors_name_the_argument(args, code, complaint):
    with pytest.raises(ProtocolError, match=complaint) as info:
        parse(OPEN, *args)
    assert info.value.code == code


def test_audio_and_other_requests():
    assert parse(AUDIO, "a", 7, 0, 3, b"\0" * 24) == AudioChunk("a", 7, 0, 3, b"\0" * 24)
    with pytest.raises(ProtocolError, match="samples = \\(string\\); expected a blob") as info:
        parse(AUDIO, "a", 7, 0, 3, "oops")
    assert (info.value.session, info.value.seq) == ("a", 7)
    assert parse("/lmdm/param", "a", "mix", 1) == ParamRequest("a", LiveParams({"mix": 1.0}))
    with pytest.raises(ProtocolError, match="at least one key value pair"):
        parse("/lmdm/param", "a")
    assert parse("/lmdm/ping", 1, "x") == PingRequest((1, "x"))
    assert parse("/lmdm/status") == StatusRequest(None)
    with pytest.raises(ProtocolError, match="unknown address '/lmdm/opne'") as info:
        parse("/lmdm/opne")
    assert info.value.code == ErrorCode.UNKNOWN_ADDRESS


def test_audio_messages_split_to_the_packet_limit_and_read_back():
    audio = np.random.default_rng(0).standard_normal((2, 24000)).astype(np.float32)  # 0.5 s stereo 48 kHz
    messages = audio_messages("/lmdm/audio/reply", "track", 5, audio, int(BlockFlag.LATE), max_packet=8192)
    assert all(len(encode_message(m)) <= 8192 for m in messages) and len(messages) == 24
    replies = [parse_reply(m) for m in messages]
    assert all(isinstance(r, AudioReply) and r.flags == BlockFlag.LATE and r.total_frames == 24000 for r in replies)
    joined = np.frombuffer(b"".join(r.samples for r in replies), "<f4").reshape(-1, 2).T
    np.testing.assert_array_equal(joined, audio)
    (whole,) = audio_messages(AUDIO, "track", 5, audio)
    assert parse_request(whole) == AudioChunk("track", 5, 0, 24000, whole.args[4])


def test_replies_read_back():
    opened = parse_reply(open_reply("a", 1234, {"model_sample_rate": 22050}))
    assert opened == InfoReply(OPEN, "a", {"latency_samples": 1234, "model_sample_rate": 22050}, opened.args)
    params = parse_reply(params_reply("a", "glass_bells", load_preset("glass_bells").params))
    assert params.values["preset"] == "glass_bells" and params.values["steps"] == load_preset("glass_bells").steps
    assert all(isinstance(v, (int, float, str)) for v in params.values.values())
    error = parse_reply(error_message(ProtocolError(ErrorCode.BAD_AUDIO, "bad", "a", 3)))
    assert error == ErrorReply(8, "bad_audio", "a", 3, "bad")


@pytest.mark.parametrize("flags, max_packet, reserve", [(None, None, 0), (5, None, 4), (0, 8192, 0), (None, 600, 4)])
@pytest.mark.parametrize("channels, seq", [(1, 3), (2, 2**31 + 7)])
def test_audio_packets_are_the_encoded_audio_messages(flags, max_packet, reserve, channels, seq):
    """The transports' fast path writes exactly the bytes of encoding audio_messages, samples interleaved."""
    audio = np.random.default_rng(seq).standard_normal((channels, 3001))  # float64: cast to float32 on the way
    expected = [encode_message(m, doubles=True) for m in audio_messages(AUDIO, "tr", seq, audio, flags, max_packet)]
    packets = audio_packets(AUDIO, "tr", seq, audio, flags, max_packet, reserve=reserve)
    assert [bytes(p[reserve:]) for p in packets] == expected
    assert all(isinstance(p, bytearray) and not any(p[:reserve]) for p in packets)


def test_prompt_mode_and_guidance_are_live_parameters():
    from lmdm_bridge.protocol.namespace import PARAM

    r = parse(PARAM, "a", "prompt", "bright glassy bells", "mode", "jam", "guidance", 2)
    assert r.params == LiveParams({"prompt": "bright glassy bells", "mode": "jam", "guidance": 2.0}, {})
    for bad in ("x" * 513, "bells\x00"):
        with pytest.raises(ProtocolError, match="prompt: expected at most 512 bytes of printable text") as e:
            parse(PARAM, "a", "prompt", bad)
        assert e.value.code == ErrorCode.BAD_PARAMETER
    with pytest.raises(ProtocolError, match="'description' is not a live parameter"):
        parse(PARAM, "a", "description", "no")


# ---- audio read straight from the packet --------------------------------------------------------------------------
def generic_read(packet: bytes, reply: bool):
    """What decode_packet and parse_request / parse_reply make of a packet; None where they reject it."""
    try:
        messages = decode_packet(packet)
        if len(messages) != 1:
            return None
        return parse_reply(messages[0]) if reply else parse_request(messages[0])
    except (OscDecodeError, ProtocolError):
        return None


int32 = st.integers(-2**31, 2**31 - 1)
sessions = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=70)
samples = st.binary(max_size=64)


@given(session=sessions, numbers=st.tuples(int32, int32, int32), flags=st.one_of(st.none(), int32), blob=samples)
@settings(max_examples=300, deadline=None, derandomize=True)
def test_audio_read_from_the_packet_equals_the_generic_reading(session, numbers, flags, blob):
    """Every audio message an encoder writes (any session text, any int32s, any blob): the same request or reply as
    the generic path, or None exactly where the generic path rejects it (and reports why)."""
    reply = flags is not None
    args = (session, *numbers, *([flags] if reply else []), blob)
    packet = encode_message(Message(reply_address(AUDIO) if reply else AUDIO, args))
    assert read_audio_packet(packet, reply) == generic_read(packet, reply)


@given(edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
       cut=st.integers(0, 12), grow=st.binary(max_size=8), reply=st.booleans())
@settings(max_examples=300, deadline=None, derandomize=True)
def test_damaged_audio_packets_are_read_like_the_generic_path_or_left_to_it(edits, cut, grow, reply):
    audio = np.arange(2 * 9, dtype=np.float32).reshape(2, 9)
    (packet,) = audio_packets(reply_address(AUDIO) if reply else AUDIO, "trk", 7, audio, 0 if reply else None)
    for at, value in edits:
        if at < len(packet):
            packet[at] = value
    packet = bytes(packet[: len(packet) - cut]) + grow
    fast = read_audio_packet(packet, reply)
    assert fast is None or fast == generic_read(packet, reply)


def test_audio_the_fast_reading_leaves_to_the_generic_path():
    """Numbers sent as floats (Max, Pure Data), a seq past int32, a bundle, another message: None, and the generic
    path reads them."""
    blob = np.zeros(4, "<f4").tobytes()
    as_floats = encode_message(Message(AUDIO, ("t", 1.0, 0.0, 2.0, blob)))
    past_int32 = encode_message(Message(AUDIO, ("t", 2**31, 0, 2, blob)))
    bundle = b"#bundle\0" + bytes(8) + len(as_floats).to_bytes(4, "big") + as_floats
    for packet in (as_floats, past_int32, bundle, encode_message(Message("/lmdm/ping", ()))):
        assert read_audio_packet(packet) is None
    assert generic_read(as_floats, False) == AudioChunk("t", 1, 0, 2, blob)
    assert read_audio_packet(bytearray(as_floats)) is None and read_audio_packet(memoryview(past_int32)) is None


@pytest.mark.parametrize("cookie", ["é" * 16, "", "c" * 65, "tab\there"])
def test_cookies_must_be_printable_ascii_on_the_fast_and_the_generic_path(cookie):
    blob = np.zeros(4, "<f4").tobytes()
    audio = encode_message(Message(AUDIO, ("t", 1, 0, 2, blob, cookie)))
    assert read_audio_packet(audio) is None  # left to the generic path, which says why
    for message in (decode_packet(audio)[0], Message("/lmdm/close", ("t", cookie)),
                    Message(OPEN, ("t", 48000, 2, 512, "", "cookie", cookie))):
        with pytest.raises(ProtocolError, match="cookie .* must be 1 to 64 printable ASCII characters") as info:
            parse_request(message)
        assert (info.value.code, info.value.session) == (ErrorCode.BAD_ARGUMENTS, "t")
    assert read_audio_packet(encode_message(Message(AUDIO, ("t", 1, 0, 2, blob, "0f" * 8)))).cookie == "0f" * 8
