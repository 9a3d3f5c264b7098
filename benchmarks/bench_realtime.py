"""Real-time factor of a full Session (resampling, codec, KV cache, sampling) with the shipped default model on CPU.

For each shipped preset (or ``--preset``), mono and stereo, a Session at ``--sample-rate`` (48 kHz) processes a test
signal (decaying sine notes plus a little noise) in host buffers of ``--buffer`` frames, after a 1 s warm-up.
Reported: audio seconds, wall seconds, real-time factor (audio s / wall s), the mean and p99 time of the
process() calls that produced a model block, and the peak RSS of this process so far.

``--breakdown`` times the parts of the Session instead (CPU time of this thread, so that other processes on a
busy machine count less), mono and stereo, as milliseconds per model block and shares of the whole: resample in
(host -> model rate), encode, model (the ONNX Runtime or torch runs), sampler (the rest of a block: sampling
arithmetic, noise, the context), decode, resample out, and mixing (sanitising, FIFOs, the wet/dry mix, Python).

    python benchmarks/bench_realtime.py [--runtime onnx|torch] [--preset NAME] [--sample-rate 48000] [--seconds 20]
                                        [--threads N] [--markdown] [--breakdown]
"""

from __future__ import annotations

import argparse
import collections
import resource
import time

import numpy as np
import torch

from lmdm_engine.core.config import ModelConfig
from lmdm_engine.core.model import Denoiser
from lmdm_engine.io.presets import list_presets, load_preset
from lmdm_engine.runtime.interface import BACKENDS, DEFAULT_BACKEND, default_model_dir, load_runtime
from lmdm_engine.runtime.torch import TorchRuntime
from lmdm_engine.stream.params import unplayable_reason
from lmdm_engine.stream.session import Session

from _common import machine, print_table

WARMUP_SECONDS = 1.0
NOTES_HZ = (220.0, 277.2, 329.6, 440.0, 392.0)


