"""The generative-delay Session: buffer-size independence, latency, robustness, parameters, bounded state."""

import resource
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmdm_engine.core.audio import tone
from lmdm_engine.core.codec import Codec, StreamingCodec
from lmdm_engine.core.conditioning import PROMPT_CROSSFADE_BLOCKS
from lmdm_engine.core.resample import resample
from lmdm_engine.runtime.torch import TorchRuntime
from lmdm_engine.stream.session import Session, wet_padding

from conftest import Recording, debug_torch_runtime, envelope_lag, preset_params, random_model

SR = 48000


def run(session, audio, buffer):
    return np.concatenate([session.process(audio[:, i:i + buffer]) for i in range(0, audio.shape[1], buffer)], 1)


def make(runtime, sample_rate=SR, channels=2, **params):
    base = dict(delay_seconds=0.1, strength=0.6, feedback=0.3, mix=0.7, steps=2)
    return Session(runtime, sample_rate, channels, preset_params("tape_echo", **{**base, **params}))


@pytest.mark.parametrize("buffer", [1, 64, 65, 512, 8193])
def test_output_does_not_depend_on_host_buffer_size(debug_runtime, buffer):
    seconds = 0.25 if buffer == 1 else 0.6
    audio = tone(seconds, SR)
    block = make(debug_runtime).block_frames * debug_runtime.config.hop * SR // debug_runtime.config.sample_rate
    whole_blocks = run(make(debug_runtime), audio, block)
    out = run(make(debug_runtime), audio, buffer)
    assert out.shape == audio.shape
    assert make(debug_runtime).latency_samples < audio.shape[1]  # the comparison covers generated audio
    np.testing.assert_array_equal(out, whole_blocks)


