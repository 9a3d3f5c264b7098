"""Error accumulation over long rollouts: per-block Fréchet distance of 64-block continuations.

From each of ``--contexts`` held-out clips, its first ``context_frames`` latent frames are the context and each
model continues it for ``--blocks`` blocks of ``block_frames`` (strength 1: free continuation, the clip's style,
ping-pong sampling, the same noise for every model) at each step count of ``--steps``:

- ``outpaint``: the bidirectional outpainting baseline, recomputing its context at every step
  (``Denoiser.velocity_outpaint`` over the last ``context_frames`` frames: no cache);
- ``lmdm``: the block-causal fine-tune, streaming with its KV cache;
- ``arc``: the ARC-Forcing post-trained model (Novack et al. 2026, arXiv 2605.22717), streaming likewise.

All rollouts go through ``lmdm_engine.evaluate.rollout``, the cached streaming path of ``lmdm eval`` and the
Session; the baseline enters it behind a runtime adapter whose state is the raw context. Each continuation is
decoded together with its context; a log-mel frame (64 bands, metrics.py) belongs to the block its centre falls
in. Per block index, the frames of all contexts form one set, and its Fréchet distance is taken against the
statistics of all held-out real audio (every held-out clip, whole). The ``real`` row is the clips' own
continuations (the first blocks only, as far as the clips go): the floor that this number of frames allows.

    python benchmarks/bench_drift.py --arc runs/arc/main/model [--outpaint runs/default/outpaint/model]
        [--lmdm runs/default/lmdm/model] [--data data/corpus] [--steps 1 2 4 8] [--blocks 64] [--contexts 64]
        [--threads 1] [--markdown] [--plot docs/drift.png] [--json docs/drift.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmdm_engine.core.codec import Codec, decode_clip
from lmdm_engine.core.conditioning import conditioning_vectors
from lmdm_engine.core.metrics import frechet_distance, log_mel, mel_statistics
from lmdm_engine.core.model import Denoiser
from lmdm_engine.runtime.torch import TorchRuntime
from lmdm_engine.train.data import load_clips
from lmdm_engine.train.evaluate import rollout

from _common import machine, print_table

MEL_HOP = 256  # log_mel's default hop: frame f is centred on sample f * MEL_HOP


class OutpaintRuntime:
    """The outpainting baseline behind the runtime interface of ``evaluate.rollout``: its state is the last
    ``context_frames`` clean frames (model space), which every velocity call runs through the network again."""

    name = "outpaint"

    def __init__(self, model: Denoiser):
        self.model = model.eval()
        self.config = model.config
        self.latent_scale = model.latent_scale.numpy()

    def new_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch, 0, self.config.latent_dim), np.float32)

    def append_context(self, state: np.ndarray, frames: np.ndarray) -> np.ndarray:
        return np.concatenate([state, frames], 1)[:, -self.config.context_frames:]

    @torch.inference_mode()
    def velocity(self, state: np.ndarray, x: np.ndarray, t: float, style: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        tt = torch.full((x.shape[0],), float(t))
        return self.model.velocity_outpaint(torch.from_numpy(state), xt, tt, torch.from_numpy(style)).numpy()


def block_statistics(codec: Codec, context: np.ndarray, continuation: np.ndarray,
                     blocks: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Log-mel statistics per block index of continuations [B, frames, D] (codec latents) decoded after their
    contexts [B, C, D]: a frame belongs to the block its centre falls in."""
    per_block = [[] for _ in range(blocks)]
    config = codec.config
    block_samples = config.block_frames * config.hop
    for ctx, cont in zip(context, continuation):
        audio = decode_clip(codec, np.concatenate([ctx, cont]).astype(np.float32))
        mel = log_mel(audio, config.sample_rate, hop=MEL_HOP)  # [frames, 64]
        block = (np.arange(mel.shape[0]) * MEL_HOP - ctx.shape[0] * config.hop) // block_samples
        for j in range(blocks):
            per_block[j].append(mel[block == j])
    return [mel_statistics(np.concatenate(frames)) for frames in per_block]


def reference_statistics(codec: Codec, latents: np.ndarray):
    """Log-mel statistics of whole clips [N, frames, D] (codec latents), pooled."""
    return mel_statistics(np.concatenate([log_mel(decode_clip(codec, z.astype(np.float32)), codec.config.sample_rate,
                                                  hop=MEL_HOP) for z in latents]))


def range_mean(distances: list[float], first: int, last: int) -> float:
    return float(np.mean(distances[first - 1:last]))


