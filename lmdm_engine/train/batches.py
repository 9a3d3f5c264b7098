"""What a training step is fed: random crops of latent clips in model space, with their conditioning vectors, and the
diffusion times they are noised to."""

from __future__ import annotations

import numpy as np
import torch

from lmdm_engine.core.conditioning import conditioning_vectors
from lmdm_engine.core.config import ModelConfig

from .data import LatentClips
from .options import TrainOptions


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
        """Conditioning vectors [n, cond_dim] (core/conditioning.py's layout) for training: tag vectors [n, T], each
        dropped with ``style_dropout``; for text models one random caption of captions [n, K, E], dropped with
        ``text_dropout`` (both dropped: the unconditional vector classifier-free guidance needs); the flag."""
        o, n = self.options, len(tags)
        tags = tags * (self.rng.random(n) >= o.style_dropout)[:, None]
        prompts = None
        if "text" in self.config.cond_layout:
            if captions is None:
                raise ValueError("a text model trains on captioned clips (the procedural corpus)")
            prompts = captions[np.arange(n), self.rng.integers(0, captions.shape[1], n)]
            prompts = prompts * (self.rng.random(n) >= o.text_dropout)[:, None]
        return conditioning_vectors(self.config, tags, prompts, accompany)

    def _cond(self, idx: np.ndarray) -> np.ndarray:
        """Conditioning vectors [n, cond_dim] of clips ``idx`` (see :meth:`_conditioning`)."""
        captions = self.clips.captions[idx] if self.clips.captions is not None else None
        return self._conditioning(self.clips.styles[idx], captions, accompany=False)

    def _jam(self, clean: np.ndarray, cond: np.ndarray, length: int) -> np.ndarray:
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
            cond[row] = self._conditioning(jam.styles[j, k][None], captions, accompany=True)[0]
        return target

    def _crops(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        n, frames = self.options.batch_size, self.clips.latents.shape[1]
        idx = self.rng.integers(0, len(self.clips), n)
        starts = self.rng.integers(0, frames - length + 1, n)
        x = np.stack([self.clips.latents[i, s:s + length] for i, s in zip(idx, starts)]).astype(np.float32)
        return x / self.scale, self._cond(idx)

    def next(self) -> dict:
        o, c = self.options, self.config.context_frames
        length = int(self.rng.integers(o.min_target_frames, o.max_target_frames + 1))
        if o.stage == "outpaint":
            # sometimes a shorter context, as at the start of a stream
            ctx = c if self.rng.random() > 0.1 else int(self.rng.integers(0, c + 1))
            x, cond = self._crops(ctx + length)
            return {"context": x[:, :ctx], "target": x[:, ctx:], "cond": cond}
        blocks = max(1, min(o.max_blocks, self.clips.latents.shape[1] // length))
        x, cond = self._crops(blocks * length)
        if self.clips.jam is not None and o.jam_fraction > 0:
            return {"clean": x, "target": self._jam(x, cond, blocks * length), "cond": cond, "block_frames": length}
        return {"clean": x, "cond": cond, "block_frames": length}


class RolloutBatcher(Batcher):
    """Real data of a rollout batch: per clip a context of ``context_frames`` (a random crop) to start the stream
    from, and ``rollout_blocks`` real blocks, each with the ``disc_context_blocks`` blocks before it, cut at random
    from the same clip (the discriminator's real side, paired one to one with the generated blocks and sharing
    their conditioning)."""

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
        return {"context": context / self.scale, "real": real / self.scale, "cond": self._cond(idx)}
