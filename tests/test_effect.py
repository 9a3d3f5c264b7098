"""GenerativeDelay: a pedalboard-style effect whose streamed output equals its whole-buffer output, with chains."""

import numpy as np
import pytest

from lmdm_engine.core.audio import tone
from lmdm_engine.io.chains import ChainError, EffectChain, build_board, parse_plugin_text
from lmdm_engine.io.effect import GenerativeDelay
from lmdm_engine.io.presets import PresetError
from lmdm_engine.runtime.interface import DEFAULT_BACKEND
from lmdm_engine.stream.session import Session

from conftest import preset_params

RATE = 44100
FAST = dict(delay_seconds=0.1, steps=2)  # within the debug model's delay range
PRE = [parse_plugin_text("HighpassFilter(cutoff_frequency_hz=150)"), parse_plugin_text("Distortion(drive_db=12)")]
POST = [parse_plugin_text("Reverb(room_size=0.6, wet_level=0.3)"), parse_plugin_text("Limiter(threshold_db=-3)")]


def streamed(effect, audio, sizes, sample_rate=RATE):
    out, start, i = [], 0, 0
    while start < audio.shape[-1]:
        n = sizes[i % len(sizes)]
        out.append(effect.process(audio[..., start: start + n], sample_rate, reset=start == 0))
        start, i = start + n, i + 1
    return np.concatenate(out, -1)


def test_streamed_equals_whole_buffer(debug_runtime):
    audio = tone(0.6, RATE)
    effect = GenerativeDelay("tape_echo", runtime=debug_runtime, **FAST)
    whole = effect(audio, RATE)
    assert whole.shape == audio.shape and whole.dtype == np.float32 and np.isfinite(whole).all()
    assert np.abs(whole - audio).max() > 1e-3  # it does something
    np.testing.assert_array_equal(streamed(effect, audio, [512, 1, 3001]), whole)
    chunks = [audio[:, i: i + 4096] for i in range(0, audio.shape[1], 4096)]
    np.testing.assert_array_equal(np.concatenate(list(effect.render(chunks, RATE)), 1), whole)


def test_mono_one_dimensional_audio_stays_one_dimensional(debug_runtime):
    audio = tone(0.3, RATE, channels=1)[0]
    effect = GenerativeDelay("tape_echo", runtime=debug_runtime, **FAST)
    out = effect(audio, RATE)
    assert out.shape == audio.shape
    np.testing.assert_array_equal(out, effect(audio[None], RATE)[0])


def test_preset_chains_equal_the_stages_one_after_another(debug_runtime):
    audio = tone(0.6, RATE)
    chained = GenerativeDelay("glass_bells", runtime=debug_runtime, pre=PRE, post=POST, **FAST)
    model_only = GenerativeDelay("glass_bells", runtime=debug_runtime, **FAST)
    expected = build_board(POST)(model_only(build_board(PRE)(audio, RATE), RATE), RATE)
    # equal to float rounding: pedalboard's IIR filters differ by ~1e-11 between buffer sizes, the model grows that
    np.testing.assert_allclose(chained(audio, RATE), expected, atol=1e-5)
    np.testing.assert_allclose(streamed(chained, audio, [1000, 4096, 17]), expected, atol=1e-5)
    # the same stages as a list of boards and an effect give the same again
    helper = EffectChain([build_board(PRE), GenerativeDelay("glass_bells", runtime=debug_runtime, **FAST),
                          build_board(POST)])
    np.testing.assert_allclose(streamed(helper, audio, [2048]), expected, atol=1e-5)


def test_more_than_two_channels_are_mono_tracks(debug_runtime):
    audio = tone(0.4, RATE, channels=3)
    out = GenerativeDelay("tape_echo", runtime=debug_runtime, **FAST)(audio, RATE)
    mono = GenerativeDelay("tape_echo", runtime=debug_runtime, **FAST)
    for c in range(3):
        np.testing.assert_array_equal(out[c], mono(audio[c], RATE))


def test_new_sessions_when_rate_or_channels_change_or_on_reset(debug_runtime):
    effect = GenerativeDelay("tape_echo", runtime=debug_runtime, **FAST)
    stereo, at_48k = tone(0.3, RATE), tone(0.3, 48000)
    effect.process(stereo, RATE)
    fresh = GenerativeDelay("tape_echo", runtime=debug_runtime, **FAST)
    np.testing.assert_array_equal(effect.process(at_48k, 48000), fresh(at_48k, 48000))
    np.testing.assert_array_equal(effect.process(stereo[:1], RATE), fresh(stereo[:1], RATE))
    effect.process(stereo, RATE)
    continued = effect.process(stereo, RATE)
    assert np.abs(continued - fresh(stereo, RATE)).max() > 1e-4  # without a reset it carries on
    np.testing.assert_array_equal(effect.process(stereo, RATE, reset=True), fresh(stereo, RATE))
    effect.reset()
    np.testing.assert_array_equal(effect.process(stereo, RATE), fresh(stereo, RATE))


def test_latency_is_the_sessions(debug_runtime):
    effect = GenerativeDelay("tape_echo", runtime=debug_runtime, **FAST)
    with pytest.raises(RuntimeError, match="known once process"):
        effect.latency_samples
    effect(tone(0.1, RATE), RATE)
    assert effect.latency_samples == Session(debug_runtime, RATE, 2, preset_params("tape_echo", **FAST)).latency_samples
    assert effect.reported_latency_samples == 0


@pytest.mark.parametrize("audio, words", [
    (np.zeros((4410, 2), np.float32), ["channels first", "(4410, 2)"]),
    (np.zeros((1, 2, 100), np.float32), ["[channels, frames]", "(1, 2, 100)"]),
    (np.zeros((2, 100), np.int16), ["float audio", "int16"]),
])
def test_bad_audio_gets_a_clear_error(debug_runtime, audio, words):
    effect = GenerativeDelay("tape_echo", runtime=debug_runtime, **FAST)
    with pytest.raises(ValueError) as info:
        effect(audio, RATE)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_bad_parameters_fail_at_construction(debug_runtime):
    with pytest.raises(PresetError, match="'mix' = 3.0 is out of range"):
        GenerativeDelay("tape_echo", runtime=debug_runtime, mix=3.0)
    with pytest.raises(PresetError, match=r"field 'post\[0\]': Reverb has no parameter 'size'"):
        GenerativeDelay("tape_echo", runtime=debug_runtime, post=[{"plugin": "Reverb", "size": 1}])
    with pytest.raises(ChainError, match=r"preset 'tape_echo': post\[0\]: Reverb\(room_size=2\)"):
        GenerativeDelay("tape_echo", runtime=debug_runtime, post=[{"plugin": "Reverb", "room_size": 2}])


def test_shipped_model_loads_on_first_use():
    effect = GenerativeDelay("pluck_slapback")
    out = effect(tone(0.3, RATE), RATE)
    assert out.shape == (2, int(0.3 * RATE)) and np.isfinite(out).all()
    assert effect.runtime.name == DEFAULT_BACKEND
