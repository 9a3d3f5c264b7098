"""Shared fixtures: tiny debug models (random weights, so outputs are not trivially zero)."""

import functools

import numpy as np
import pytest
import torch

from lmdm_engine.core.audio import tone
from lmdm_engine.core.codec import Codec
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


@functools.cache
def debug_codec(**framing) -> Codec:
    """A codec basis for the debug config (``framing``: overrides of its codec fields), fitted on test tones."""
    cfg = debug_config(**framing)
    return Codec.fit(cfg, [tone(2.0, cfg.sample_rate, 1, seed)[0] for seed in range(4)])


def codec_for(model: Denoiser) -> Codec:
    """The debug codec of ``model``'s framing."""
    cfg = model.config
    return debug_codec(sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop=cfg.hop, latent_size=cfg.latent_size)


def debug_torch_runtime(model: Denoiser) -> TorchRuntime:
    return TorchRuntime(model, codec_for(model), "cpu")


def save_debug_model(model: Denoiser, folder):
    """A model folder for ``model``: config.json, model.safetensors and its debug codec."""
    model.save_pretrained(folder)
    codec_for(model).save(folder)
    return folder


@pytest.fixture(scope="session")
def debug_runtime() -> TorchRuntime:
    return debug_torch_runtime(random_model())


@pytest.fixture(scope="session")
def debug_model_dir(tmp_path_factory):
    return save_debug_model(random_model(), tmp_path_factory.mktemp("debug_model"))


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


def envelope_lag(out, ref, sample_rate: int, max_lag: int) -> tuple[int, float]:
    """The lag (samples) at which the log-energy envelope (2 ms windows) of ``out`` best matches ``ref``'s, and
    that match's correlation: time alignment through the codec, which keeps magnitudes, not waveforms."""
    def envelope(x):
        w = max(1, int(sample_rate * 0.002))
        return np.log(np.convolve(np.asarray(x, np.float64) ** 2, np.ones(w) / w, "same") + 1e-6)

    a, b = envelope(out), envelope(ref)
    n = min(len(a), len(b)) - 2 * max_lag
    scores = [np.corrcoef(a[max_lag + lag: max_lag + lag + n], b[max_lag: max_lag + n])[0, 1]
              for lag in range(-max_lag, max_lag + 1)]
    best = int(np.argmax(scores))
    return best - max_lag, float(scores[best])

