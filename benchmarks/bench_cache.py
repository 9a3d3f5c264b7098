"""Per-block cost of the block-wise KV cache against outpainting, for context windows of 1..8 blocks.

For each window W (blocks attended to: the target and W-1 blocks of context) the denoiser of the shipped config
(random weights: only time is measured) generates one mono block of ``block_frames`` latent frames two ways:

- cached: what the stream does per block, one ``append_context`` of the finished clean block and ``steps`` calls
  of ``velocity_cached`` against a full cache (filled with W-1 blocks before timing);
- outpaint: ``steps`` calls of ``velocity_outpaint`` that recompute the (W-1)-block context at every step.

Each is timed with time.perf_counter after a warm-up, the repeats going round-robin over all windows; the table
gives the median ms per block, the ratio outpaint / cached, the cached cost relative to W=1 (it should stay flat
while outpainting grows) and the cached real-time factor (block duration / cached time).

    python benchmarks/bench_cache.py [--steps N] [--repeats 60] [--max-window 8] [--threads N] [--markdown]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmdm_engine.core.config import ModelConfig
from lmdm_engine.core.model import Denoiser
from lmdm_engine.io.presets import DEFAULT_PRESET, load_preset
from lmdm_engine.runtime.interface import default_model_dir

from _common import machine, print_table

WARMUP = 3


def block_runners(config: ModelConfig, steps: int):
    """(cached, outpaint): functions that each generate one block with this config's window."""
    model = Denoiser(config).eval()
    length, dim = config.block_frames, config.latent_dim
    block = torch.randn(1, length, dim)
    x = torch.randn(1, length, dim)
    t = torch.full((1,), 0.5)
    style = torch.zeros(1, config.cond_dim)
    cache = model.empty_cache(1)
    for _ in range(config.window_blocks - 1):
        cache = model.append_context(cache, torch.randn(1, length, dim))
    context = torch.randn(1, config.context_frames, dim)

    def cached():
        full = model.append_context(cache, block)
        for _ in range(steps):
            model.velocity_cached(full, x, t, style)

    def outpaint():
        for _ in range(steps):
            model.velocity_outpaint(context, x, t, style)

    return cached, outpaint


def median_ms(runners: list, repeats: int) -> list[float]:
    """Median ms of each runner. Repeats go round-robin over all runners, so a slow spell of the machine
    (frequent on shared virtual CPUs) hits every runner alike instead of one window."""
    for fn in runners:
        for _ in range(WARMUP):
            fn()
    times = [[] for _ in runners]
    for _ in range(repeats):
        for fn, samples in zip(runners, times):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return [1000 * statistics.median(samples) for samples in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=load_preset(DEFAULT_PRESET).steps,
                        help="denoising steps per block (default: the default preset's)")
    parser.add_argument("--repeats", type=int, default=60, help="timed repeats per measurement (median reported)")
    parser.add_argument("--max-window", type=int, default=8, help="largest window W in blocks")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the runtime uses)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    shipped = default_model_dir()
    base = ModelConfig.load(shipped) if shipped.is_dir() else ModelConfig()
    block_ms = 1000 * base.block_frames * base.hop / base.sample_rate
    print(f"machine: {machine()}; {args.threads} torch threads")
    print(f"config: {'shipped' if shipped.is_dir() else 'ModelConfig() defaults'} (width {base.width}, "
          f"depth {base.depth}); block {base.block_frames} frames = {block_ms:.1f} ms; steps {args.steps}; "
          f"mono; median of {args.repeats}")

    windows = range(1, args.max_window + 1)
    with torch.inference_mode():
        runners = [fn for w in windows for fn in block_runners(base.replace(window_blocks=w), args.steps)]
        costs = median_ms(runners, args.repeats)
    rows = []
    for window, cached, outpaint in zip(windows, costs[0::2], costs[1::2]):
        rows.append([str(window), str((window - 1) * base.block_frames), f"{cached:.2f}", f"{outpaint:.2f}",
                     f"{outpaint / cached:.2f}x", f"{cached / costs[0]:.2f}", f"{block_ms / cached:.1f}x"])
    headers = ["W", "context frames", "cached ms/block", "outpaint ms/block", "outpaint/cached",
               "cached vs W=1", "cached RTF"]
    print_table(headers, rows, args.markdown)


if __name__ == "__main__":
    main()
