"""Samplers are stateless, share one signature, and integrate an exact flow exactly."""

import numpy as np
import pytest
import torch

from lmdm_engine.sampling import SAMPLERS, generate_block, get_sampler, time_schedule


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