@pytest.mark.parametrize("sample_rate", [8000, 44100, 48000])
def test_strength_zero_is_a_pure_delay_of_latency_samples(debug_runtime, sample_rate):
    """Strength 0: the echo is the input through the codec, latency_samples late (the codec rebuilds phases from
    magnitudes, so it is the codec's round trip that lands there, not the waveform)."""
    s = make(debug_runtime, sample_rate, channels=1, strength=0.0, feedback=0.0, mix=1.0)
    audio = tone(1.0, sample_rate, channels=1)
    if sample_rate != debug_runtime.config.sample_rate:  # keep the test signal inside the model's band
        audio = tone(1.0, sample_rate, channels=1, seed=3) * 0 + _lowpassed(audio, sample_rate)
    out = s.process(audio)
    lat = s.latency_samples
    if sample_rate == debug_runtime.config.sample_rate:
        heard = StreamingCodec(debug_runtime.codec, 1)
        roundtrip = heard.decode(heard.encode(audio[:, : audio.shape[1] // debug_runtime.config.hop
                                                    * debug_runtime.config.hop]))
        n = min(roundtrip.shape[1] - debug_runtime.config.codec_latency, out.shape[1] - lat)
        np.testing.assert_allclose(out[:, lat:lat + n], roundtrip[:, debug_runtime.config.codec_latency:][:, :n],
                                   atol=1e-5)
    else:  # through the resamplers the echo lands at latency_samples within 1 ms (a mis-trimmed codec latency: 4)
        lag, match = envelope_lag(out[0, lat:], audio[0, :-lat], sample_rate, sample_rate // 100)
        assert abs(lag) <= sample_rate // 1000 and match > 0.5


def _lowpassed(audio, sample_rate):
    spec = np.fft.rfft(audio, axis=1)
    freqs = np.fft.rfftfreq(audio.shape[1], 1 / sample_rate)
    spec[:, freqs > 3000] = 0
    return np.fft.irfft(spec, audio.shape[1], axis=1).astype(np.float32)


@pytest.mark.parametrize("sample_rate", [48000, 44100, 1000])
def test_latency_samples_is_exact_through_the_resamplers(debug_runtime, sample_rate):
    """Strength 0 through resamplers: the output is the codec's round trip of the input at the model rate (after
    the silent first block) resampled back and delayed by the padding, so an input sample's echo lands at
    padding + (delay + codec latency) * host / model host samples (the resamplers are time-aligned; tested in
    test_resample.py), and latency_samples is that rounded to a whole sample."""
    cfg, rate = debug_runtime.config, debug_runtime.config.sample_rate
    s = make(debug_runtime, sample_rate, channels=1, strength=0.0, feedback=0.0, mix=1.0)
    audio = tone(1.0, sample_rate, channels=1)
    out = s.process(audio)
    block = s.block_frames * cfg.hop
    model_in = resample(audio, sample_rate, rate)
    codec = StreamingCodec(debug_runtime.codec, 1)
    heard = codec.decode(codec.encode(model_in[:, : model_in.shape[1] // block * block]))
    wet = resample(np.concatenate([np.zeros((1, block), np.float32), heard], 1), rate, sample_rate)
    pad = wet_padding(sample_rate, rate)
    n = min(out.shape[1], pad + wet.shape[1]) - pad
    # float rounding, blocked against whole, can flip a near tie in the decoder's peak picking: up to 5.6e-5 seen
    # (OpenBLAS 0.3.31); a one-sample misalignment of these notes is 2e-3 or more
    np.testing.assert_allclose(out[:, pad:pad + n], wet[:, :n], atol=1e-4)
    assert not out[:, :pad].any()
    exact = pad + (block + cfg.codec_latency) * sample_rate / rate
    assert abs(s.latency_samples - exact) <= 0.5


def test_no_alias_of_an_11_5_khz_probe_through_a_session():
    """48 kHz host, a 22,050 Hz model, strength 0: the echo is the codec's round trip of the input resampled down
    and back up. An 11.5 kHz sine would fold to 10,550 Hz (pedalboard's resampler let it through at -34 dB); it
    stays below -90 dB. The codec (fitted on tones at both frequencies) does carry a 10,550 Hz tone, so a real
    alias would show."""
    model = random_model(sample_rate=22050, n_fft=1024, hop=512, latent_size=32)
    t = np.arange(2 * 22050) / 22050
    clips = [a * np.sin(2 * np.pi * 1000 * t) + b * np.sin(2 * np.pi * 10550 * t)
             for a in (0.0, 0.5) for b in (0.0, 1e-4, 1e-2, 0.3)]
    runtime = TorchRuntime(model, Codec.fit(model.config, [c.astype(np.float32) for c in clips]), "cpu")
    s = make(runtime, SR, channels=1, strength=0.0, feedback=0.0, mix=1.0)
    t = np.arange(2 * SR) / SR

    def level_at_10550(audio):
        s.reset()
        echo = s.process(audio.astype(np.float32)[None])[0, SR:]  # a whole second: 1 Hz bins
        return 20 * np.log10(np.abs(np.fft.rfft(echo))[10550] * 2 / SR / 0.5 + 1e-30)

    assert level_at_10550(0.5 * np.sin(2 * np.pi * 11500 * t)) < -90
    assert level_at_10550(0.5 * 0.01 * np.sin(2 * np.pi * 10550 * t)) > -70  # a tone at -40 dB comes back


@pytest.mark.parametrize("kind", ["silence", "clipping", "nan_inf", "dc", "huge"])
def test_one_buffer_in_one_finite_buffer_out(debug_runtime, kind):
    s = make(debug_runtime)
    n = 3000
    audio = {
        "silence": np.zeros((2, n), np.float32),
        "clipping": np.sign(tone(n / SR, SR)).astype(np.float32),
        "nan_inf": tone(n / SR, SR),
        "dc": np.full((2, n), 0.8, np.float32),
        "huge": tone(n / SR, SR) * 1e6,
    }[kind]
    if kind == "nan_inf":
        audio[0, ::7], audio[1, ::11] = np.nan, np.inf
        audio[0, 5] = -np.inf
    for _ in range(4):
        out = s.process(audio)
        assert out.shape == audio.shape and out.dtype == np.float32
        assert np.isfinite(out).all()
    if kind == "nan_inf":
        assert s.input_faults == 4
    assert np.isfinite(s.process(tone(0.2, SR))).all()  # and the session goes on


def test_bad_shapes_raise_value_error(debug_runtime):
    s = make(debug_runtime)
    with pytest.raises(ValueError, match=r"shape \[2, frames\]"):
        s.process(np.zeros((1, 100), np.float32))
    with pytest.raises(ValueError, match=r"shape \[2, frames\]"):
        s.process(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="float"):
        s.process(np.zeros((2, 100), np.int16))
    mono = make(debug_runtime, channels=1)
    out = mono.process(np.zeros(100, np.float32))
    assert out.shape == (100,)
    with pytest.raises(ValueError, match="channels"):
        Session(debug_runtime, SR, 3)
    with pytest.raises(ValueError, match="sample_rate"):
        Session(debug_runtime, 0, 2)
    with pytest.raises(ValueError, match="delay_seconds=1.0 is outside"):
        make(debug_runtime, delay_seconds=1.0)


def test_style_change_mid_stream_does_not_corrupt_the_cache(debug_runtime):
    """With no feedback the cache holds the input only: after a style change the cache equals that of a session
    that had the new style from the start, and so does every echo generated once the cross-fade is over. (The
    decoded audio differs: the codec's decoder carries the running phase of all earlier echoes.)"""
    audio = tone(1.0, SR)
    a = make(debug_runtime, feedback=0.0, mix=1.0, style={"bell": 1.0})
    b = make(debug_runtime, feedback=0.0, mix=1.0, style={"pad": 1.0, "dark": 0.5})
    half = audio.shape[1] // 2
    a.process(audio[:, :half])
    b.process(audio[:, :half])
    a.set_params(style={"pad": 1.0, "dark": 0.5})
    blocks_before = a.blocks_processed
    for i in range(half, audio.shape[1], 2000):
        a.process(audio[:, i:i + 2000])
        b.process(audio[:, i:i + 2000])
        if a.blocks_processed > blocks_before:
            if a.blocks_processed > blocks_before + PROMPT_CROSSFADE_BLOCKS - 1:
                np.testing.assert_array_equal(a._echo, b._echo)
            else:
                assert not np.array_equal(a._echo, b._echo)  # mid-fade
            for name, tensor in a._stream.state.items():
                assert torch.equal(tensor, b._stream.state[name]), name
    assert a.blocks_processed > blocks_before + PROMPT_CROSSFADE_BLOCKS


def test_parameter_changes_mid_stream(debug_runtime):
    s = make(debug_runtime, mix=0.0)
    audio = tone(1.5, SR)
    out = [s.process(audio[:, :20000])]
    frames = s.block_frames
    s.set_params(delay_seconds=0.125, strength=0.9, steps=3, sampler="euler", seed=5, mix=1.0, feedback=0.8)
    assert s.params.sampler == "euler"
    out.append(s.process(audio[:, 20000:]))
    assert s.block_frames != frames
    y = np.concatenate(out, 1)
    assert y.shape == audio.shape and np.isfinite(y).all()
    with pytest.raises(ValueError, match="strength"):
        s.set_params(strength=2.0)
    with pytest.raises(ValueError, match="unknown tag .kazoo"):
        s.set_params(style={"kazoo": 1.0})
    assert s.params.strength == 0.9  # a rejected change leaves the parameters as they were


def test_mix_ramps_without_a_click(debug_runtime):
    """Mix 0 -> 1 on a DC input with a silent wet path: the output falls along a 10 ms ramp, no step."""
    s = make(debug_runtime, channels=1, mix=0.0, strength=0.0, feedback=0.0)
    dc = np.ones((1, 4000), np.float32)
    s.process(dc[:, :100])
    s.set_params(mix=1.0)
    out = s.process(dc[:, :200])[0]  # the wet path is still silent (first block)
    assert np.max(np.abs(np.diff(out))) <= 1.0 / (0.01 * SR) + 1e-6
    assert out[-1] < out[0]


def test_reset_reproduces_the_output(debug_runtime):
    s = make(debug_runtime)
    audio = tone(0.5, SR)
    first = s.process(audio)
    s.reset()
    np.testing.assert_array_equal(s.process(audio), first)


def test_five_thousand_blocks_with_bounded_state(debug_runtime):
    cfg = debug_runtime.config
    s = Session(debug_runtime, cfg.sample_rate, 1, preset_params("tape_echo", delay_seconds=0.1, strength=0.5, steps=1))
    block = s.block_frames * cfg.hop
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((1, block * 50))).astype(np.float32)

    def state_sizes():
        return ({k: v.shape for k, v in s._stream.state.items()}, s._context.shape, s._to_model._buf.shape,
                s._wet._buf.shape, len(s._wet))

    for _ in range(10):
        s.process(audio)
    sizes, rss = state_sizes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    while s.blocks_processed < 5000:
        assert np.isfinite(s.process(audio)).all()
    assert state_sizes() == sizes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 50_000  # KiB


def test_session_module_does_not_import_torch():
    code = "import sys, lmdm_engine.stream.session, lmdm_engine.io.presets, lmdm_engine.core.codec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_runtime_concat_and_split_states_round_trip(debug_runtime):
    rt = debug_runtime
    a = rt.append_context(rt.new_state(1), np.random.default_rng(0).standard_normal((1, 5, rt.config.latent_dim)).astype(np.float32))
    b = rt.append_context(rt.new_state(2), np.random.default_rng(1).standard_normal((2, 3, rt.config.latent_dim)).astype(np.float32))
    both = rt.concat_states([a, b])
    x = np.random.default_rng(2).standard_normal((3, 4, rt.config.latent_dim)).astype(np.float32)
    style = np.zeros((3, len(rt.config.style_vocab)), np.float32)
    v = rt.velocity(both, x, 0.5, style)
    np.testing.assert_allclose(v[:1], rt.velocity(a, x[:1], 0.5, style[:1]), atol=1e-5)
    np.testing.assert_allclose(v[1:], rt.velocity(b, x[1:], 0.5, style[1:]), atol=1e-5)
    a2, b2 = rt.split_state(both, [1, 2])
    for name in a:
        np.testing.assert_array_equal(np.asarray(a2[name]), np.asarray(a[name]))
        np.testing.assert_array_equal(np.asarray(b2[name]), np.asarray(b[name]))


def test_importing_the_engine_keeps_numpy_blas_to_one_thread():
    """The codec's small matrix products gain nothing from BLAS threads, which only steal the other cores."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    code = "import lmdm_bridge, os; print(os.environ['OPENBLAS_NUM_THREADS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_importing_the_engine_after_numpy_still_limits_blas_to_one_thread():
    """A program that loaded numpy first (its OpenBLAS already has a thread per core) gets one thread too: those
    threads busy-wait between a Session's products and held a whole core (the bridge benchmark's tail)."""
    import os
    import subprocess
    import sys

    settings = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in settings}
    code = ("import numpy; from threadpoolctl import threadpool_info; "
            "before = [i['num_threads'] for i in threadpool_info() if i['internal_api'] == 'openblas']; "
            "import lmdm_engine; "
            "after = [i['num_threads'] for i in threadpool_info() if i['internal_api'] == 'openblas']; "
            "print(before, after)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    before, after = out.stdout.strip().split("] [")
    assert after.strip("[]") == "1", out.stdout
    if (os.cpu_count() or 1) > 1:
        assert before.strip("[]") != "1", out.stdout  # numpy's own default, so the test shows a change


# ---- jam mode --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jam_runtime():

    from conftest import random_model

    return debug_torch_runtime(random_model(4, accompaniment=True))


def make_jam(runtime, channels=1, **params):
    rate = runtime.config.sample_rate
    base = dict(delay_seconds=0.1, mix=1.0, steps=2, mode="jam", style={"drums": 1.0})
    return Session(runtime, rate, channels, preset_params("tape_echo", **{**base, **params}))


def test_jam_needs_a_jamming_model(debug_runtime):
    with pytest.raises(ValueError, match="field 'mode' = 'jam' needs a jamming model"):
        make_jam(debug_runtime)
    s = make(debug_runtime)
    with pytest.raises(ValueError, match="field 'mode'"):
        s.set_params(mode="jam")
    assert s.params.mode == "delay"


@pytest.mark.parametrize("buffer", [1, 64, 65, 8193])
def test_jam_is_one_in_one_out_and_plays_a_block_ahead(jam_runtime, buffer):
    rate = jam_runtime.config.sample_rate
    audio = tone(1.0 if buffer == 1 else 2.0, rate)
    block = make_jam(jam_runtime, 2).block_frames * jam_runtime.config.hop
    out = run(make_jam(jam_runtime, 2), audio, buffer)
    assert out.shape == audio.shape and np.isfinite(out).all()
    np.testing.assert_array_equal(out, run(make_jam(jam_runtime, 2), audio, block))
    assert not out[:, :block].any()  # the first part is predicted from the first block heard
    assert np.abs(out[:, block:]).max() > 1e-3


def test_jam_context_is_what_was_heard_input_plus_the_part_that_played(jam_runtime):
    cfg = jam_runtime.config
    rt = Recording(jam_runtime)
    s = make_jam(rt)
    block = s.block_frames * cfg.hop
    audio = tone(0.8, cfg.sample_rate, 1)[:, : 6 * block]
    out = s.process(audio)  # mix 1 at the model rate: the output is the part as it played
    codec = StreamingCodec(jam_runtime.codec, 1)
    for k, frames in enumerate(rt.appended):
        heard = audio[:, k * block:(k + 1) * block] + out[:, k * block:(k + 1) * block]
        want = codec.encode(heard) / jam_runtime.latent_scale  # (out is dry + (wet - dry): float round-off)
        np.testing.assert_allclose(frames, want, rtol=1e-4, atol=1e-4)
    assert len(rt.appended) == 6


def test_changing_the_input_changes_the_jam_from_the_next_block_on(jam_runtime):
    cfg = jam_runtime.config
    block = make_jam(jam_runtime).block_frames * cfg.hop
    a = tone(1.0, cfg.sample_rate, 1)
    b = a.copy()
    b[:, 2 * block:] = tone(1.0, cfg.sample_rate, 1, seed=9)[:, 2 * block:]
    out_a, out_b = make_jam(jam_runtime).process(a), make_jam(jam_runtime).process(b)
    np.testing.assert_allclose(out_a[:, :3 * block], out_b[:, :3 * block], atol=1e-6)  # heard in block 2: plays in 3
    assert np.abs(out_a[:, 3 * block:4 * block] - out_b[:, 3 * block:4 * block]).max() > 1e-3


def test_jam_ignores_strength_and_feedback_and_can_start_mid_stream(jam_runtime):
    cfg = jam_runtime.config
    audio = tone(1.0, cfg.sample_rate, 1)
    out = make_jam(jam_runtime).process(audio)
    np.testing.assert_array_equal(make_jam(jam_runtime, strength=0.1, feedback=0.9).process(audio), out)
    s = make_jam(jam_runtime, mode="delay")
    half = audio.shape[1] // 2
    first = s.process(audio[:, :half])
    s.set_params(mode="jam")
    second = s.process(audio[:, half:])
    assert np.isfinite(second).all() and second.shape == (1, audio.shape[1] - half)
    assert not np.array_equal(np.concatenate([first, second], 1), out)


@pytest.mark.parametrize("feedback", [0.0, 0.5])
def test_the_echo_plays_at_a_feedback_delays_level(debug_runtime, feedback):
    """Loud, then 20 dB quieter, then silence: each block's echo is as loud as the larger of the block it echoes and
    feedback times the echo before (RMS amplitude): the first echo at the input's level, and the loud phrase's tail
    decays by ``feedback`` a block, under the quiet one and into the silence."""
    cfg = debug_runtime.config
    rate = cfg.sample_rate  # no resampling: a block of input is a block of echo
    session = Session(debug_runtime, rate, 1, preset_params("tape_echo", delay_seconds=0.1, strength=0.6,
                                                            feedback=feedback, mix=1.0, steps=2))
    block = session.block_frames * cfg.hop
    audio = tone(18 * block / rate + 0.1, rate, 1, seed=4)[:, :18 * block]
    audio = (audio / np.sqrt(np.mean(audio ** 2)) * np.repeat([0.3] * 6 + [0.03] * 6 + [0.0] * 6, block))
    wet = session.process(np.concatenate([audio, np.zeros((1, 2 * block))], 1).astype(np.float32))
    wet = wet[0, session.latency_samples:]  # echo k lines up with input block k
    expected, got = [], []
    amplitude = 0.0
    for k in range(18):
        amplitude = max(np.sqrt(np.mean(audio[0, k * block:(k + 1) * block] ** 2)), feedback * amplitude)
        expected.append(20 * np.log10(amplitude + 1e-12))
        got.append(20 * np.log10(np.sqrt(np.mean(wet[k * block:(k + 1) * block] ** 2)) + 1e-12))
    expected, got = np.array(expected), np.array(got)
    audible = expected > -45.0
    assert audible.sum() >= 12
    assert np.abs(got - expected)[audible].max() < 2.5, np.round(np.c_[expected, got], 1)
    assert got[~audible].max() < -45.0  # the tail falls silent
