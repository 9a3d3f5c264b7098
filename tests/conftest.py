"""Shared fixtures: tiny debug models (random weights, so outputs are not trivially zero)."""

import numpy as np
import pytest
import torch

from lmdm_engine.core.config import debug_config
from lmdm_engine.core.model import Denoiser
from lmdm_engine.io.presets import resolve_preset
from lmdm_engine.runtime.torch import TorchRuntime


def preset_params(preset: str, **overrides):
    """A shipped preset's SessionParams with preset fields ``overrides`` over them, as the CLI and the bridge make
    them."""
    return resolve_preset(preset, overrides).params


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


class Recording:
    """A runtime that records the conditioning vector of every velocity call and the context frames of every
    append to the cache."""

    def __init__(self, runtime):
        self.runtime, self.conds, self.appended = runtime, [], []
        self.name, self.config, self.latent_scale = runtime.name, runtime.config, runtime.latent_scale

    def __getattr__(self, name):
        return getattr(self.runtime, name)

    def velocity(self, state, x, t, cond):
        self.conds.append(np.array(cond))
        return self.runtime.velocity(state, x, t, cond)

    def append_context(self, state, frames):
        self.appended.append(np.array(frames))
        return self.runtime.append_context(state, frames)
