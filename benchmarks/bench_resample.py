"""Resamplers compared on the Session's round trip: host rate -> 22,050 Hz (the model's) -> host rate, streamed.

For each resampler: the level of the alias of an 11.5 kHz sine (it folds to 22,050 - 11,500 = 10,550 Hz), the
largest gain error of tones from 1 to 10 kHz, the round trip's added latency (the most host samples the output
is behind the input when fed one sample at a time, plus any delay of the signal itself), and the time per second
of stereo audio, streamed as a Session streams (host buffers of 512 frames down, blocks of 22 hops up; the lmdm
Resampler is written a host buffer at a time and read a model block at a time, as the Session reads it), the
resamplers taking turns over ``--repeats`` rounds (medians; the ratio is against pedalboard's default, which the
Session used before).

    python benchmarks/bench_resample.py [--host-rate 48000] [--seconds 10] [--repeats 5] [--markdown]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import soxr
from pedalboard import Resample
from pedalboard.io import StreamResampler

from lmdm_engine.core.resample import Resampler

from _common import machine, print_table

MODEL_RATE = 22050
HOST_BUFFER = 512
MODEL_BLOCK = 22 * 512
PROBE_HZ = 11_500.0
SWEEP_HZ = np.arange(1000.0, 10_001.0, 500.0)


class Pedalboard:
    """pedalboard's StreamResampler, one per channel (as the Session had it)."""

    def __init__(self, quality):
        self.quality = quality

    def __call__(self, source, target, channels, block=None):
        streams = [StreamResampler(source, target, 1, self.quality) for _ in range(channels)]
        return lambda x: np.concatenate([s.process(x[c: c + 1]) for c, s in enumerate(streams)], 0)


class Soxr:
    def __init__(self, quality):
        self.quality = quality

    def __call__(self, source, target, channels, block=None):
        stream = soxr.ResampleStream(source, target, channels, dtype="float32", quality=self.quality)
        return lambda x: np.ascontiguousarray(stream.resample_chunk(np.ascontiguousarray(x.T)).T)


def lmdm(source, target, channels, block=None):
    """``block``: written as it comes, read in whole blocks (as the Session reads the host's input)."""
    r = Resampler(source, target, channels)
    if block is None:
        return r.process

    def process(x):
        r.write(x)
        return r.read(r.available // block * block)
    return process


METHODS = {
    "lmdm Resampler (Kaiser sinc, 110 dB)": lmdm,
    "soxr VHQ": Soxr("VHQ"),
    "soxr HQ": Soxr("HQ"),
    "soxr MQ": Soxr("MQ"),
    "soxr LQ": Soxr("LQ"),
    "soxr QQ": Soxr("QQ"),
    "pedalboard WindowedSinc32 (default; before)": Pedalboard(Resample.Quality.WindowedSinc32),
    "pedalboard WindowedSinc256": Pedalboard(Resample.Quality.WindowedSinc256),
}


def round_trip(make, audio: np.ndarray, host_rate: int, host_buffer: int = HOST_BUFFER,
               model_block: int = MODEL_BLOCK) -> np.ndarray:
    """``audio`` [C, n] down to the model rate in host buffers and back up in model blocks (what came out)."""
    down = make(host_rate, MODEL_RATE, audio.shape[0], model_block)
    up = make(MODEL_RATE, host_rate, audio.shape[0])
    pending, out = [], []
    held = 0
    for i in range(0, audio.shape[1], host_buffer):
        y = down(audio[:, i:i + host_buffer])
        pending.append(y)
        held += y.shape[1]
        while held >= model_block:
            block = np.concatenate(pending, 1)
            out.append(up(block[:, :model_block]))
            pending, held = [block[:, model_block:]], held - model_block
    return np.concatenate(out, 1)


def tone_levels(y: np.ndarray, host_rate: int, freqs) -> np.ndarray:
    """Complex amplitudes of ``freqs`` (whole multiples of 1 Hz) in the second second of ``y`` [samples]."""
    segment = y[host_rate: 2 * host_rate]
    spectrum = np.fft.rfft(segment.astype(np.float64)) * 2 / host_rate
    return spectrum[np.round(np.asarray(freqs)).astype(int)]


def alias_db(make, host_rate: int) -> float:
    t = np.arange(int(2.6 * host_rate)) / host_rate
    y = round_trip(make, (0.5 * np.sin(2 * np.pi * PROBE_HZ * t)).astype(np.float32)[None], host_rate)
    return 20 * np.log10(abs(tone_levels(y[0], host_rate, [MODEL_RATE - PROBE_HZ])[0]) / 0.5 + 1e-30)


def sweep(make, host_rate: int) -> tuple[float, float]:
    """(largest gain error in dB over SWEEP_HZ, the signal's delay in host samples from the tones' phases)."""
    phases = np.random.default_rng(0).uniform(0, 2 * np.pi, len(SWEEP_HZ))
    t = np.arange(int(2.6 * host_rate)) / host_rate
    x = (0.04 * np.sin(2 * np.pi * SWEEP_HZ[:, None] * t + phases[:, None])).sum(0).astype(np.float32)
    y = round_trip(make, x[None], host_rate)[0]
    got, sent = tone_levels(y, host_rate, SWEEP_HZ), tone_levels(x, host_rate, SWEEP_HZ)
    gain_db = 20 * np.log10(np.abs(got / sent))
    turn = np.unwrap(np.angle(got / sent))
    delay = -np.polyfit(2 * np.pi * SWEEP_HZ / host_rate, turn, 1)[0]
    return float(np.abs(gain_db).max()), float(delay)


def hold_back(make, host_rate: int, seconds: float = 0.5) -> int:
    """The most host samples the round trip's output is behind its input, fed one sample at a time."""
    down, up = make(host_rate, MODEL_RATE, 1), make(MODEL_RATE, host_rate, 1)
    one = np.zeros((1, 1), np.float32)
    produced = worst = 0
    for fed in range(1, int(seconds * host_rate) + 1):
        model = down(one)
        if model.shape[1]:
            produced += up(model).shape[1]
        worst = max(worst, fed - produced)
    return worst


def cost_ms(make, host_rate: int, seconds: float) -> float:
    """Milliseconds per second of stereo audio for the round trip."""
    audio = np.random.default_rng(1).standard_normal((2, int(seconds * host_rate))).astype(np.float32) * 0.1
    start = time.perf_counter()
    round_trip(make, audio, host_rate)
    return 1000 * (time.perf_counter() - start) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host-rate", type=int, default=48000)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of stereo audio timed per round")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rate = args.host_rate
    print(f"machine: {machine()}; host {rate} Hz <-> {MODEL_RATE} Hz; soxr {soxr.__version__}")
    costs = {name: [] for name in METHODS}
    for _ in range(args.repeats):  # interleaved: each round times every resampler once
        for name, make in METHODS.items():
            costs[name].append(cost_ms(make, rate, args.seconds))
    base = np.median(costs["pedalboard WindowedSinc32 (default; before)"])
    rows = []
    for name, make in METHODS.items():
        flat, delay = sweep(make, rate)
        latency = hold_back(make, rate) + delay
        cost = np.median(costs[name])
        rows.append([name, f"{alias_db(make, rate):.1f}", f"{flat:.4f}", f"{latency:.0f}",
                     f"{1000 * latency / rate:.1f}", f"{cost:.2f}", f"{base / cost:.1f}x"])
    print_table(["resampler", "alias dB", "1-10 kHz max dB", "latency samples", "latency ms",
                 "ms per s stereo", "speed vs before"], rows, args.markdown)


if __name__ == "__main__":
    main()
