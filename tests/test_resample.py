"""The resampler: time-aligned and accurate at any pair of rates, no aliasing, a flat passband, exact timing."""

import numpy as np
import pytest

from lmdm_engine.core.audio import Fifo
from lmdm_engine.core.resample import Resampler, resample


def sine(freq, rate, seconds, phase=0.3):
    return np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate + phase)


def db(x):
    return 20 * np.log10(np.abs(x) + 1e-30)


@pytest.mark.parametrize("source, target", [(48000, 22050), (22050, 48000), (44100, 22050), (8000, 22050),
                                            (22050, 16000), (768000, 22050), (22050, 192000), (44056, 22050)])
def test_output_is_the_input_signal_at_the_output_times(source, target):
    """Output n is the band-limited input at input time n * source / target: no delay, errors below -100 dB (a
    lag of 0.01 input samples would leave -60 dB at this frequency). 44,056 Hz has a period too long to keep whole:
    its matrices are tiled and built at each use."""
    freq = 0.3 * min(source, target)
    out = Resampler(source, target).process(sine(freq, source, 0.2)[None].astype(np.float32))[0]
    want = sine(freq, target, 0.2)[: out.shape[0]]
    settle = int(0.02 * target)  # after the silence before the stream has left the filter
    assert out.shape[0] > 0.15 * target
    assert db(np.abs(out[settle:] - want[settle:]).max()) < -100


def _round_trip(audio, host=48000, model=22050):
    return resample(resample(audio, host, model), model, host)


def test_no_alias_of_the_probe_and_a_flat_passband():
    """The Session's round trip at 48 kHz: an 11.5 kHz sine (above the model's 11,025 Hz) folds to 10,550 Hz at
    below -100 dB; tones from 1 to 10 kHz come back within 0.01 dB."""
    rate = 48000
    probe = _round_trip((0.5 * sine(11500, rate, 2.0)).astype(np.float32))
    level = np.abs(np.fft.rfft(probe[rate // 2: rate // 2 + rate])) * 2 / rate
    assert db(level[10550] / 0.5) < -100
    freqs = np.arange(1000, 10001, 500)
    tones = (0.04 * np.sin(2 * np.pi * freqs[:, None] * np.arange(2 * rate) / rate)).sum(0).astype(np.float32)
    back = _round_trip(tones)
    gain = np.abs(np.fft.rfft(back[rate // 2: rate // 2 + rate])[freqs]) * 2 / rate / 0.04
    assert np.abs(db(gain)).max() < 0.01


def test_any_chunking_gives_the_same_output_and_the_timing_it_promises():
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal((2, 20000))).astype(np.float32)
    whole = Resampler(48000, 22050, 2).process(audio)
    r = Resampler(48000, 22050, 2)
    pieces, written = [], 0
    for size in rng.integers(0, 700, 200):
        chunk = audio[:, written: written + size]
        written += chunk.shape[1]
        pieces.append(r.process(chunk))
        ready = r.filter.outputs_for(written)
        assert sum(p.shape[1] for p in pieces) == ready  # everything ready came out
        assert r.filter.inputs_for(ready) <= written < r.filter.inputs_for(ready + 1)
    out = np.concatenate(pieces, 1)
    np.testing.assert_allclose(out, whole[:, : out.shape[1]], atol=1e-6)  # BLAS rounds differently by size


def test_read_takes_what_is_ready_and_flush_ends_the_stream():
    audio = sine(440, 48000, 0.1)[None].astype(np.float32)
    r = Resampler(48000, 22050)
    r.write(audio)
    ready = r.available
    with pytest.raises(ValueError, match="outputs ready"):
        r.read(ready + 1)
    head = r.read(ready - 10)
    tail = np.concatenate([r.read(10), r.flush()], 1)
    assert r.available == 0
    out = np.concatenate([head, tail], 1)
    assert out.shape[1] == int(np.ceil(audio.shape[1] * 22050 / 48000))
    np.testing.assert_allclose(out, resample(audio, 48000, 22050), atol=1e-6)
    same = resample(audio[0], 22050, 22050)
    np.testing.assert_array_equal(same, audio[0])
    assert same is not audio[0]
    with pytest.raises(ValueError, match="positive integers"):
        Resampler(44100.5, 22050)


def test_fifo_keeps_order_across_moves_and_growth():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((2, 5000)).astype(np.float32)
    fifo, written, out = Fifo(2, capacity=64), 0, []
    while written < audio.shape[1] or len(fifo):
        n = int(rng.integers(0, 300))
        fifo.write(audio[:, written: written + n])
        written = min(audio.shape[1], written + n)
        out.append(fifo.read(int(rng.integers(0, len(fifo) + 1))).copy())
    np.testing.assert_array_equal(np.concatenate(out, 1), audio)
    with pytest.raises(ValueError, match="holding 0"):
        fifo.read(1)