def test_signal(seconds: float, sample_rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """[channels, frames] float32: a decaying sine note every 0.5 s (cycling through NOTES_HZ) plus noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    onset = np.floor(t / 0.5)
    since = t - onset * 0.5
    freq = np.asarray(NOTES_HZ)[onset.astype(int) % len(NOTES_HZ)]
    notes = 0.4 * np.sin(2 * np.pi * freq * since) * np.exp(-6.0 * since)
    return (notes[None, :] + 0.01 * rng.standard_normal((channels, n))).astype(np.float32)


def runtime_for(model: str | None, backend: str = DEFAULT_BACKEND):
    """The requested (or shipped) model; without a shipped model, random weights of the default config (torch)."""
    if model is not None or default_model_dir().is_dir():
        return load_runtime(model, backend=backend, device="cpu" if backend == "torch" else None), str(model or default_model_dir())
    print(f"note: no shipped model at {default_model_dir()} (train one: scripts/train_default_model.sh); "
          "timing random weights of ModelConfig() instead, which cost the same per block")
    return TorchRuntime(Denoiser(ModelConfig()), device="cpu"), "random weights, ModelConfig()"


def run(runtime, preset: str, channels: int, sample_rate: int, seconds: float, buffer: int) -> list[str]:
    session = Session(runtime, sample_rate, channels, load_preset(preset).params)
    audio = test_signal(WARMUP_SECONDS + seconds, sample_rate, channels)
    warm = int(WARMUP_SECONDS * sample_rate)
    session.process(audio[:, :warm])
    block_ms = []
    start = time.perf_counter()
    for i in range(warm, audio.shape[1], buffer):
        blocks = session.blocks_processed
        call = time.perf_counter()
        session.process(audio[:, i: i + buffer])
        elapsed = time.perf_counter() - call
        if session.blocks_processed > blocks:
            block_ms.append(1000 * elapsed / (session.blocks_processed - blocks))
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    params = session.params
    return [preset, str(channels), str(params.steps), f"{1000 * params.delay_seconds:.0f}", f"{seconds:.1f}",
            f"{wall:.2f}", f"{seconds / wall:.2f}x", f"{np.mean(block_ms):.1f}", f"{np.percentile(block_ms, 99):.1f}",
            f"{peak_mib:.0f}"]


PARTS = ("resample in", "encode", "model", "sampler", "decode", "resample out", "mixing")


def _time_calls(owner, method: str, part: str, totals: dict) -> None:
    """Replace ``owner.method`` by a wrapper that adds its CPU time to ``totals[part]``."""
    inner = getattr(owner, method)

    def timed(*args, **kwargs):
        start = time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[part] += time.thread_time() - start
    setattr(owner, method, timed)


def breakdown(runtime, preset: str, channels: int, sample_rate: int, seconds: float, buffer: int) -> dict:
    """CPU milliseconds per model block of each of PARTS."""
    session = Session(runtime, sample_rate, channels, load_preset(preset).params)
    audio = test_signal(WARMUP_SECONDS + seconds, sample_rate, channels)
    warm = int(WARMUP_SECONDS * sample_rate)
    session.process(audio[:, :warm])
    totals = collections.defaultdict(float)
    for method in ("write", "read", "process"):  # the resampler in (``process`` in Sessions before this one)
        if hasattr(session._to_model, method):
            _time_calls(session._to_model, method, "resample in", totals)
    _time_calls(session._to_host, "process", "resample out", totals)
    for codec in (session._codec, session._mix_codec):
        _time_calls(codec, "encode", "encode", totals)
        _time_calls(codec, "decode", "decode", totals)
    model_calls = (runtime.session, "run") if runtime.name == "onnx" else (runtime, "velocity")
    _time_calls(*model_calls, "model", totals)
    if runtime.name != "onnx":
        _time_calls(runtime, "append_context", "model", totals)
    _time_calls(session, "_process_block", "block", totals)
    _time_calls(session, "process", "all", totals)
    blocks = session.blocks_processed
    for i in range(warm, audio.shape[1], buffer):
        session.process(audio[:, i: i + buffer])
    blocks = session.blocks_processed - blocks
    totals["sampler"] = totals["block"] - totals["encode"] - totals["model"] - totals["decode"]
    totals["mixing"] = totals["all"] - totals["resample in"] - totals["block"] - totals["resample out"]
    return {part: 1000 * totals[part] / blocks for part in (*PARTS, "all")}


def print_breakdown(runtime, preset: str, sample_rate: int, seconds: float, buffer: int, markdown: bool) -> None:
    parts = {ch: breakdown(runtime, preset, ch, sample_rate, seconds, buffer) for ch in (1, 2)}
    rows = []
    for part in (*PARTS, "all"):
        row = [part]
        for ch in (1, 2):
            row += [f"{parts[ch][part]:.2f}", f"{100 * parts[ch][part] / parts[ch]['all']:.1f}%"]
        rows.append(row)
    rows.append(["all but the model"] + [cell for ch in (1, 2) for cell in (
        f"{parts[ch]['all'] - parts[ch]['model']:.2f}", f"{100 * (1 - parts[ch]['model'] / parts[ch]['all']):.1f}%")])
    print(f"preset {preset}: CPU ms per model block")
    print_table(["part", "mono ms", "mono share", "stereo ms", "stereo share"], rows, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="one shipped preset name (default: all of them)")
    parser.add_argument("--sample-rate", type=int, default=48000, help="host sample rate in Hz")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of test signal timed per run")
    parser.add_argument("--buffer", type=int, default=512, help="host buffer size in frames")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--runtime", default=DEFAULT_BACKEND, choices=BACKENDS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the runtime uses)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--breakdown", action="store_true", help="time the parts of a block instead")
    args = parser.parse_args()

    runtime, source = runtime_for(args.model, args.runtime)
    torch.set_num_threads(args.threads)  # after the runtime, which sets its own default
    presets = [args.preset] if args.preset else [p.name for p in list_presets()
                                                 if unplayable_reason(p.params, runtime.config) is None]
    print(f"machine: {machine()}; runtime {runtime.name}, 1 thread" if runtime.name == "onnx"
          else f"machine: {machine()}; runtime torch, {args.threads} torch threads")
    print(f"model: {source}; host {args.sample_rate} Hz, buffer {args.buffer} frames; "
          f"{args.seconds:g} s per run after {WARMUP_SECONDS:g} s warm-up")
    if args.breakdown:
        for preset in presets:
            print_breakdown(runtime, preset, args.sample_rate, args.seconds, args.buffer, args.markdown)
        return
    rows = [run(runtime, preset, channels, args.sample_rate, args.seconds, args.buffer)
            for preset in presets for channels in (1, 2)]
    headers = ["preset", "ch", "steps", "delay ms", "audio s", "wall s", "RTF", "block mean ms", "block p99 ms",
               "peak RSS MiB"]
    print_table(headers, rows, args.markdown)


if __name__ == "__main__":
    main()
