"""Training: bidirectional block-wise outpainting (the baseline) -> block-causal LMDM fine-tuning -> ARC-Forcing.

Rectified flow (x_t = (1 - t) x0 + t n, target v = n - x0), AdamW with warm-up and cosine decay, EMA weights
(what gets saved as the model), tqdm progress with the loss, and resumable training state written as
safetensors + JSON (no pickle) every ``checkpoint_every`` steps.

- ``outpaint``: W-1 clean context blocks then one noisy target block, full attention (``bidirectional``; flow.py).
- ``lmdm``: initialised from the outpaint checkpoint; sequences of blocks, each noisy block at its own time,
  under the block-causal mask (``block_causal``; flow.py): the model the Session streams with a KV cache.
- ``arc-forcing``: initialised from the lmdm checkpoint; adversarial post-training on the model's own streamed
  rollouts (arc.py).

A stage is an object with ``step(optimizer, step) -> losses``, ``batcher`` (whose rng the checkpoint keeps),
``state_tensors()`` and ``load_state_tensors()``; this loop runs either kind (options.py holds what they share).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lmdm_engine.core.codec import Codec
from lmdm_engine.core.config import ModelConfig
from lmdm_engine.core.model import Denoiser

from .arc import ArcForcing
from .data import LatentClips, fit_codec, fit_latent_scale, load_clips
from .flow import FlowMatching
from .options import STAGES, TrainOptions, learning_rate, load_state, save_state

STAGE_ATTENTION = {"outpaint": "bidirectional", "lmdm": "block_causal", "arc-forcing": "block_causal"}


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
    if resuming or init is not None:  # a model keeps the codec basis it was first trained with
        codec = Codec.load(model_dir if resuming else init, probe_config)
    else:
        codec = fit_codec(data, probe_config)
    clips = load_clips(data, codec, "train")
    model = build_model(options, config, init, clips, conditioning if init is not None else None)
    model.config.extra = {**model.config.extra, "data": str(data), "options": dataclasses.asdict(options)}
    ema = Denoiser(model.config)
    ema.load_state_dict(model.state_dict())
    model.to(dev).train()
    ema.to(dev).eval()
    generator = torch.Generator().manual_seed(options.seed)
    if options.stage == "arc-forcing":
        stage = ArcForcing(model, clips, options, generator, codec)
    else:
        stage = FlowMatching(model, clips, options, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay,
                                  betas=(0.9, 0.99))
    step, elapsed = 0, 0.0
    if resuming:
        step, elapsed, extra = load_state(state_dir, model, ema, optimizer, stage.batcher, generator)
        stage.load_state_tensors(extra)
    (out_dir / "options.json").write_text(json.dumps(dataclasses.asdict(options), indent=2))
    log = (out_dir / "log.jsonl").open("a")
    bar = tqdm(total=options.steps, initial=step, desc=f"train {options.stage}", disable=not progress)
    start = time.time() - elapsed

    def checkpoint():
        save_state(state_dir, model, ema, optimizer, step, stage.batcher, generator, time.time() - start,
                    stage.state_tensors())
        ema.save_pretrained(model_dir)
        codec.save(model_dir)

    while step < options.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(options, step)
        losses = stage.step(optimizer, step)
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - options.ema_decay)
        step += 1
        bar.update(1)
        bar.set_postfix({name: f"{value:.4f}" for name, value in losses.items()})
        if step % options.log_every == 0 or step == options.steps:
            log.write(json.dumps({"step": step, **losses, "lr": learning_rate(options, step - 1),
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
