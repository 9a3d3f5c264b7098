"""Shared fixtures: tiny debug models (random weights, so outputs are not trivially zero)."""

import numpy as np
import pytest
import torch

from lmdm_engine.core.config import debug_config
from lmdm_engine.core.model import Denoiser
from lmdm_engine.runtime.torch import TorchRuntime


def random_model(seed: int = 0, **overrides) -> Denoiser:
    """A debug Denoiser whose zero-initialised output layers are randomised too."""
    torch.manual_seed(seed)
    model = Denoiser(debug_config(**overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
        model.latent_scale.uniform_(0.05, 0.3)
    return model.eval()


@pytest.fixture(scope="session")
def debug_runtime() -> TorchRuntime:
    return TorchRuntime(random_model(), "cpu")


@pytest.fixture(scope="session")
def debug_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("debug_model")
    random_model().save_pretrained(folder)
    return folder


def tone(seconds: float, sample_rate: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """Decaying band-limited notes plus a little noise: [channels, samples] float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    x = np.zeros_like(t)
    for i, f in enumerate(rng.uniform(150, 900, 6)):
        start = i * seconds / 6
        env = np.where(t >= start, np.exp(-4 * (t - start)), 0.0)
        x += 0.3 * env * np.sin(2 * np.pi * f * t)
    x += 0.01 * rng.standard_normal(t.shape)
    return np.stack([x * (1 - 0.2 * c) for c in range(channels)]).astype(np.float32)


class Recording:
    """A runtime that records the conditioning vector of every velocity call and the context frames of every
    append to the cache."""

    def __init__(self, runtime):
        self.runtime, self.styles, self.appended = runtime, [], []
        self.name, self.config, self.latent_scale = runtime.name, runtime.config, runtime.latent_scale

    def __getattr__(self, name):
        return getattr(self.runtime, name)

    def velocity(self, state, x, t, style):
        self.styles.append(np.array(style))
        return self.runtime.velocity(state, x, t, style)

    def append_context(self, state, frames):
        self.appended.append(np.array(frames))
        return self.runtime.append_context(state, frames)
