"""Rectified-flow samplers and schedules.

Samplers are stateless functions with one signature, ``sampler(velocity, x, schedule, noise) -> x``:
``velocity(x, t) -> v`` with ``x_t = (1 - t) x0 + t * noise`` and ``v = noise - x0``; ``schedule`` is a
decreasing sequence of times ending at 0; ``noise(x)`` draws fresh noise shaped like ``x`` (only ping-pong uses
it). They use plain arithmetic, so the same function runs on numpy arrays (the Session) and torch tensors
(training); ``runtime.latent_stream`` runs them against a KV cache.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def time_schedule(steps: int, t_max: float = 1.0, shift: float = 1.0) -> np.ndarray:
    """``steps + 1`` times from ``t_max`` down to 0, optionally shifted toward high noise (SD3-style
    ``t' = shift t / (1 + (shift - 1) t)``). Shifting keeps ``t_max`` fixed only when ``t_max`` is 1."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= t_max <= 1.0:
        raise ValueError(f"t_max must be in [0, 1], got {t_max}")
    t = np.linspace(t_max, 0.0, steps + 1)
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_euler(velocity: Callable, x, schedule, noise: Callable | None = None):
    """Deterministic Euler integration of the flow ODE along ``schedule``."""
    for t, t_next in zip(schedule[:-1], schedule[1:]):
        x = x + (t_next - t) * velocity(x, float(t))
    return x


def sample_pingpong(velocity: Callable, x, schedule, noise: Callable):
    """Ping-pong sampling: denoise fully, then re-noise to the next time with fresh noise.

    ``denoised = x - t v``; ``x_next = (1 - t_next) denoised + t_next * noise`` (as in the LMDM code).
    """
    for t, t_next in zip(schedule[:-1], schedule[1:]):
        denoised = x - float(t) * velocity(x, float(t))
        x = denoised if t_next <= 0 else (1.0 - t_next) * denoised + t_next * noise(x)
    return x


SAMPLERS = {"euler": sample_euler, "pingpong": sample_pingpong}


def get_sampler(name: str) -> Callable:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None