def plot(path: Path, results: dict, real: list[float], steps: list[int]) -> Path:
    fig = Figure(figsize=(4.2 * len(steps), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(steps), sharey=True, squeeze=False)[0]
    for ax, n in zip(axes, steps):
        for name, by_steps in results.items():
            curve = by_steps[str(n)]["per_block"]
            ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
        ax.axhline(float(np.mean(real)), color="gray", linestyle="--", label="real (floor)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{n} step{'s' if n > 1 else ''}")
        ax.set_xlabel("block")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Fréchet distance (log-mel)")
    axes[-1].legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outpaint", default="runs/default/outpaint/model", help="model folder ('' to leave out)")
    parser.add_argument("--lmdm", default="runs/default/lmdm/model", help="model folder ('' to leave out)")
    parser.add_argument("--arc", default="", help="the ARC-Forcing model folder (default: left out)")
    parser.add_argument("--text", default="", help="a text + jamming fine-tune's model folder (default: left out)")
    parser.add_argument("--data", default="data/corpus")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--blocks", type=int, default=64)
    parser.add_argument("--contexts", type=int, default=64)
    parser.add_argument("--sampler", default="pingpong", choices=["euler", "pingpong"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (with other jobs on a 2-core CPU, 2 threads ran many times slower than 1)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--plot", default=None, metavar="PNG")
    parser.add_argument("--json", default=None, metavar="JSON")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    folders = {"outpaint": args.outpaint, "lmdm": args.lmdm, "arc": args.arc, "text": args.text}
    runtimes, codecs = {}, {}
    for name, folder in folders.items():
        if folder:
            model = Denoiser.from_pretrained(folder)
            codecs[name] = Codec.load(folder, model.config)
            runtimes[name] = (OutpaintRuntime(model) if name == "outpaint"
                              else TorchRuntime(model, codecs[name], "cpu", args.threads))
    codec = next(iter(codecs.values()))
    if len({c.key for c in codecs.values()}) > 1:
        raise SystemExit(f"the models do not share one codec basis ({', '.join(folders[n] for n in codecs)}): "
                         f"their rollouts would not be decoded alike")
    config = codec.config
    clips = load_clips(args.data, codec, "heldout")
    c, length = config.context_frames, config.block_frames
    reference = reference_statistics(codec, clips.latents)
    context = clips.latents[:args.contexts, :c].astype(np.float32)
    tags = clips.styles[:args.contexts].astype(np.float32)
    real_blocks = (clips.latents.shape[1] - c) // length
    real = [frechet_distance(*s, *reference) for s in
            block_statistics(codec, context, clips.latents[:args.contexts, c:c + real_blocks * length], real_blocks)]

    results = {}
    for name, runtime in runtimes.items():
        results[name] = {}
        for steps in args.steps:
            start = time.perf_counter()
            style = conditioning_vectors(runtime.config, tags)  # the clip's tags, no prompt: one cue for every model
            continuation = rollout(runtime, context, args.blocks, length, steps, args.sampler, style, args.seed)
            seconds = time.perf_counter() - start
            stats = block_statistics(codec, context, continuation, args.blocks)
            results[name][str(steps)] = {"per_block": [frechet_distance(*s, *reference) for s in stats],
                                         "rollout_seconds": round(seconds, 1)}
            print(f"{name} {steps} steps: rollout {seconds:.0f} s", flush=True)

    half = args.blocks // 2
    ranges = ((1, half), (half + 1, args.blocks))  # the table's two halves (1-based, inclusive)
    headers = ["model", "steps"] + [f"blocks {a}-{b}" for a, b in ranges] + ["second / first", "rollout s"]
    rows = [["real", "-", f"{np.mean(real):.1f} (blocks 1-{real_blocks})", "", "", ""]]
    for name, by_steps in results.items():
        for steps, r in by_steps.items():
            first, second = (range_mean(r["per_block"], a, b) for a, b in ranges)
            rows.append([name, steps, f"{first:.1f}", f"{second:.1f}", f"{second / first:.2f}",
                         f"{r['rollout_seconds']:.0f}"])
    print(f"\nmachine: {machine()}, {args.threads} threads; {args.contexts} contexts, {args.blocks} blocks of "
          f"{length} frames, {args.sampler}; Fréchet distance on log-mel vs all held-out audio (lower is better)")
    print_table(headers, rows, args.markdown)
    if args.plot:
        print(f"plot: {plot(Path(args.plot), results, real, args.steps)}")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("markdown", "plot", "json")}
        out = {"machine": machine(), "settings": settings, "real_per_block": real, "results": results}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
