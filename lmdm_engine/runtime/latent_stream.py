"""The one per-block loop: finished frames slide into a runtime's KV cache, the next block is sampled against it.

    stream = LatentStream(runtime, batch)      # state: the runtime's flat dict of named cache tensors
    stream.warm(context, block_frames)         # a clean context, a block at a time (the last one ends with it)
    block = stream.step(start, cond, noise, strength=..., steps=..., sampler=...)   # the next block
    stream.append(block)                       # the block (or any clean frames) into the cache

The Session, ``generate``, the evaluation rollout and ARC-Forcing's self-rollout all run through here, so they make
the same runtime calls in the same order: on numpy (TorchRuntime, OnnxRuntime) or, for training, on torch tensors
with gradients (TensorRuntime, with ``early_steps=torch.no_grad``: only a block's last sampling step carries them).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np

from lmdm_engine.core.conditioning import unconditional
from lmdm_engine.core.sampling import get_sampler, time_schedule

from .interface import Runtime


GUIDANCE_RESCALE = 1.0  # 0: plain classifier-free guidance; 1: the guided estimate at the conditional one's RMS


def _rms(a):
    """RMS of each batch row of a [B, L, D] array or tensor, as [B, 1, 1]."""
    return ((a * a).reshape(a.shape[0], -1).mean(-1) ** 0.5)[:, None, None]


def generate_block(runtime: Runtime, state: dict, delayed, strength: float, steps: int, sampler: str, cond,
                   noise: Callable, guidance: float = 1.0, early_steps: Callable = contextlib.nullcontext):
    """One block against a runtime's cached context: start from ``delayed`` noised to ``strength`` and integrate
    to t = 0 (strength 1: a free continuation; strength 0: ``delayed`` unchanged). Every sampling step but the
    last runs inside ``early_steps()``.

    ``guidance`` g != 1 turns on classifier-free guidance, ``v = v_uncond + g (v_cond - v_uncond)`` against the
    unconditional vector of ``cond`` (conditioning.unconditional): two runtime calls per step, the conditional one
    first (it folds any context the ONNX runtime has queued), then the unconditional one on the same state. The
    guided clean estimate is brought back to the conditional one's RMS, mixed in by ``GUIDANCE_RESCALE`` (Lin et
    al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", sec. 3.4): in log-magnitude latents
    plain guidance also extrapolates the level (guidance 4 played 14 dB too loud)."""
    if strength <= 0:
        return delayed.copy()
    x = (1.0 - strength) * delayed + strength * noise(delayed)
    if guidance == 1.0:
        velocity = lambda x, t: runtime.velocity(state, x, t, cond)
    else:
        plain = unconditional(runtime.config, np.asarray(cond, np.float32))

        def velocity(x, t):
            conditional = runtime.velocity(state, x, t, cond)
            uncond = runtime.velocity(state, x, t, plain)
            guided = uncond + guidance * (conditional - uncond)
            if GUIDANCE_RESCALE == 0.0 or t <= 0.0:
                return guided
            x0_cond, x0 = x - t * conditional, x - t * guided  # the clean estimates
            x0 = x0 * (1.0 - GUIDANCE_RESCALE + GUIDANCE_RESCALE * _rms(x0_cond) / (_rms(x0) + 1e-6))
            return (x - x0) / t
    sample, schedule = get_sampler(sampler), time_schedule(steps, strength)
    with early_steps():
        x = sample(velocity, x, schedule[:-1], noise)
    return sample(velocity, x, schedule[-2:], noise)


class LatentStream:
    """A runtime's streaming state for ``batch`` rows and the calls that move it on, block by block."""

    def __init__(self, runtime: Runtime, batch: int):
        self.runtime, self.batch = runtime, batch
        self.reset()

    def reset(self) -> None:
        """An empty cache."""
        self.state = self.runtime.new_state(self.batch)

    def append(self, frames) -> None:
        """Slide clean frames [B, n, D] (model space) into the cache."""
        self.state = self.runtime.append_context(self.state, frames)

    def warm(self, context, block_frames: int) -> None:
        """Append a clean context [B, F, D] in blocks of ``block_frames``, its last block aligned with its end."""
        for end in range(context.shape[1], 0, -block_frames)[::-1]:
            self.append(context[:, max(0, end - block_frames):end])

    def level(self, frames) -> np.ndarray:
        """The loudness [B] of frames [B, n, D] (model space; ``Codec.level``), for ``step(level=...)``."""
        return self.runtime.codec.level(_numpy(frames) * _numpy(self.runtime.latent_scale))

    def step(self, start, cond, noise: Callable, *, strength: float = 1.0, steps: int, sampler: str,
             guidance: float = 1.0, early_steps: Callable = contextlib.nullcontext, level=None):
        """The next block sampled against the cache (see :func:`generate_block`); the cache is not changed.

        ``level`` [B] (from :meth:`level`: the block it continues, or the one it re-generates) re-levels the block
        to it: the model alone regresses to a quiet average (continuations 7.6 dB under the real ones, log-mel
        Fréchet distance 236; re-levelled to the context's last block: 93, docs/SOUND.md). On torch tensors
        (ARC-Forcing's rollout) the shift is found on a detached copy and added, so gradients pass through it."""
        block = generate_block(self.runtime, self.state, start, strength, steps, sampler, cond, noise, guidance,
                               early_steps)
        if level is None:
            return block
        scale = _numpy(self.runtime.latent_scale)
        held = _numpy(block)
        moved = self.runtime.codec.match_level(held * scale, level) / scale
        if isinstance(block, np.ndarray):
            return moved
        return block + block.new_tensor(moved - held)


def _numpy(a) -> np.ndarray:
    """float32 numpy of an array or a (detached, CPU) torch tensor."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, np.float32)
