"""The OSC namespace: requests parsed with errors naming the argument at fault, replies built and read back."""

import numpy as np
import pytest

from lmdm_engine.presets import load_preset
from lmdm_bridge.osc import Message, encode_message
from lmdm_bridge.protocol import (AUDIO, OPEN, AudioChunk, AudioReply, BlockFlag, ErrorCode, ErrorReply, InfoReply,
                                  LiveParams, OpenRequest, ParamRequest, PingRequest, ProtocolError, StatusRequest,
                                  audio_messages, audio_packets, error_message, open_reply, params_reply, parse_reply,
                                  parse_request)


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
    (("a", 48000, 2, 0, ""), ErrorCode.BAD_ARGUMENTS, "block_frames = 0"),
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
    params = parse_reply(params_reply("a", load_preset("glass_bells")))
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
    packets = audio_packets(AUDIO, "tr", seq, audio, flags, max_packet, doubles=True, reserve=reserve)
    assert [bytes(p[reserve:]) for p in packets] == expected
    assert all(isinstance(p, bytearray) and not any(p[:reserve]) for p in packets)


def test_prompt_mode_and_guidance_are_live_parameters():
    from lmdm_bridge.protocol import PARAM

    r = parse(PARAM, "a", "prompt", "bright glassy bells", "mode", "jam", "guidance", 2)
    assert r.params == LiveParams({"prompt": "bright glassy bells", "mode": "jam", "guidance": 2.0}, {})
    for bad in ("x" * 513, "bells\x00"):
        with pytest.raises(ProtocolError, match="prompt: expected at most 512 bytes of printable text") as e:
            parse(PARAM, "a", "prompt", bad)
        assert e.value.code == ErrorCode.BAD_PARAMETER
    with pytest.raises(ProtocolError, match="'description' is not a live parameter"):
        parse(PARAM, "a", "description", "no")
