"""torch eager against ONNX Runtime (CPU) on the same blocks, and the start-up and memory of `lmdm process`.

Part 1, per block: the default preset's work for one model block at the model rate -- codec encode, cache update,
`steps` sampling steps, codec decode -- on a fixed sequence of blocks (a test signal's latents, fixed noise), for
each runtime, mono and stereo. Reported: model-only and whole-block mean / p99 ms, the real-time factor
(block duration / block time) and ONNX Runtime's speed-up.

Part 2, `lmdm process` on a 60 s stereo 48 kHz file with the ONNX runtime, in fresh processes: start-up to the
first processed block (interpreter start, imports, model load, one block), the whole run's wall time and the
peak resident memory of the process (its own VmHWM).

    python benchmarks/bench_runtime.py [--blocks 60] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from bench_realtime import test_signal

from lmdm_engine.core.codec import StreamingCodec
from lmdm_engine.io.presets import DEFAULT_PRESET, load_preset
from lmdm_engine.runtime.interface import default_model_dir, load_runtime
from lmdm_engine.runtime.latent_stream import generate_block

from _common import machine, print_table, run_measured

FIRST_BLOCK = """
import time, numpy as np
from lmdm_engine.io.presets import load_preset
from lmdm_engine.runtime.interface import load_runtime
from lmdm_engine.stream.session import Session
s = Session(load_runtime(backend="onnx"), 48000, 2, load_preset("{preset}").params)
block = int(np.ceil(s.block_frames * s.config.hop * 48000 / s.config.sample_rate)) + 64
s.process(np.zeros((2, block), np.float32))
assert s.blocks_processed == 1
"""


def per_block(runtime, channels: int, blocks: int, preset) -> tuple[np.ndarray, np.ndarray]:
    """Model-only and whole-block times (seconds) for ``blocks`` blocks after 3 warm-up blocks."""
    cfg = runtime.config
    frames = int(round(preset.delay_seconds * cfg.sample_rate / cfg.hop))
    audio = test_signal((blocks + 4) * frames * cfg.hop / cfg.sample_rate + 1, cfg.sample_rate, channels)
    cond = np.zeros((channels, cfg.cond_dim), np.float32)
    enc, dec = StreamingCodec(cfg, channels), StreamingCodec(cfg, channels)
    state = runtime.new_state(channels)
    model_s, block_s = [], []
    for b in range(blocks + 3):
        chunk = audio[:, b * frames * cfg.hop: (b + 1) * frames * cfg.hop]
        start = time.perf_counter()
        heard = enc.encode(chunk) / runtime.latent_scale
        model_start = time.perf_counter()
        state = runtime.append_context(state, heard)
        rng = np.random.default_rng(b)  # the same noise for every runtime
        draw = lambda x: rng.standard_normal(x.shape, np.float32)
        echo = generate_block(runtime, state, heard, preset.strength, preset.steps, preset.sampler, cond, draw)
        model_end = time.perf_counter()
        dec.decode(np.asarray(echo, np.float32) * runtime.latent_scale)
        end = time.perf_counter()
        if b >= 3:
            model_s.append(model_end - model_start)
            block_s.append(end - start)
    return np.asarray(model_s), np.asarray(block_s)


def startup_and_memory(preset: str, seconds: float = 60.0) -> tuple[float, float, float]:
    first_block, _ = run_measured([sys.executable, "-c", FIRST_BLOCK.format(preset=preset)])
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        sf.write(src, test_signal(seconds, 48000, 2).T, 48000, subtype="PCM_24")
        wall, peak_mib = run_measured([sys.executable, "-m", "lmdm_engine.cli", "process", str(src), "-o", str(dst),
                                       "--preset", preset, "--runtime", "onnx", "--quiet"])
    return first_block, wall, peak_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=60)
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    preset = load_preset(args.preset)
    runtimes = {name: load_runtime(backend=name) for name in ("torch", "onnx")}
    cfg = runtimes["onnx"].config
    frames = int(round(preset.delay_seconds * cfg.sample_rate / cfg.hop))
    block_seconds = frames * cfg.hop / cfg.sample_rate
    print(f"machine: {machine()}; model {default_model_dir()}; preset {preset.name}: {frames}-frame blocks "
          f"({1000 * block_seconds:.0f} ms), {preset.steps} {preset.sampler} steps, strength {preset.strength}; "
          f"{args.blocks} blocks per run, one thread per runtime")
    rows = []
    for channels in (1, 2):
        times = {name: per_block(rt, channels, args.blocks, preset) for name, rt in runtimes.items()}
        for name, (model_s, block_s) in times.items():
            speedup = np.mean(times["torch"][1]) / np.mean(block_s)
            rows.append([name, str(channels), f"{1000 * np.mean(model_s):.2f}", f"{1000 * np.percentile(model_s, 99):.2f}",
                         f"{1000 * np.mean(block_s):.2f}", f"{1000 * np.percentile(block_s, 99):.2f}",
                         f"{block_seconds / np.mean(block_s):.1f}x", f"{speedup:.2f}x"])
    print_table(["runtime", "ch", "model mean ms", "model p99 ms", "block mean ms", "block p99 ms", "RTF",
                 "speed-up vs torch"], rows, args.markdown)
    first_block, wall, peak = startup_and_memory(preset.name)
    print_table(["`lmdm process` (ONNX, 60 s stereo 48 kHz)", "value"],
                [["start-up to first block", f"{first_block:.2f} s"], ["whole file, wall", f"{wall:.1f} s"],
                 ["real-time factor (whole file)", f"{60.0 / wall:.1f}x"], ["peak RSS", f"{peak:.0f} MiB"]],
                args.markdown)


if __name__ == "__main__":
    main()
