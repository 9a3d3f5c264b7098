"""Training: bidirectional block-wise outpainting (the baseline) -> block-causal LMDM fine-tuning -> ARC-Forcing.

Rectified flow (x_t = (1 - t) x0 + t n, target v = n - x0), AdamW with warm-up and cosine decay, EMA weights
(what gets saved as the model), tqdm progress with the loss, and resumable training state written as
safetensors + JSON (no pickle) every ``checkpoint_every`` steps.

- ``outpaint``: W-1 clean context blocks then one noisy target block, full attention (``bidirectional``).
- ``lmdm``: initialised from the outpaint checkpoint; sequences of blocks, each noisy block at its own time,
  under the block-causal mask (``block_causal``): the model the Session streams with a KV cache.
- ``arc-forcing``: initialised from the lmdm checkpoint; adversarial post-training on the model's own streamed
  rollouts (see arc.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from lmdm_engine.core.conditioning import conditioning_vectors
from lmdm_engine.core.config import ModelConfig
from .data import LatentClips, fit_latent_scale, load_clips
from lmdm_engine.core.model import Denoiser

STAGES = ("outpaint", "lmdm", "arc-forcing")
STAGE_ATTENTION = {"outpaint": "bidirectional", "lmdm": "block_causal", "arc-forcing": "block_causal"}


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


def sample_times(n: int, generator: torch.Generator) -> torch.Tensor:
    """Half logit-normal (SD3), half uniform: covers the whole strength range the delay uses."""
    logit = torch.sigmoid(torch.randn(n, generator=generator))
    uniform = torch.rand(n, generator=generator)
    pick = torch.rand(n, generator=generator) < 0.5
    return torch.where(pick, logit, uniform).clamp(1e-3, 1.0)


class Batcher:
    """Random crops of latent clips in model space (latents / latent_scale)."""

    def __init__(self, clips: LatentClips, config: ModelConfig, options: TrainOptions, latent_scale: np.ndarray):
        self.clips, self.config, self.options = clips, config, options
        self.scale = latent_scale
        self.rng = np.random.default_rng(options.seed)
        frames = clips.latents.shape[1]
        need = config.context_frames + options.max_target_frames
        if frames < need:
            raise ValueError(f"clips have {frames} latent frames; training needs at least {need}")

    def _conditioning(self, tags: np.ndarray, captions: np.ndarray | None, accompany: bool) -> np.ndarray:
        """Conditioning vectors [n, style_dim] (conditioning.py's layout) for training: tag vectors [n, T], each
        dropped with ``style_dropout``; for text models one random caption of captions [n, K, E], dropped with
        ``text_dropout`` (both dropped: the unconditional vector classifier-free guidance needs); the flag."""
        o, n = self.options, len(tags)
        tags = tags * (self.rng.random(n) >= o.style_dropout)[:, None]
        prompts = None
        if "text" in self.config.style_layout:
            if captions is None:
                raise ValueError("a text model trains on captioned clips (the procedural corpus)")
            prompts = captions[np.arange(n), self.rng.integers(0, captions.shape[1], n)]
            prompts = prompts * (self.rng.random(n) >= o.text_dropout)[:, None]
        return conditioning_vectors(self.config, tags, prompts, accompany)

    def _styles(self, idx: np.ndarray) -> np.ndarray:
        """Conditioning vectors [n, style_dim] of clips ``idx`` (see :meth:`_conditioning`)."""
        captions = self.clips.captions[idx] if self.clips.captions is not None else None
        return self._conditioning(self.clips.styles[idx], captions, accompany=False)

    def _jam(self, clean: np.ndarray, style: np.ndarray, length: int) -> np.ndarray:
        """Turns a ``jam_fraction`` of the sequences into jamming examples, in place: the clean stream becomes a
        two-part clip's mix, the target one of its stems (pitched or drums) with that stem's conditioning and the
        accompaniment flag. Returns the targets [B, T, D] (the clean stream where nothing changed)."""
        jam, target = self.clips.jam, clean.copy()
        rows = np.flatnonzero(self.rng.random(len(clean)) < self.options.jam_fraction)
        frames = jam.stems.shape[2]
        for row in rows:
            j, k = int(self.rng.integers(len(jam))), int(self.rng.integers(2))
            s = int(self.rng.integers(0, frames - length + 1))
            clean[row] = self.clips.latents[jam.clip[j], s:s + length] / self.scale
            target[row] = jam.stems[j, k, s:s + length] / self.scale
            captions = jam.captions[j, k][None] if jam.captions is not None else None
            style[row] = self._conditioning(jam.styles[j, k][None], captions, accompany=True)[0]
        return target

    def _crops(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        n, frames = self.options.batch_size, self.clips.latents.shape[1]
        idx = self.rng.integers(0, len(self.clips), n)
        starts = self.rng.integers(0, frames - length + 1, n)
        x = np.stack([self.clips.latents[i, s:s + length] for i, s in zip(idx, starts)]).astype(np.float32)
        return x / self.scale, self._styles(idx)

    def next(self) -> dict:
        o, c = self.options, self.config.context_frames
        length = int(self.rng.integers(o.min_target_frames, o.max_target_frames + 1))
        if o.stage == "outpaint":
            # sometimes a shorter context, as at the start of a stream
            ctx = c if self.rng.random() > 0.1 else int(self.rng.integers(0, c + 1))
            x, style = self._crops(ctx + length)
            return {"context": x[:, :ctx], "target": x[:, ctx:], "style": style}
        blocks = max(1, min(o.max_blocks, self.clips.latents.shape[1] // length))
        x, style = self._crops(blocks * length)
        if self.clips.jam is not None and o.jam_fraction > 0:
            return {"clean": x, "target": self._jam(x, style, blocks * length), "style": style, "block_frames": length}
        return {"clean": x, "style": style, "block_frames": length}


def flow_loss(model: Denoiser, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """Rectified-flow velocity MSE on the noisy target frames. Random draws come from the CPU ``generator``
    (reproducible on any device) and move to the model's device with the batch."""
    dev = next(model.parameters()).device
    style = torch.from_numpy(batch["style"]).to(dev)
    if "context" in batch:
        x0 = torch.from_numpy(batch["target"]).to(dev)
        t = sample_times(x0.shape[0], generator).to(dev)
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        v = model.velocity_outpaint(torch.from_numpy(batch["context"]).to(dev), xt, t, style)
    else:
        clean = torch.from_numpy(batch["clean"]).to(dev)
        x0 = torch.from_numpy(batch["target"]).to(dev) if "target" in batch else clean  # jamming: a stem of clean
        b, frames, _ = x0.shape
        block = batch["block_frames"]
        t_blocks = sample_times(b * (frames // block), generator).view(b, -1).to(dev)
        t = t_blocks.repeat_interleave(block, 1)[..., None]  # [B, blocks] -> [B, T, 1]
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        xt = (1 - t) * x0 + t * noise
        v = model.velocity_sequence(clean, xt, t_blocks, style, block)
    return torch.mean((v - (noise - x0)) ** 2)


class FlowMatching:
    """The outpaint and lmdm stages: one optimiser step on :func:`flow_loss` per training step.

    A stage object holds its batcher (whose numpy rng the checkpoint saves) and answers ``step``,
    ``state_tensors`` and ``load_state_tensors``; :class:`~lmdm_engine.arc.ArcForcing` is the other one."""

    def __init__(self, model: Denoiser, clips: LatentClips, options: TrainOptions, generator: torch.Generator):
        self.model, self.generator = model, generator
        self.batcher = Batcher(clips, model.config, options, model.latent_scale.cpu().numpy())

    def step(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        loss = flow_loss(self.model, self.batcher.next(), self.generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        optimizer.step()
        return {"loss": loss.item()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Stage state beyond the model, its EMA, optimiser and rngs: none here."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_tensors`."""


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


def _save_state(folder: Path, model, ema, optimizer, step: int, batcher: Batcher, generator, elapsed: float,
                extra: dict[str, torch.Tensor] | None = None):
    """``extra``: more named tensors of a stage (the ARC-Forcing discriminator), saved in the same file."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors.update({f"optim.{k}": v for k, v in optimizer_tensors(model, optimizer).items()})
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    tensors["rng.torch"] = generator.get_state()
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / "state.tmp"))
    (folder / "state.tmp").replace(folder / "state.safetensors")
    meta = {"step": step, "elapsed": elapsed, "numpy_rng": batcher.rng.bit_generator.state}
    (folder / "state.json").write_text(json.dumps(meta))


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_state(folder: Path, model, ema, optimizer, batcher: Batcher,
                generator) -> tuple[int, float, dict[str, torch.Tensor]]:
    """Restores what :func:`_save_state` wrote; returns (step, elapsed seconds, the ``extra`` tensors)."""
    tensors = load_file(str(folder / "state.safetensors"))
    meta = json.loads((folder / "state.json").read_text())
    model.load_state_dict(_prefixed(tensors, "model."))
    ema.load_state_dict(_prefixed(tensors, "ema."))
    load_optimizer_tensors(model, optimizer, _prefixed(tensors, "optim."))
    generator.set_state(tensors["rng.torch"])
    batcher.rng.bit_generator.state = meta["numpy_rng"]
    return meta["step"], meta["elapsed"], _prefixed(tensors, "extra.")


def _lr(options: TrainOptions, step: int) -> float:
    if step < options.warmup:
        return options.lr * (step + 1) / options.warmup
    progress = (step - options.warmup) / max(1, options.steps - options.warmup)
    return options.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def build_model(options: TrainOptions, config: ModelConfig | None, init: str | Path | None,
                clips: LatentClips, conditioning: dict | None = None) -> Denoiser:
    """A new model for the stage: from ``init`` (the previous stage's model, its conditioning re-laid out by
    ``conditioning``: text_dim / text_encoder / accompaniment) or fresh from ``config``."""
    attention = STAGE_ATTENTION[options.stage]
    if init is not None:
        model = Denoiser.from_pretrained(init, attention=attention)
        if conditioning:
            model = model.with_conditioning(**conditioning)
    else:
        if config is None:
            raise ValueError("a fresh model needs a config (or pass init=the previous stage's model)")
        with torch.random.fork_rng():  # the initial weights follow options.seed, whatever ran before
            torch.manual_seed(options.seed)
            model = Denoiser(config.replace(attention=attention))
        model.latent_scale.copy_(torch.from_numpy(fit_latent_scale(clips)))
    model.config.extra = {**model.config.extra, "stage": options.stage}
    return model


def train(out_dir: str | Path, data: str | Path, options: TrainOptions, config: ModelConfig | None = None,
          init: str | Path | None = None, device: str | None = None, progress: bool = True,
          conditioning: dict | None = None) -> Path:
    """Train one stage into ``out_dir`` (``model/``, ``train_state/``, ``log.jsonl``); resumes if state exists.
    ``conditioning`` (with ``init``) adds text prompts or jamming to the initial model (see build_model).

    Returns the folder of the trained (EMA) model.
    """
    if options.stage not in STAGES:
        raise ValueError(f"unknown stage {options.stage!r}; choose one of {STAGES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(options.threads or os.cpu_count() or 1)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state_dir, model_dir = out_dir / "train_state", out_dir / "model"
    resuming = (state_dir / "state.json").is_file()
    if resuming:  # the saved model folder carries the config, whatever the caller passed
        config, init = ModelConfig.load(model_dir), None
    elif options.stage == "arc-forcing" and init is None:
        raise ValueError("arc-forcing post-trains a block-causal model: pass init=the lmdm stage's model folder")
    probe_config = config or ModelConfig.load(init)
    if conditioning and init is not None:
        probe_config = probe_config.replace(**conditioning)
    clips = load_clips(data, probe_config, "train")
    model = build_model(options, config, init, clips, conditioning if init is not None else None)
    model.config.extra = {**model.config.extra, "data": str(data), "options": dataclasses.asdict(options)}
    ema = Denoiser(model.config)
    ema.load_state_dict(model.state_dict())
    model.to(dev).train()
    ema.to(dev).eval()
    generator = torch.Generator().manual_seed(options.seed)
    if options.stage == "arc-forcing":
        from .arc import ArcForcing

        stage = ArcForcing(model, clips, options, generator)
    else:
        stage = FlowMatching(model, clips, options, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay,
                                  betas=(0.9, 0.99))
    step, elapsed = 0, 0.0
    if resuming:
        step, elapsed, extra = _load_state(state_dir, model, ema, optimizer, stage.batcher, generator)
        stage.load_state_tensors(extra)
    (out_dir / "options.json").write_text(json.dumps(dataclasses.asdict(options), indent=2))
    log = (out_dir / "log.jsonl").open("a")
    bar = tqdm(total=options.steps, initial=step, desc=f"train {options.stage}", disable=not progress)
    start = time.time() - elapsed

    def checkpoint():
        _save_state(state_dir, model, ema, optimizer, step, stage.batcher, generator, time.time() - start,
                    stage.state_tensors())
        ema.save_pretrained(model_dir)

    while step < options.steps:
        for group in optimizer.param_groups:
            group["lr"] = _lr(options, step)
        losses = stage.step(optimizer, step)
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - options.ema_decay)
        step += 1
        bar.update(1)
        bar.set_postfix({name: f"{value:.4f}" for name, value in losses.items()})
        if step % options.log_every == 0 or step == options.steps:
            log.write(json.dumps({"step": step, **losses, "lr": _lr(options, step - 1),
                                  "seconds": round(time.time() - start, 1)}) + "\n")
            log.flush()
        out_of_time = options.max_minutes > 0 and time.time() - start > 60 * options.max_minutes
        if step % options.checkpoint_every == 0 or step == options.steps or out_of_time:
            checkpoint()
        if out_of_time:
            bar.write(f"stopping at step {step}: --max-minutes {options.max_minutes} reached (resume to continue)")
            break
    bar.close()
    log.close()
    if not (model_dir / "model.safetensors").is_file():
        checkpoint()
    return model_dir

