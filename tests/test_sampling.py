"""Samplers are stateless, share one signature, and integrate an exact flow exactly."""

import numpy as np
import pytest
import torch

from lmdm_engine.core.sampling import SAMPLERS, get_sampler, time_schedule
from lmdm_engine.runtime.latent_stream import generate_block

from conftest import debug_torch_runtime


def test_schedule():
    s = time_schedule(4, 1.0)
    assert np.allclose(s, [1, 0.75, 0.5, 0.25, 0])
    shifted = time_schedule(4, 1.0, shift=3.0)
    assert shifted[0] == pytest.approx(1.0) and shifted[-1] == 0 and np.all(np.diff(shifted) < 0)
    assert shifted[2] > s[2]  # spends more steps at high noise
    assert time_schedule(3, 0.4)[0] == pytest.approx(0.4)
    with pytest.raises(ValueError):
        time_schedule(0)
    with pytest.raises(ValueError):
        time_schedule(2, 1.5)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_exact_velocity_reaches_the_data(name, backend):
    """For a single data point a, v(x, t) = (x - a) / t is the exact flow; every sampler must land on a."""
    rng = np.random.default_rng(0)
    a, x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    if backend == "torch":
        a, x = torch.from_numpy(a), torch.from_numpy(x)
    noise = (lambda y: torch.randn_like(y)) if backend == "torch" else (lambda y: rng.standard_normal(y.shape))
    out = get_sampler(name)(lambda y, t: (y - a) / t, x, time_schedule(7, 1.0), noise)
    assert type(out) is type(x)
    assert np.allclose(np.asarray(out), np.asarray(a), atol=1e-5)


def test_unknown_sampler():
    with pytest.raises(ValueError, match="euler"):
        get_sampler("heun")


class _Recorder:
    """A runtime stand-in that records the times it is asked for."""

    def __init__(self):
        self.times = []

    def velocity(self, state, x, t, style):
        self.times.append(t)
        return np.zeros_like(x)


def test_generate_block_strength():
    rt = _Recorder()
    delayed = np.ones((1, 4, 2), np.float32)
    noise = lambda x: np.full(x.shape, 3.0, np.float32)
    out = generate_block(rt, {}, delayed, 0.0, 4, "euler", None, noise)
    assert np.array_equal(out, delayed) and rt.times == []  # strength 0: a plain delay, no model call
    out = generate_block(rt, {}, delayed, 0.5, 2, "euler", None, noise)
    assert rt.times == [0.5, 0.25]  # starts at t = strength
    assert np.allclose(out, 0.5 * 1 + 0.5 * 3)  # zero velocity keeps the noised start


class _StyleEcho:
    """A runtime stand-in whose velocity is the sum of the conditioning vector, recording each call's vector."""

    def __init__(self, config):
        self.config, self.styles = config, []

    def velocity(self, state, x, t, style):
        self.styles.append(np.array(style))
        return np.full(x.shape, float(np.sum(style)), np.float32)


def test_guidance_contrasts_the_conditional_with_the_unconditional_velocity(monkeypatch):
    from lmdm_engine.core.conditioning import TEXT_ENCODER, conditioning_vector
    from lmdm_engine.runtime import latent_stream

    monkeypatch.setattr(latent_stream, "GUIDANCE_RESCALE", 0.0)  # plain guidance first
    from lmdm_engine.core.config import debug_config

    cfg = debug_config(text_dim=384, text_encoder=TEXT_ENCODER, accompaniment=True)
    style = conditioning_vector(cfg, {"bell": 1.0}, np.full(384, 0.01, np.float32), accompany=True)[None]
    cond, uncond = float(style.sum()), 1.0  # the unconditional vector keeps only the accompaniment flag
    delayed = np.zeros((1, 4, 2), np.float32)
    noise = lambda x: np.full(x.shape, 3.0, np.float32)
    rt = _StyleEcho(cfg)
    out = generate_block(rt, {}, delayed, 1.0, 2, "euler", style, noise, guidance=2.5)
    assert len(rt.styles) == 4  # two calls a step: the conditional one first
    np.testing.assert_array_equal(rt.styles[0], style)
    np.testing.assert_array_equal(rt.styles[1][0, :len(cfg.style_vocab)], 0.0)
    assert rt.styles[1].sum() == 1.0
    assert np.allclose(out, 3.0 - (uncond + 2.5 * (cond - uncond)))  # x(0) = x(1) - v for a constant v
    rt = _StyleEcho(cfg)
    out = generate_block(rt, {}, delayed, 1.0, 2, "euler", style, noise, guidance=1.0)
    assert len(rt.styles) == 2 and np.allclose(out, 3.0 - cond)  # guidance 1: one call a step, no contrast
    # rescaled: one Euler step lands on the guided clean estimate brought to the conditional one's RMS
    monkeypatch.setattr(latent_stream, "GUIDANCE_RESCALE", 1.0)
    out = generate_block(_StyleEcho(cfg), {}, delayed, 1.0, 1, "euler", style, noise, guidance=2.5)
    guided = 3.0 - (uncond + 2.5 * (cond - uncond))
    assert np.allclose(out, np.sign(guided) * abs(3.0 - cond), atol=1e-5)


def test_guidance_on_a_real_model():
    from lmdm_engine.core.conditioning import TEXT_ENCODER, conditioning_vector, embed_prompt

    from conftest import random_model

    rt = debug_torch_runtime(random_model(1, text_dim=384, text_encoder=TEXT_ENCODER))
    cfg = rt.config
    state = rt.append_context(rt.new_state(1), np.random.default_rng(0).standard_normal(
        (1, 8, cfg.latent_dim)).astype(np.float32))
    style = conditioning_vector(cfg, {"bell": 1.0}, embed_prompt("bright glassy bells", cfg))[None]
    delayed = np.zeros((1, 6, cfg.latent_dim), np.float32)

    def block(**kwargs):
        rng = np.random.default_rng(5)
        noise = lambda x: rng.standard_normal(x.shape).astype(np.float32)
        return generate_block(rt, state, delayed, 1.0, 3, "pingpong", style, noise, **kwargs)

    plain = block()
    np.testing.assert_array_equal(block(guidance=1.0), plain)
    assert np.abs(block(guidance=3.0) - plain).max() > 1e-3
