"""Runtimes: what runs the denoiser for a Session. One interface, numpy arrays in and out.

A runtime holds the model and answers calls on a streaming state (the flat dict of named KV-cache tensors, see
``model.cache_names``): ``new_state``, ``append_context`` and ``velocity``, plus ``concat_states`` and
``split_state`` to run several sessions as one batch. ``latent_stream.LatentStream`` is the loop that drives a
runtime block by block; nothing above this layer sees torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from lmdm_engine.core.codec import Codec
from lmdm_engine.core.config import ModelConfig

BACKENDS = ("torch", "onnx")
DEFAULT_BACKEND = "onnx"  # ONNX Runtime: no torch on the effect path, and about twice as fast


class Runtime(Protocol):
    name: str
    config: ModelConfig
    latent_scale: np.ndarray  # [latent_dim]: model space = codec latents / latent_scale
    codec: Codec  # the model's codec (its fitted basis): audio <-> latents

    def new_state(self, batch: int) -> dict: ...

    def append_context(self, state: dict, frames: np.ndarray) -> dict:
        """Slide clean frames [B, n, D] (model space) into the cache; returns the new state."""

    def velocity(self, state: dict, x: np.ndarray, t: float, cond: np.ndarray) -> np.ndarray:
        """Velocity [B, L, D] of a target block x [B, L, D] at time t with the conditioning vector cond [B, S]."""

    def concat_states(self, states: list[dict]) -> dict:
        """One state holding several states' batches back to back (for running many sessions as one batch)."""

    def split_state(self, state: dict, sizes: list[int]) -> list[dict]:
        """Inverse of ``concat_states``: the batch split into consecutive parts of the given sizes."""


def default_model_dir() -> Path:
    """The model shipped inside the package, trained by ``lmdm train`` (see docs/TRAINING.md)."""
    return Path(__file__).parents[1] / "models" / "default"


def load_runtime(model: str | Path | None = None, backend: str = DEFAULT_BACKEND, device: str | None = None,
                 provider: str | None = None) -> Runtime:
    """The model folder's runtime. ``device`` picks the torch device; ``provider`` the ONNX Runtime execution
    provider ("cpu", "cuda"; default: CUDA when present)."""
    folder = Path(model) if model is not None else default_model_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if backend == "torch":
        from .torch import TorchRuntime

        return TorchRuntime.from_pretrained(folder, device=device)
    if backend == "onnx":
        from .onnx import OnnxRuntime

        return OnnxRuntime(folder, provider=provider)
    raise ValueError(f"unknown runtime backend {backend!r}; choose one of {BACKENDS}")
