"""The torch runtimes over a :class:`~lmdm_engine.core.model.Denoiser`: ``TorchRuntime`` (numpy in and out, under
inference mode: what a Session runs on) and ``TensorRuntime`` (torch tensors in and out, gradients through
``velocity``: what ARC-Forcing's self-rollout runs on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmdm_engine.core.codec import Codec
from lmdm_engine.core.model import Denoiser


class TensorRuntime:
    """The Runtime interface on torch tensors, for training: ``velocity`` keeps the autograd graph, the cache is
    built without one (appended frames are detached)."""

    name = "torch-tensors"

    def __init__(self, model: Denoiser, codec: Codec | None = None):
        self.model = model
        self.config = model.config
        self.latent_scale = model.latent_scale
        self.codec = codec  # for LatentStream's level following (ARC-Forcing's rollout_level)

    def new_state(self, batch: int) -> dict:
        return self.model.empty_cache(batch)

    def concat_states(self, states: list[dict]) -> dict:
        return {name: torch.cat([s[name] for s in states], 0) for name in states[0]}

    def split_state(self, state: dict, sizes: list[int]) -> list[dict]:
        parts = {name: torch.split(value, sizes, 0) for name, value in state.items()}
        return [{name: parts[name][i] for name in state} for i in range(len(sizes))]

    @torch.no_grad()
    def append_context(self, state: dict, frames: torch.Tensor) -> dict:
        return self.model.append_context(state, frames.detach())

    def velocity(self, state: dict, x: torch.Tensor, t: float, cond: torch.Tensor) -> torch.Tensor:
        return self.model.velocity_cached(state, x, torch.full((x.shape[0],), float(t), device=x.device), cond)


class TorchRuntime(TensorRuntime):
    """Eager torch for numpy callers. ``threads`` sets torch's CPU threads: 1 by default, because one block is too
    small to share out (benchmarks/bench_realtime.py: a 2-core CPU runs the Session 2 to 3.5 times faster on one
    thread than on two)."""

    name = "torch"

    def __init__(self, model: Denoiser, codec: Codec, device: str | None = None, threads: int = 1):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        super().__init__(model.to(self.device).eval(), codec)
        self.latent_scale = model.latent_scale.detach().cpu().numpy().astype(np.float32)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | None = None) -> "TorchRuntime":
        model = Denoiser.from_pretrained(folder)
        return cls(model, Codec.load(folder, model.config), device)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32), device=self.device)

    @torch.inference_mode()
    def append_context(self, state: dict, frames: np.ndarray) -> dict:
        return self.model.append_context(state, self._tensor(frames))

    @torch.inference_mode()
    def velocity(self, state: dict, x: np.ndarray, t: float, cond: np.ndarray) -> np.ndarray:
        return super().velocity(state, self._tensor(x), t, self._tensor(cond)).cpu().numpy()
