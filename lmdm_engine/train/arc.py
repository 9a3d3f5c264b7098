"""ARC-Forcing: adversarial post-training on the model's own streamed rollouts (Novack et al. 2026, arXiv 2605.22717).

Each training step, starting from the block-causal (lmdm) model:

1. **Self rollout.** From a real context, the model streams ``rollout_blocks`` blocks on its own outputs with its
   own KV cache, through the inference path (a ``LatentStream``, as the Session and the evaluation rollout run).
   Each block takes ``k`` sampling steps, ``k`` drawn from 1..``max_sampling_steps``; only the last step carries
   gradient, so the generator learns to finish a block well from whatever its
   earlier steps (and its earlier blocks, through the cache) left it.
2. **Re-noising.** Generated and real blocks of the same clips are noised to one random time ``t`` per pair
   (same noise), so the discriminator compares them at equal difficulty.
3. **Discriminator.** A copy of the generator's first ``disc_layer`` DiT blocks (its middle layer by default) with
   a small head on that layer's hidden states scores each block at its time, under its conditioning, after the
   ``disc_context_blocks`` clean blocks before it (for a generated block: the stream it was generated after; for
   a real one: the real audio before it), so it judges continuations, not only blocks.
4. **Losses** (relativistic pairing):
   generator ``softplus(D_real - D_fake)``; discriminator ``softplus(D_fake - D_real)`` plus
   ``contrastive_weight * softplus(D(real, other cond) - D(real, own cond))``, which teaches the discriminator to
   check the conditioning (and so, through it, the generator).
5. One generator step, then one discriminator step on the same (detached) rollout.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmdm_engine.core.codec import Codec
from lmdm_engine.core.model import Denoiser
from lmdm_engine.runtime.latent_stream import LatentStream
from lmdm_engine.runtime.torch import TensorRuntime

from .batches import RolloutBatcher, sample_times
from .data import LatentClips
from .options import TrainOptions, learning_rate, load_optimizer_tensors, optimizer_tensors, prefixed


class Discriminator(nn.Module):
    """ARC-Forcing discriminator built from the generator's own backbone: a copy of its input, conditioning and
    first ``layers`` DiT blocks, and a small per-frame head on the block's hidden state, averaged into one logit
    per block. A block is scored at its re-noising time, under its conditioning, after clean context frames (laid out as
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

    def forward(self, context, x, t, cond) -> torch.Tensor:
        """Logits [B] of blocks x [B, L, D] (model space) at times t [B] with cond [B, S] after clean context
        frames [B, C', D] (C' may be 0)."""
        h = self.backbone.block_features(context, x, t, cond, self.layers)  # [B, L, W]
        return self.head(h).mean((1, 2))  # [B, L, 1] -> [B]


def self_rollout(model: Denoiser, context: torch.Tensor, cond: torch.Tensor, blocks: int, sampler: str,
                 draw_steps: Callable[[], int], noise: Callable, codec: Codec | None = None) -> torch.Tensor:
    """Stream ``blocks`` blocks of ``config.block_frames`` after the clean ``context`` [B, F, D] (model space).

    A ``LatentStream`` on the model's tensors warms up on the context, then generates each block from noise
    (strength 1) with ``draw_steps()`` steps of ``sampler`` and appends it: the stream the evaluation rollout runs
    through a runtime. Every step but the last runs without gradient, and the cache is built without gradient.
    With ``codec`` each block is re-levelled to the context's last block, as the evaluation rollout does.
    Returns the blocks [B, blocks, L, D], each differentiable through its last sampling step only.
    """
    length = model.config.block_frames
    stream = LatentStream(TensorRuntime(model, codec), context.shape[0])
    stream.warm(context, length)
    level = stream.level(context[:, -length:]) if codec is not None else None
    zeros = context.new_zeros(context.shape[0], length, context.shape[2])
    out = []
    for _ in range(blocks):
        block = stream.step(zeros, cond, noise, steps=draw_steps(), sampler=sampler, early_steps=torch.no_grad,
                            level=level)
        stream.append(block)
        out.append(block)
    return torch.stack(out, 1)


def mismatched_conditioning(cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip's conditioning vector swapped for the next clip's (a roll of the batch), and a mask [B] of the
    pairs where that is a real mismatch (both given, and different)."""
    other = cond.roll(1, 0)
    valid = cond.any(-1) & other.any(-1) & (cond != other).any(-1)
    return other, valid


class ArcForcing:
    """The arc-forcing training stage (see the module docstring): one generator step then one discriminator step
    per training step. ``step`` returns the losses: ``g_loss``, ``d_loss`` (relativistic part) and
    ``contrastive``."""

    def __init__(self, model: Denoiser, clips: LatentClips, options: TrainOptions, generator: torch.Generator,
                 codec: Codec | None = None):
        if options.rollout_level and codec is None:
            raise ValueError("rollout_level needs the model's codec")
        self.model, self.options, self.generator = model, options, generator
        self.codec = codec if options.rollout_level else None
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
        cond = torch.from_numpy(batch["cond"]).to(dev)
        block_cond = cond.repeat_interleave(o.rollout_blocks, 0)  # [B, S] -> [B N, S], the order of flatten(0, 1)
        fake = self_rollout(self.model, context, cond, o.rollout_blocks, o.sampler, self._draw_steps, self._noise,
                            self.codec)
        stream = torch.cat([context, fake.detach().flatten(1, 2)], 1)  # [B, C + N L, D]
        # the stream before each generated block: [B, N, seen L, D] -> [B N, seen L, D]
        fake_context = torch.stack([stream[:, c + j * length - seen * length:c + j * length]
                                    for j in range(o.rollout_blocks)], 1).flatten(0, 1)
        fake = fake.flatten(0, 1)  # [B, N, L, D] -> [B N, L, D]

        # generator step: the discriminator is only a critic here
        self.disc.requires_grad_(False)
        real_t, fake_t, t = self._renoised(real, fake)
        scores = self.disc(torch.cat([real_context, fake_context]), torch.cat([real_t, fake_t]), t.repeat(2),
                           block_cond.repeat(2, 1))
        d_real, d_fake = scores.chunk(2)
        g_loss = F.softplus(d_real - d_fake).mean()
        optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        optimizer.step()
        self.disc.requires_grad_(True)

        # discriminator step on the same rollout, re-noised afresh; real blocks also under mismatched conditioning
        for group in self.disc_optimizer.param_groups:
            group["lr"] = learning_rate(o, step) * o.disc_lr / o.lr
        real_t, fake_t, t = self._renoised(real, fake.detach())
        other, valid = mismatched_conditioning(cond)
        other_cond = other.repeat_interleave(o.rollout_blocks, 0)  # [B, S] -> [B N, S]
        scores = self.disc(torch.cat([real_context, fake_context, real_context]), torch.cat([real_t, fake_t, real_t]),
                           t.repeat(3), torch.cat([block_cond, block_cond, other_cond]))
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
        self.disc.load_state_dict(prefixed(tensors, "disc."))
        load_optimizer_tensors(self.disc, self.disc_optimizer, prefixed(tensors, "disc_optim."))
