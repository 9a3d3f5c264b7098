"""Audio arrays as every layer takes them: float, channels first; and the test tone checks and examples play."""

from __future__ import annotations

import numpy as np


def channels_first(audio, channels: int | tuple[int, int], what: str = "audio") -> np.ndarray:
    """``audio`` as a float array [channels, frames] (not copied; a 1-D array is mono where one channel is allowed).
    ``channels``: the count required, or the (lowest, highest) allowed. Raises a ValueError saying what was
    expected."""
    a = np.asarray(audio)
    low, high = (channels, channels) if isinstance(channels, int) else channels
    if a.ndim == 1 and low == 1:
        a = a[None, :]
    if a.ndim != 2 or not low <= a.shape[0] <= high:
        if low == high == 1:
            expected = "as mono audio [samples] (or [1, samples])"
        elif low == high:
            expected = f"of shape [{low}, frames] (channels first)"
        else:
            span = f"{low} or {high}" if high == low + 1 else f"{low} to {high}"
            expected = (f"of shape [channels, frames] with {span} channels"
                        + (" (or [frames] for mono)" if low == 1 else ""))
        hint = "; pass audio channels first (audio.T for [frames, channels])" if a.ndim == 2 and low != high else ""
        raise ValueError(f"expected {what} {expected}, got shape {np.shape(audio)}{hint}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected float {what}, got dtype {a.dtype}")
    return a


def tone(seconds: float, sample_rate: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A test signal: decaying band-limited notes plus a little noise, [channels, samples] float32 (each channel a
    little quieter than the one before)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    x = np.zeros_like(t)
    for i, f in enumerate(rng.uniform(150, 900, 6)):
        start = i * seconds / 6
        env = np.where(t >= start, np.exp(-4 * (t - start)), 0.0)
        x += 0.3 * env * np.sin(2 * np.pi * f * t)
    x += 0.01 * rng.standard_normal(t.shape)
    return np.stack([x * (1 - 0.2 * c) for c in range(channels)]).astype(np.float32)
