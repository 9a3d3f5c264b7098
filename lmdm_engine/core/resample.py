"""Band-limited streaming resampling: a Kaiser-windowed sinc applied as one matrix product per run of periods.

A conversion from ``source_rate`` to ``target_rate`` is L/M (in lowest terms, or a multiple giving at least
``MIN_PERIOD_OUTPUTS``): each period of M input samples gives L output samples, and output n is the input signal at input time n M / L. The output is time-aligned (the filter
adds no delay); it is held back instead, each output until the input its filter reaches has arrived, which is
the latency a stream pays (``inputs_for`` says exactly when). A period's L outputs are one window of input times a
fixed [W, L] matrix of kernel values, so a run of K periods is one [K, W] x [W, L] product (a conversion with a
long period, such as 44,056 Hz, splits it into tiles of outputs, each with its own matrix).

The filter keeps ``PASSBAND`` of the lower rate's Nyquist frequency flat (10 kHz at 22,050 Hz, within 1e-4 dB)
and attenuates everything from that Nyquist frequency up by ``STOPBAND_DB``, so nothing aliases into the output
band. At 48 kHz <-> 22,050 Hz each direction holds back 3.5 ms (docs/BENCHMARKS.md compares soxr and pedalboard).

Outputs are computed when they are read, one product per read: a fixed pattern of reads (as the Session makes)
gives bit-identical output, while different chunkings differ only by float rounding (BLAS picks kernels by size).
"""

from __future__ import annotations

import functools
import math

import numpy as np

PASSBAND = 10_000 / 11_025  # of the lower rate's Nyquist frequency: flat to here
STOPBAND_DB = 110.0  # attenuation from the lower rate's Nyquist frequency up
MIN_PERIOD_OUTPUTS = 64  # a row of the product has at least this many outputs (fewer: the windows cost more)
MAX_TILE_COEFFS = 1 << 20  # a period wider than this is split into tiles of outputs
MAX_CACHED_COEFFS = 1 << 23  # a conversion's matrices are kept when they fit (32 MiB), else built at each use


def _bessel_i0(x: np.ndarray) -> np.ndarray:
    """The modified Bessel function I0 by its power series (numpy's i0 is slow); to float64 rounding for x <= 15."""
    term, total = np.ones_like(x), np.ones_like(x)
    for k in range(1, 40):
        term *= (0.5 * x / k) ** 2
        total += term
    return total


