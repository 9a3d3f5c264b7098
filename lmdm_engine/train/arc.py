"""ARC-Forcing: adversarial post-training on the model's own streamed rollouts (Novack et al. 2026, arXiv 2605.22717).

Each training step, starting from the block-causal (lmdm) model:

1. **Self rollout.** From a real context, the model streams ``rollout_blocks`` blocks on its own outputs with its
   own KV cache, through the inference path (:meth:`Denoiser.append_context`, :meth:`Denoiser.velocity_cached`,
   the samplers of sampling.py). Each block takes ``k`` sampling steps, ``k`` drawn from 1..``max_sampling_steps``;
   only the last step carries gradient, so the generator learns to finish a block well from whatever its
   earlier steps (and its earlier blocks, through the cache) left it.
2. **Re-noising.** Generated and real blocks of the same clips are noised to one random time ``t`` per pair
   (same noise), so the discriminator compares them at equal difficulty.
3. **Discriminator.** A copy of the generator's first ``disc_layer`` DiT blocks (its middle layer by default) with
   a small head on that layer's hidden states scores each block at its time, under its style, after the
   ``disc_context_blocks`` clean blocks before it (for a generated block: the stream it was generated after; for
   a real one: the real audio before it), so it judges continuations, not only blocks.
4. **Losses** (relativistic pairing):
   generator ``softplus(D_real - D_fake)``; discriminator ``softplus(D_fake - D_real)`` plus
   ``contrastive_weight * softplus(D(real, other style) - D(real, own style))``, which teaches the discriminator to
   check the style conditioning (and so, through it, the generator).
5. One generator step, then one discriminator step on the same (detached) rollout.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import LatentClips
from lmdm_engine.core.model import Denoiser
from lmdm_engine.core.sampling import get_sampler, time_schedule
from .loop import Batcher, TrainOptions, _lr, _prefixed, load_optimizer_tensors, optimizer_tensors, sample_times


class Discriminator(nn.Module):
    """ARC-Forcing discriminator built from the generator's own backbone: a copy of its input, conditioning and
    first ``layers`` DiT blocks, and a small per-frame head on the block's hidden state, averaged into one logit
    per block. A block is scored at its re-noising time, under its style, after clean context frames (laid out as
    in :meth:`Denoiser.velocity_outpaint`)."""

    def __init__(self, generator: Denoiser, layers: int):
        super().__init__()
        if not 1 <= layers <= generator.config.depth:
            raise ValueError(f"disc_layer must be in 1..{generator.config.depth}, got {layers}")
        self.layers = layers
        self.backbone = Denoiser(generator.config.replace(depth=layers)).to(generator.latent_scale.device)
        del self.backbone.final_modulation, self.backbone.out_proj  # the velocity head: not used here
        self.backbone.load_state_dict(generator.state_dict(), strict=False)  # drops the blocks after `layers`
        w = generator.config.width
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.SiLU(), nn.Linear(w, 1))
        self.head.to(generator.latent_scale.device)

    def forward(self, context, x, t, style) -> torch.Tensor:
        """Logits [B] of blocks x [B, L, D] (model space) at times t [B] with style [B, S] after clean context
        frames [B, C', D] (C' may be 0)."""
        h = self.backbone.block_features(context, x, t, style, self.layers)  # [B, L, W]
        return self.head(h).mean((1, 2))  # [B, L, 1] -> [B]


class RolloutBatcher(Batcher):
    """Real data of a rollout batch: per clip a context of ``context_frames`` (a random crop) to start the stream
    from, and ``rollout_blocks`` real blocks, each with the ``disc_context_blocks`` blocks before it, cut at random
    from the same clip (the discriminator's real side, paired one to one with the generated blocks and sharing
    their style)."""

    def __init__(self, clips: LatentClips, config, options: TrainOptions, latent_scale: np.ndarray):
        super().__init__(clips, config, options, latent_scale)
        if options.disc_context_blocks * config.block_frames > config.context_frames:
            raise ValueError(f"disc_context_blocks {options.disc_context_blocks} reaches past the model's context "
                             f"of {config.context_frames} frames")

    def next(self) -> dict:
        o, cfg = self.options, self.config
        c, length = cfg.context_frames, cfg.block_frames
        span = (o.disc_context_blocks + 1) * length
        lat = self.clips.latents
        n, frames = o.batch_size, lat.shape[1]
        idx = self.rng.integers(0, len(self.clips), n)
        context_starts = self.rng.integers(0, frames - c + 1, n)
        real_starts = self.rng.integers(0, frames - span + 1, (n, o.rollout_blocks))
        context = np.stack([lat[i, s:s + c] for i, s in zip(idx, context_starts)]).astype(np.float32)
        # [B, rollout_blocks, (disc_context_blocks + 1) L, D]
        real = np.stack([[lat[i, s:s + span] for s in row] for i, row in zip(idx, real_starts)]).astype(np.float32)
        return {"context": context / self.scale, "real": real / self.scale, "style": self._styles(idx)}


def self_rollout(model: Denoiser, context: torch.Tensor, style: torch.Tensor, blocks: int, sampler: str,
                 draw_steps: Callable[[], int], noise: Callable) -> torch.Tensor:
    """Stream ``blocks`` blocks of ``config.block_frames`` after the clean ``context`` [B, F, D] (model space).

    The context is fed in blocks (the last one aligned with its end), then each block is generated from noise
    (strength 1) with ``draw_steps()`` steps of ``sampler`` against the cache and appended to it: the same calls,
    in the same order, as :func:`lmdm_engine.evaluate.rollout` makes through a runtime. Every step but the last
    runs without gradient, and the cache is built without gradient. Returns the blocks [B, blocks, L, D], each
    differentiable through its last sampling step only.
    """
    b, length, dim = context.shape[0], model.config.block_frames, context.shape[2]
    sample = get_sampler(sampler)
    with torch.no_grad():
        cache = model.empty_cache(b)
        for end in range(context.shape[1], 0, -length)[::-1]:
            cache = model.append_context(cache, context[:, max(0, end - length):end])
    zeros = context.new_zeros(b, length, dim)
    out = []
    for _ in range(blocks):
        def velocity(x, t, cache=cache):
            return model.velocity_cached(cache, x, torch.full((b,), t, device=x.device), style)

        schedule = time_schedule(draw_steps())
        with torch.no_grad():
            x = sample(velocity, noise(zeros), schedule[:-1], noise)  # all steps but the last: to schedule[-2]
        block = sample(velocity, x, schedule[-2:], noise)  # the last step, with gradient
        with torch.no_grad():
            cache = model.append_context(cache, block.detach())
        out.append(block)
    return torch.stack(out, 1)


def mismatched_styles(style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip's style swapped for the next clip's (a roll of the batch), and a mask [B] of the pairs where
    that is a real mismatch (both styles given, and different)."""
    other = style.roll(1, 0)
    valid = style.any(-1) & other.any(-1) & (style != other).any(-1)
    return other, valid


