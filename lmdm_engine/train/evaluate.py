"""Evaluation: Frechet distance on log-mel statistics of generated continuations against held-out audio.

From each held-out clip, the first ``context_frames`` latent frames are the context; the model rolls out
``blocks`` blocks with its KV cache (strength 1: free continuation, conditioned on the clip's tags). The log-mel
frames of all continuations are compared, as one set, with those of the real continuations. References:
- ``repeat_last_block``: the last context block repeated: real audio, no novelty (the realism ceiling);
- ``untrained``: the same architecture with fresh weights (and no fitted latent scale);
- ``noise_latents``: standard Gaussian codec latents;
- ``shaped_noise``: Gaussian latents with the trained model's per-channel scale (noise with the corpus's
  average spectrum: a stricter floor than plain noise).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmdm_engine.core.codec import Codec, decode_clip
from lmdm_engine.core.files import atomic_write
from lmdm_engine.core.metrics import frechet_distance, log_mel, mel_statistics
from lmdm_engine.runtime.interface import Runtime
from lmdm_engine.runtime.latent_stream import LatentStream

from .data import LatentClips


def rollout(runtime: Runtime, context: np.ndarray, blocks: int, block_frames: int, steps: int, sampler: str,
            cond: np.ndarray, seed: int = 0, follow_level: bool = True) -> np.ndarray:
    """Continue codec latents ``context`` [B, F, D] by ``blocks`` blocks; returns codec latents [B, blocks*L, D].
    ``follow_level``: each block at the level of the one before it (``LatentStream.step``; ARC-Forcing's
    self-rollout, which trains the model itself, does without).

    A ``LatentStream`` warms up on the context, then each generated block is appended to the cache before the
    next one: the streaming path of the Session and of ARC-Forcing's self-rollout.
    """
    rng = np.random.default_rng(seed)
    scale = runtime.latent_scale[None, None, :]
    x = context / scale
    stream = LatentStream(runtime, x.shape[0])
    stream.warm(x, block_frames)
    noise = lambda a: rng.standard_normal(a.shape).astype(np.float32)
    out = []
    zeros = np.zeros((x.shape[0], block_frames, x.shape[2]), np.float32)
    level = stream.level(x[:, -block_frames:]) if follow_level else None  # every block's, once they follow it
    for _ in range(blocks):
        block = np.asarray(stream.step(zeros, cond, noise, steps=steps, sampler=sampler, level=level), np.float32)
        stream.append(block)
        out.append(block)
    return np.concatenate(out, 1) * scale


def _mel_stats(codec: Codec, latents: np.ndarray):
    audio = np.stack([decode_clip(codec, z.astype(np.float32)) for z in latents])
    return mel_statistics(log_mel(audio, codec.config.sample_rate))


def evaluate(runtime: Runtime, clips: LatentClips, untrained: Runtime | None = None, blocks: int = 2,
             steps: int = 8, sampler: str = "pingpong", max_clips: int = 128, seed: int = 0) -> dict:
    """Frechet distances of the model and the references against the real continuations (lower is better)."""
    cfg = runtime.config
    n = min(max_clips, len(clips))
    lat = clips.latents[:n].astype(np.float32)
    c, L = cfg.context_frames, cfg.block_frames
    if lat.shape[1] < c + blocks * L:
        raise ValueError(f"held-out clips have {lat.shape[1]} frames; need {c + blocks * L}")
    context, real = lat[:, :c], lat[:, c:c + blocks * L]
    cond = clips.conditioning(cfg, np.arange(n))  # tags (and, for text models, a caption)
    real_stats = _mel_stats(runtime.codec, real)
    rng = np.random.default_rng(seed)
    candidates = {
        "model": rollout(runtime, context, blocks, L, steps, sampler, cond, seed),
        "repeat_last_block": np.tile(context[:, -L:], (1, blocks, 1)),
        "noise_latents": rng.standard_normal(real.shape).astype(np.float32),
        "shaped_noise": rng.standard_normal(real.shape).astype(np.float32) * runtime.latent_scale,
    }
    if untrained is not None:
        candidates["untrained"] = rollout(untrained, context, blocks, L, steps, sampler, cond, seed)
    result = {name: frechet_distance(*_mel_stats(runtime.codec, z), *real_stats) for name, z in candidates.items()}
    result["settings"] = {"clips": n, "blocks": blocks, "block_frames": L, "steps": steps, "sampler": sampler,
                          "seed": seed, "context_frames": c}
    return result


def evaluation_table(result: dict) -> str:
    """Markdown table, with each distance also as a ratio to the model's."""
    rows = ["| candidate | Frechet distance (log-mel) | ratio to model |", "|---|---:|---:|"]
    model = result["model"]
    for name, value in result.items():
        if name != "settings":
            rows.append(f"| {name} | {value:.3f} | {value / model:.2f} |")
    return "\n".join(rows)


def write_result(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(result, indent=2) + "\n")
    return path
