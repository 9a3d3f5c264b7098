"""Audio arrays as every layer takes them: float, channels first; the test tone checks and examples play; a FIFO."""

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
    if a.dtype.kind != "f":  # (a float dtype; cheaper than np.issubdtype on the hot path)
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


class Fifo:
    """A first-in first-out queue of audio [channels, samples] in one preallocated buffer (a ring whose contents
    are moved back to its start when the end is reached, so that a read is one contiguous view)."""

    def __init__(self, channels: int, capacity: int = 1 << 14):
        self._buf = np.zeros((channels, capacity), np.float32)
        self._start = self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    def write(self, audio: np.ndarray) -> None:
        n, held = audio.shape[1], len(self)
        if self._end + n > self._buf.shape[1]:
            buf = self._buf if held + n <= self._buf.shape[1] else np.zeros(
                (self._buf.shape[0], 2 * (held + n)), np.float32)
            buf[:, :held] = self._buf[:, self._start:self._end]
            self._buf, self._start, self._end = buf, 0, held
        self._buf[:, self._end:self._end + n] = audio
        self._end += n

    def read(self, n: int) -> np.ndarray:
        """The oldest ``n`` samples [channels, n]: a view, valid until the next write."""
        if n > len(self):
            raise ValueError(f"read({n}) from a FIFO holding {len(self)} samples")
        self._start += n
        return self._buf[:, self._start - n:self._start]