class ArcForcing:
    """The arc-forcing training stage (see the module docstring): one generator step then one discriminator step
    per training step. ``step`` returns the losses: ``g_loss``, ``d_loss`` (relativistic part) and
    ``contrastive``."""

    def __init__(self, model: Denoiser, clips: LatentClips, options: TrainOptions, generator: torch.Generator):
        self.model, self.options, self.generator = model, options, generator
        self.batcher = RolloutBatcher(clips, model.config, options, model.latent_scale.cpu().numpy())
        with torch.random.fork_rng():  # the head's initial weights follow options.seed, whatever ran before
            torch.manual_seed(options.seed)
            self.disc = Discriminator(model, options.disc_layer or max(1, model.config.depth // 2))
        self.disc_optimizer = torch.optim.AdamW(self.disc.parameters(), lr=options.disc_lr,
                                                weight_decay=options.weight_decay, betas=(0.9, 0.99))

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator).to(like.device)

    def _draw_steps(self) -> int:
        return int(torch.randint(1, self.options.max_sampling_steps + 1, (1,), generator=self.generator))

    def _renoised(self, real: torch.Tensor, fake: torch.Tensor):
        """Real and generated blocks [B N, L, D] noised to one time per pair with the same noise; returns
        (real_t, fake_t) [B N, L, D] and t [B N]."""
        t = sample_times(real.shape[0], self.generator).to(real.device)
        noise = self._noise(real)
        tt = t[:, None, None]
        return (1 - tt) * real + tt * noise, (1 - tt) * fake + tt * noise, t

    def step(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        o, dev = self.options, self.model.latent_scale.device
        length, c, seen = self.model.config.block_frames, self.model.config.context_frames, o.disc_context_blocks
        batch = self.batcher.next()
        context = torch.from_numpy(batch["context"]).to(dev)
        real = torch.from_numpy(batch["real"]).to(dev).flatten(0, 1)  # [B, N, F, D] -> [B N, F, D]
        real_context, real = real[:, :seen * length], real[:, seen * length:]
        style = torch.from_numpy(batch["style"]).to(dev)
        block_style = style.repeat_interleave(o.rollout_blocks, 0)  # [B, S] -> [B N, S], the order of flatten(0, 1)
        fake = self_rollout(self.model, context, style, o.rollout_blocks, o.sampler, self._draw_steps, self._noise)
        stream = torch.cat([context, fake.detach().flatten(1, 2)], 1)  # [B, C + N L, D]
        # the stream before each generated block: [B, N, seen L, D] -> [B N, seen L, D]
        fake_context = torch.stack([stream[:, c + j * length - seen * length:c + j * length]
                                    for j in range(o.rollout_blocks)], 1).flatten(0, 1)
        fake = fake.flatten(0, 1)  # [B, N, L, D] -> [B N, L, D]

        # generator step: the discriminator is only a critic here
        self.disc.requires_grad_(False)
        real_t, fake_t, t = self._renoised(real, fake)
        scores = self.disc(torch.cat([real_context, fake_context]), torch.cat([real_t, fake_t]), t.repeat(2),
                           block_style.repeat(2, 1))
        d_real, d_fake = scores.chunk(2)
        g_loss = F.softplus(d_real - d_fake).mean()
        optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        optimizer.step()
        self.disc.requires_grad_(True)

        # discriminator step on the same rollout, re-noised afresh; real blocks also under mismatched styles
        for group in self.disc_optimizer.param_groups:
            group["lr"] = _lr(o, step) * o.disc_lr / o.lr
        real_t, fake_t, t = self._renoised(real, fake.detach())
        other, valid = mismatched_styles(style)
        other_style = other.repeat_interleave(o.rollout_blocks, 0)  # [B, S] -> [B N, S]
        scores = self.disc(torch.cat([real_context, fake_context, real_context]), torch.cat([real_t, fake_t, real_t]),
                           t.repeat(3), torch.cat([block_style, block_style, other_style]))
        d_real, d_fake, d_mismatched = scores.chunk(3)
        d_loss = F.softplus(d_fake - d_real).mean()
        pair_valid = valid.repeat_interleave(o.rollout_blocks).float()
        contrastive = (F.softplus(d_mismatched - d_real) * pair_valid).sum() / pair_valid.sum().clamp(min=1)
        self.disc_optimizer.zero_grad(set_to_none=True)
        (d_loss + o.contrastive_weight * contrastive).backward()
        torch.nn.utils.clip_grad_norm_(self.disc.parameters(), 1.0)
        self.disc_optimizer.step()
        return {"g_loss": g_loss.item(), "d_loss": d_loss.item(), "contrastive": contrastive.item()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The discriminator and its optimiser state, for the training checkpoint."""
        tensors = {f"disc.{k}": v for k, v in self.disc.state_dict().items()}
        tensors.update({f"disc_optim.{k}": v for k, v in optimizer_tensors(self.disc, self.disc_optimizer).items()})
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_tensors`."""
        self.disc.load_state_dict(_prefixed(tensors, "disc."))
        load_optimizer_tensors(self.disc, self.disc_optimizer, _prefixed(tensors, "disc_optim."))
