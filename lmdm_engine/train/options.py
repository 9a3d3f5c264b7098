"""What every training stage shares: the options, the learning-rate schedule, and the resumable training state
(model, EMA, optimiser, rngs and a stage's own tensors) as safetensors + JSON, no pickle."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmdm_engine.core.files import atomic_write

STAGES = ("outpaint", "lmdm", "arc-forcing")


@dataclass
class TrainOptions:
    stage: str = "outpaint"
    steps: int = 2000
    batch_size: int = 16
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.01
    ema_decay: float = 0.995
    style_dropout: float = 0.2  # share of examples trained without their tags
    text_dropout: float = 0.2  # text models: share trained without a caption (with both dropped: unconditional)
    jam_fraction: float = 0.3  # jamming models, lmdm stage: share of sequences that generate one stem of a mix
    min_target_frames: int = 8  # training block lengths are drawn from [min, max] (the delay-time range used most)
    max_target_frames: int = 32
    max_blocks: int = 6  # lmdm stage: blocks per training sequence
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    max_minutes: float = 0.0  # stop (and save) after this wall time; 0 = no limit
    threads: int = 0  # CPU threads; 0 = all cores (1 makes CPU runs bit-reproducible)
    # arc-forcing stage (arc.py); lr above is the generator's
    rollout_blocks: int = 8  # blocks each self rollout generates after its real context
    max_sampling_steps: int = 4  # sampling steps per rollout block are drawn from 1..this
    sampler: str = "pingpong"
    disc_lr: float = 1e-4
    disc_layer: int = 0  # the discriminator reads the hidden state after this many DiT blocks; 0 = depth // 2
    disc_context_blocks: int = 1  # clean blocks of the stream the discriminator sees before each scored block
    contrastive_weight: float = 1.0
    rollout_level: bool = False  # each rollout block re-levelled to its context's last block, as inference does


# ---- resumable state (safetensors + JSON) -----------------------------------------------------------
def optimizer_tensors(model, optimizer) -> dict[str, torch.Tensor]:
    """AdamW state of ``optimizer`` (over ``model.parameters()``) as named tensors."""
    out = {}
    for i, (name, _) in enumerate(model.named_parameters()):
        st = optimizer.state.get(optimizer.param_groups[0]["params"][i], {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in st:
                out[f"{name}.{key}"] = st[key].detach().reshape(-1).clone() if key == "step" else st[key]
    return out


def load_optimizer_tensors(model, optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    for i, (name, _) in enumerate(model.named_parameters()):
        p = optimizer.param_groups[0]["params"][i]
        if f"{name}.exp_avg" in tensors:
            optimizer.state[p] = {
                "step": tensors[f"{name}.step"].reshape(()),
                "exp_avg": tensors[f"{name}.exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"{name}.exp_avg_sq"].to(p.device),
            }


def save_state(folder: Path, model, ema, optimizer, step: int, batcher, generator, elapsed: float,
                extra: dict[str, torch.Tensor] | None = None):
    """``extra``: more named tensors of a stage (the ARC-Forcing discriminator), saved in the same file."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors.update({f"optim.{k}": v for k, v in optimizer_tensors(model, optimizer).items()})
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    tensors["rng.torch"] = generator.get_state()
    with atomic_write(folder / "state.safetensors") as partial:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(partial))
    meta = {"step": step, "elapsed": elapsed, "numpy_rng": batcher.rng.bit_generator.state}
    with atomic_write(folder / "state.json") as partial:
        partial.write_text(json.dumps(meta))


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_state(folder: Path, model, ema, optimizer, batcher,
                generator) -> tuple[int, float, dict[str, torch.Tensor]]:
    """Restores what :func:`save_state` wrote; returns (step, elapsed seconds, the ``extra`` tensors)."""
    tensors = load_file(str(folder / "state.safetensors"))
    meta = json.loads((folder / "state.json").read_text())
    model.load_state_dict(prefixed(tensors, "model."))
    ema.load_state_dict(prefixed(tensors, "ema."))
    load_optimizer_tensors(model, optimizer, prefixed(tensors, "optim."))
    generator.set_state(tensors["rng.torch"])
    batcher.rng.bit_generator.state = meta["numpy_rng"]
    return meta["step"], meta["elapsed"], prefixed(tensors, "extra.")


def learning_rate(options: TrainOptions, step: int) -> float:
    """Linear warm-up to ``options.lr``, then cosine decay to a tenth of it at ``options.steps``."""
    if step < options.warmup:
        return options.lr * (step + 1) / options.warmup
    progress = (step - options.warmup) / max(1, options.steps - options.warmup)
    return options.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