class _Filter:
    """One conversion's filter: L/M, the kernel's reach, and a matrix per tile of a period's outputs (shared by
    every stream of that conversion: ``filter_for``)."""

    def __init__(self, source_rate: int, target_rate: int):
        g = math.gcd(source_rate, target_rate)
        self.source_rate, self.target_rate = source_rate, target_rate
        # short periods (44,100 -> 22,050 Hz is 1 output per 2 inputs) taken together, but the identity's
        periods = 1 if source_rate == target_rate else -(-MIN_PERIOD_OUTPUTS // (target_rate // g))
        self.up, self.down = periods * target_rate // g, periods * source_rate // g  # L outputs per M inputs
        if self.up == self.down:
            self.reach, self._beta, self._nu = 0, 0.0, 0.5  # the identity: one tap of 1
        else:
            nyquist = 0.5 * min(source_rate, target_rate)
            transition = (1 - PASSBAND) * nyquist  # Hz, from the passband's edge to the Nyquist frequency
            half_seconds = (STOPBAND_DB - 7.95) / (2.285 * 2 * np.pi * transition) / 2  # Kaiser's length formula
            self.reach = math.ceil(half_seconds * source_rate * self.up)  # in 1/L input samples
            self._beta = 0.1102 * (STOPBAND_DB - 8.7)
            self._nu = 0.5 * (1 + PASSBAND) * nyquist / source_rate  # the cutoff, in cycles per input sample
        size = self.up
        while size > 1 and self.tile_width(0, size) * size > MAX_TILE_COEFFS:
            size = (size + 1) // 2
        self.tiles = [(j0, min(self.up, j0 + size)) for j0 in range(0, self.up, size)]
        self.width = max(self.tile_width(j0, j1) for j0, j1 in self.tiles)
        fits = sum(self.tile_width(j0, j1) * (j1 - j0) for j0, j1 in self.tiles) <= MAX_CACHED_COEFFS
        self._cached = [(j0, j1, *self._matrix(j0, j1)) for j0, j1 in self.tiles] if fits else None

    def first_input(self, j: int) -> int:
        """The first input (counted from its period's start) that output j of a period reaches."""
        return -((self.reach - j * self.down) // self.up)

    def last_input(self, j: int) -> int:
        return (j * self.down + self.reach) // self.up

    def tile_width(self, j0: int, j1: int) -> int:
        """Inputs that outputs [j0, j1) of a period reach."""
        return self.last_input(j1 - 1) - self.first_input(j0) + 1

    def _kernel(self, offsets: np.ndarray) -> np.ndarray:
        """The windowed sinc at ``offsets`` (output time minus input time, in 1/L input samples), 0 past the reach."""
        if self.reach == 0:
            return (offsets == 0).astype(np.float64)
        x = offsets / self.up
        inside = np.abs(offsets) <= self.reach
        r = np.where(inside, offsets / self.reach, 1.0)
        window = _bessel_i0(self._beta * np.sqrt(1.0 - r * r)) / _bessel_i0(np.array(self._beta))
        return np.where(inside, 2 * self._nu * np.sinc(2 * self._nu * x) * window, 0.0)

    def _matrix(self, j0: int, j1: int) -> tuple[int, np.ndarray]:
        """Tile [j0, j1): its first input (from the period's start) and its matrix [W, j1 - j0] float32."""
        first = self.first_input(j0)
        inputs = np.arange(first, self.last_input(j1 - 1) + 1)
        offsets = np.arange(j0, j1)[None, :] * self.down - inputs[:, None] * self.up
        return first, self._kernel(offsets).astype(np.float32)

    def matrices(self):
        """(j0, j1, first input, matrix) of each tile: kept, or built now when they would not fit in memory."""
        if self._cached is not None:
            return self._cached
        return ((j0, j1, *self._matrix(j0, j1)) for j0, j1 in self.tiles)

    def outputs_for(self, inputs: int) -> int:
        """Outputs that the first ``inputs`` input samples make ready."""
        return max(0, -((self.reach - inputs * self.up) // self.down))

    def inputs_for(self, outputs: int) -> int:
        """Input samples that the first ``outputs`` outputs need (the inverse of outputs_for)."""
        return 0 if outputs <= 0 else ((outputs - 1) * self.down + self.reach) // self.up + 1


@functools.lru_cache(maxsize=16)
def filter_for(source_rate: int, target_rate: int) -> _Filter:
    return _Filter(source_rate, target_rate)


class Resampler:
    """A streaming sample-rate converter for ``channels`` channels: ``write`` input, ``read`` output (or
    ``process`` for both); ``flush`` ends the stream. Audio is float32 [channels, samples]."""

    def __init__(self, source_rate: int, target_rate: int, channels: int = 1):
        if min(source_rate, target_rate) <= 0 or int(source_rate) != source_rate or int(target_rate) != target_rate:
            raise ValueError(f"sample rates must be positive integers, got {source_rate} and {target_rate}")
        self.filter = filter_for(int(source_rate), int(target_rate))
        self.channels = channels
        self.reset()

    @property
    def available(self) -> int:
        """Outputs ready to read."""
        return max(0, self.filter.outputs_for(self._written) - self._read)

    def reset(self) -> None:
        """A new stream: silence before it, nothing written or read."""
        f = self.filter
        history = max(0, -f.first_input(0))  # zeros standing for the time before the stream
        self._margin = f.width + f.down  # zeros kept after the written input: the last window reaches them
        self._buf = np.zeros((self.channels, history + self._margin + 4096), np.float32)
        self._origin = history  # the column of input sample 0
        self._written = self._read = 0

    def write(self, audio: np.ndarray) -> None:
        """Append input [channels, samples]."""
        f, n = self.filter, audio.shape[1]
        end = self._origin + self._written
        if end + n + self._margin > self._buf.shape[1]:
            keep = self._origin + (self._read // f.up) * f.down + f.first_input(0)  # the first column still needed
            held = end - keep
            size = max(self._buf.shape[1], 2 * (held + n + self._margin))
            buf = np.zeros((self.channels, size), np.float32) if size > self._buf.shape[1] else self._buf
            buf[:, :held] = self._buf[:, keep:end]  # (numpy copies overlapping moves through a buffer)
            buf[:, held:end] = 0.0  # the columns left behind are zeros again
            self._buf, self._origin, end = buf, self._origin - keep, held
        self._buf[:, end:end + n] = audio
        self._written += n

    def read(self, count: int) -> np.ndarray:
        """The next ``count`` outputs (at most ``available``), [channels, count] float32."""
        if count > self.available:
            raise ValueError(f"read({count}) with {self.available} outputs ready")
        return self._compute(count)

    def process(self, audio: np.ndarray) -> np.ndarray:
        """Write ``audio`` and read every output it made ready."""
        self.write(audio)
        return self._compute(self.available)

    def flush(self) -> np.ndarray:
        """The outputs up to the end of the input written, as if silence followed it (the stream ends here)."""
        f = self.filter
        return self._compute(-((-self._written * f.up) // f.down) - self._read)

    def _compute(self, count: int) -> np.ndarray:
        f, c = self.filter, self.channels
        if count <= 0:
            return np.zeros((c, 0), np.float32)
        first, last = self._read, self._read + count
        k0 = first // f.up
        periods = -(-last // f.up) - k0
        rows = np.empty((c, periods, f.up), np.float32)  # whole periods of outputs
        buf, item = self._buf, self._buf.itemsize
        for j0, j1, start, matrix in f.matrices():
            column = self._origin + k0 * f.down + start  # [C, periods, W] windows, f.down apart: a view
            windows = np.ndarray((c, periods, matrix.shape[0]), np.float32, buf, column * item,
                                 (buf.strides[0], f.down * item, item))
            np.matmul(windows, matrix, out=rows[:, :, j0:j1])
        self._read = last
        return rows.reshape(c, periods * f.up)[:, first - k0 * f.up: last - k0 * f.up].copy()


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """A whole clip [channels, samples] (or [samples]) at ``target_rate``: ceil(samples * target / source) samples,
    time-aligned with the input."""
    audio = np.asarray(audio, np.float32)
    two_d = audio if audio.ndim == 2 else audio[None]
    if source_rate == target_rate:
        return audio.copy()
    r = Resampler(source_rate, target_rate, two_d.shape[0])
    r.write(two_d)
    out = r.flush()
    return out if audio.ndim == 2 else out[0]
