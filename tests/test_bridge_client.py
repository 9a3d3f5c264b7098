"""BridgeEffect, the Pedalboard-style effect on a bridge: same output as a local Session, same call shapes."""

import numpy as np
import pytest

from lmdm_bridge import BlockFlag, BridgeClient, BridgeEffect
from lmdm_engine.core.audio import tone
from lmdm_engine.stream.session import Session

from conftest import debug_torch_runtime, preset_params
from test_bridge_support import DELAY, running_bridge


@pytest.fixture(scope="module")
def bridge(debug_runtime):
    with running_bridge(debug_runtime) as thread:
        yield thread


def local(runtime, rate, channels, **params):
    return Session(runtime, rate, channels, preset_params("glass_bells", delay_seconds=DELAY, **params))


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_effect_equals_a_local_session_for_the_same_input_and_seed(bridge, debug_runtime, transport):
    x = tone(1.5, 44100, seed=3)
    address = bridge.server.tcp_address if transport == "tcp" else bridge.server.udp_address
    # one block in flight: a burst of five datagrams fits any default UDP receive buffer
    with BridgeEffect(*address, "glass_bells", transport=transport, block_seconds=0.1, window=1, delay_seconds=DELAY,
                      seed=7, strength=0.8) as effect:
        wet = effect(x, 44100)
        assert wet.shape == x.shape and wet.dtype == np.float32 and effect.flags == 0
        np.testing.assert_array_equal(wet, local(debug_runtime, 44100, 2, seed=7, strength=0.8).process(x))
        assert effect.latency_samples == local(debug_runtime, 44100, 2).latency_samples
        again = effect(x, 44100)  # __call__ starts from a fresh session, like a Pedalboard plugin
        np.testing.assert_array_equal(again, wet)


def test_streaming_chunks_carry_on_and_reset_starts_over(bridge, debug_runtime):
    x = tone(1.0, 48000, seed=4)
    with BridgeEffect(*bridge.server.tcp_address, "glass_bells", delay_seconds=DELAY) as effect:
        pieces = [effect.process(x[:, a:b], 48000) for a, b in ((0, 1000), (1000, 1001), (1001, 30000),
                                                                 (30000, 48000))]
        np.testing.assert_array_equal(np.concatenate(pieces, 1), local(debug_runtime, 48000, 2).process(x))
        restarted = effect.process(x[:, :5000], 48000, reset=True)
        np.testing.assert_array_equal(restarted, local(debug_runtime, 48000, 2).process(x[:, :5000]))


def test_mono_1d_and_a_new_sample_rate_reopen_the_session(bridge, debug_runtime):
    mono = tone(0.5, 22050, channels=1)[0]
    with BridgeEffect(*bridge.server.tcp_address, "glass_bells", delay_seconds=DELAY) as effect:
        out = effect(mono, 22050)
        assert out.shape == mono.shape
        np.testing.assert_array_equal(out, local(debug_runtime, 22050, 1).process(mono[None])[0])
        stereo = tone(0.5, 16000)
        np.testing.assert_array_equal(effect(stereo, 16000), local(debug_runtime, 16000, 2).process(stereo))
        with pytest.raises(ValueError, match=r"\[channels, frames\] with 1 or 2 channels"):
            effect(np.zeros((3, 100), np.float32), 16000)


def test_client_calls_and_flags(bridge):
    with BridgeClient(*bridge.server.tcp_address) as client:
        info = client.open("c", 16000, 1, 1600, "glass_bells", delay_seconds=DELAY)
        assert info.latency_samples > 0 and info.values["deadline_ms"] == pytest.approx(100.0)  # one block
        block = np.zeros((1, 1600), np.float32)
        block[0, 5] = np.nan
        assert client.process("c", block).flags == BlockFlag.BAD_INPUT
        assert client.ping(1.5, "x") == (1.5, "x")
        assert client.status()["sessions"] >= 1
        assert client.reset("c").latency_samples == info.latency_samples
        with pytest.raises(ValueError, match=r"shape \[1, 1..1600\]"):
            client.send_block("c", np.zeros((1, 1601), np.float32))
        assert client.close("c")["bad_input"] == 1


def test_jam_and_a_live_prompt_over_the_bridge_equal_a_local_session():
    """Jamming and text prompts through the bridge, on a tiny text + jamming model: the same audio as a local
    Session given the same parameter change at the same block."""
    from lmdm_engine.core.conditioning import TEXT_ENCODER

    from conftest import random_model

    runtime = debug_torch_runtime(random_model(3, text_dim=384, text_encoder=TEXT_ENCODER, accompaniment=True))
    x = tone(1.2, 48000, seed=5)
    half = x.shape[1] // 2
    with running_bridge(runtime) as thread:
        with BridgeEffect(*thread.server.tcp_address, "jam_drums", block_seconds=0.1, delay_seconds=DELAY) as effect:
            first = effect.process(x[:, :half], 48000)
            effect.client.set_params(effect.session, prompt="bright glassy bells", mode="delay", strength=0.7)
            second = effect.process(x[:, half:], 48000)
            assert effect.flags == 0
    session = Session(runtime, 48000, 2, preset_params("jam_drums", delay_seconds=DELAY))
    want_first = session.process(x[:, :half])
    session.set_params(prompt="bright glassy bells", mode="delay", strength=0.7)
    np.testing.assert_array_equal(first, want_first)
    np.testing.assert_array_equal(second, session.process(x[:, half:]))
    unchanged = Session(runtime, 48000, 2, preset_params("jam_drums", delay_seconds=DELAY))
    unchanged.process(x[:, :half])
    assert not np.allclose(second, unchanged.process(x[:, half:]))  # the change really reached the engine
