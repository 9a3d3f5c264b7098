"""The outpaint and lmdm stages: rectified-flow velocity matching (x_t = (1 - t) x0 + t n, target v = n - x0)."""

from __future__ import annotations

import torch

from lmdm_engine.core.model import Denoiser

from .batches import Batcher, sample_times
from .data import LatentClips
from .options import TrainOptions


def flow_loss(model: Denoiser, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """Rectified-flow velocity MSE on the noisy target frames. Random draws come from the CPU ``generator``
    (reproducible on any device) and move to the model's device with the batch."""
    dev = next(model.parameters()).device
    cond = torch.from_numpy(batch["cond"]).to(dev)
    if "context" in batch:
        x0 = torch.from_numpy(batch["target"]).to(dev)
        t = sample_times(x0.shape[0], generator).to(dev)
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        v = model.velocity_outpaint(torch.from_numpy(batch["context"]).to(dev), xt, t, cond)
    else:
        clean = torch.from_numpy(batch["clean"]).to(dev)
        x0 = torch.from_numpy(batch["target"]).to(dev) if "target" in batch else clean  # jamming: a stem of clean
        b, frames, _ = x0.shape
        block = batch["block_frames"]
        t_blocks = sample_times(b * (frames // block), generator).view(b, -1).to(dev)
        t = t_blocks.repeat_interleave(block, 1)[..., None]  # [B, blocks] -> [B, T, 1]
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        xt = (1 - t) * x0 + t * noise
        v = model.velocity_sequence(clean, xt, t_blocks, cond, block)
    return torch.mean((v - (noise - x0)) ** 2)


class FlowMatching:
    """The outpaint and lmdm stages: one optimiser step on :func:`flow_loss` per training step.

    A stage object holds its batcher (whose numpy rng the checkpoint saves) and answers ``step``,
    ``state_tensors`` and ``load_state_tensors``; :class:`~lmdm_engine.train.arc.ArcForcing` is the other one."""

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
