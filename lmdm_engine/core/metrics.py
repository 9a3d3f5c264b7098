"""Audio metrics in numpy only: STFT magnitude, log-mel features, Fréchet distance of their statistics, SNR."""

from __future__ import annotations

import numpy as np

LOG_EPS = 1e-5


def stft_magnitude(audio: np.ndarray, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """|STFT| with a periodic Hann window, centred frames (zero-padded n_fft // 2 each side).

    audio [..., samples] -> [..., frames, n_fft // 2 + 1]; frame t is centred on sample t * hop.
    """
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim == 0 or audio.shape[-1] == 0:
        raise ValueError(f"expected audio of shape [..., samples] with samples > 0, got {audio.shape}")
    if n_fft < 2 or hop < 1:
        raise ValueError(f"need n_fft >= 2 and hop >= 1, got n_fft={n_fft}, hop={hop}")
    padded = np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(n_fft // 2, n_fft // 2)])
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[..., ::hop, :]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    return np.abs(np.fft.rfft(frames * window, axis=-1))


def hz_to_mel(hz):
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    """Inverse of hz_to_mel."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular filters [n_mels, n_fft // 2 + 1], equally spaced in HTK mel, Slaney area-normalised."""
    fmax = sample_rate / 2 if fmax is None else fmax
    if not (0 <= fmin < fmax <= sample_rate / 2) or n_mels < 1 or n_fft < 2:
        raise ValueError(
            f"need 0 <= fmin < fmax <= sample_rate / 2, n_mels >= 1, n_fft >= 2; "
            f"got fmin={fmin}, fmax={fmax}, sample_rate={sample_rate}, n_mels={n_mels}, n_fft={n_fft}"
        )
    bin_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (upper - lower))


def log_mel(
    audio: np.ndarray, sample_rate: int, n_fft: int = 1024, hop: int = 256, n_mels: int = 64
) -> np.ndarray:
    """Log-mel frames [frames, n_mels] = log(mel power + 1e-5) of mono audio.

    audio [..., samples]: clips along leading axes are stacked along the frame axis (one pooled frame set).
    """
    power = stft_magnitude(audio, n_fft, hop) ** 2
    mel = power.reshape(-1, power.shape[-1]) @ mel_filterbank(sample_rate, n_fft, n_mels).T
    return np.log(mel + LOG_EPS)


def mel_statistics(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased) of feature frames [N, D], N >= 2."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 2 or frames.shape[0] < 2:
        raise ValueError(f"expected frames of shape [N >= 2, D], got {frames.shape}")
    return frames.mean(axis=0), np.cov(frames, rowvar=False).reshape(frames.shape[1], frames.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance between Gaussians: ||mu1-mu2||^2 + tr(c1 + c2 - 2 (c1^1/2 c2 c1^1/2)^1/2), >= 0."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    cov1, cov2 = np.asarray(cov1, dtype=np.float64), np.asarray(cov2, dtype=np.float64)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"shapes must be [D], [D, D], [D], [D, D]; got {mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}"
        )
    root1 = _psd_sqrt(cov1)
    cross = root1 @ cov2 @ root1
    cross = np.linalg.eigvalsh((cross + cross.T) / 2)
    trace = np.trace(cov1) + np.trace(cov2) - 2.0 * np.sqrt(np.clip(cross, 0.0, None)).sum()
    return max(0.0, float(np.sum((mu1 - mu2) ** 2) + trace))


def snr_db(reference, estimate) -> float:
    """SNR of estimate against reference in dB: 10 log10(|ref|^2 / |ref - est|^2); inf when they are equal."""
    reference, estimate = np.asarray(reference, dtype=np.float64), np.asarray(estimate, dtype=np.float64)
    if reference.shape != estimate.shape:
        raise ValueError(f"reference {reference.shape} and estimate {estimate.shape} must have the same shape")
    noise = np.sum((reference - estimate) ** 2)
    if noise == 0:
        return float("inf")
    with np.errstate(divide="ignore"):  # a silent reference gives -inf
        return float(10.0 * np.log10(np.sum(reference**2) / noise))


# ---- tonal measures (the sound-quality benchmark, benchmarks/bench_sound.py) ------------------------------------
PITCH_FMIN, PITCH_FMAX = 50.0, 1000.0  # Hz: the pitch range harmonicity and the pitch tracker search
YIN_THRESHOLD = 0.15  # cumulative-mean-normalised difference below which a frame is voiced (de Cheveigné & Kawahara)


def level_db(audio) -> float:
    """RMS level in dBFS (-240 for silence)."""
    a = np.asarray(audio, dtype=np.float64)
    return float(20.0 * np.log10(np.sqrt(np.mean(a * a)) + 1e-12))


def _active(energy: np.ndarray, below_db: float) -> np.ndarray:
    """Frames whose energy is within ``below_db`` of the loudest frame (all False for silence)."""
    db = 10.0 * np.log10(energy + 1e-20)
    return (db > db.max() - below_db) & (energy > 1e-12)


def spectral_flatness(audio, sample_rate: int, lo: float = 50.0, hi: float = 10000.0, below_db: float = 40.0,
                      range_db: float = 60.0) -> float:
    """Median over active frames of the power spectrum's geometric over arithmetic mean between ``lo`` and ``hi``
    Hz (1024-point Hann frames, hop 256), each bin floored ``range_db`` under the frame's loudest (what lies
    further down is inaudible under it, and would make the measure of clean synthetic tones arbitrarily small):
    0.56 for white noise, near 10^(-range_db/10) for one partial; NaN for silence."""
    power = stft_magnitude(audio, 1024, 256) ** 2
    freqs = np.fft.rfftfreq(1024, 1.0 / sample_rate)
    band = power.reshape(-1, power.shape[-1])[:, (freqs >= lo) & (freqs <= min(hi, sample_rate / 2))]
    band = np.maximum(band, band.max(-1, keepdims=True) * 10.0 ** (-range_db / 10.0)) + 1e-20
    active = _active(band.sum(-1), below_db)
    if not active.any():
        return float("nan")
    flat = np.exp(np.mean(np.log(band), -1)) / np.mean(band, -1)
    return float(np.median(flat[active]))


def _difference(audio, sample_rate: int, frame: int = 2048, hop: int = 512):
    """Per-frame normalised autocorrelation r(tau) / sqrt(e_head e_tail) over the overlap and the YIN difference
    d(tau) = e_head + e_tail - 2 r(tau), for lags 0..frame-1: ([frames, frame], [frames, frame], energy [frames])."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    n = (x.shape[0] - frame) // hop + 1
    if n < 1:
        raise ValueError(f"need at least {frame} samples, got {x.shape[0]}")
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop][:n]
    frames = frames - frames.mean(-1, keepdims=True)
    r = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * frame)) ** 2)[:, :frame]
    cum = np.concatenate([np.zeros((n, 1)), np.cumsum(frames**2, -1)], -1)
    lags = np.arange(frame)
    head = cum[:, frame - lags]  # energy of the first frame - tau samples
    tail = cum[:, -1:] - cum[:, lags]  # energy of the last frame - tau samples
    return r / np.sqrt(head * tail + 1e-20), head + tail - 2.0 * r, cum[:, -1]


def harmonicity(audio, sample_rate: int, below_db: float = 30.0) -> float:
    """Median over active frames of the peak normalised autocorrelation at pitch lags (PITCH_FMIN..PITCH_FMAX):
    near 1 for a periodic tone, near 0 for noise; NaN for silence."""
    corr, _, energy = _difference(audio, sample_rate)
    lo, hi = int(sample_rate / PITCH_FMAX), int(sample_rate / PITCH_FMIN)
    active = _active(energy, below_db)
    return float(np.median(corr[active, lo:hi].max(-1))) if active.any() else float("nan")


def pitch_track(audio, sample_rate: int, below_db: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """YIN pitch (de Cheveigné & Kawahara 2002): (f0 Hz [frames], voiced [frames] bool), frames of 2048 samples
    every 512. A frame is voiced when it is active and its cumulative-mean-normalised difference dips below
    YIN_THRESHOLD at a lag in the pitch range; the first such dip's local minimum, parabolically refined, is the
    period."""
    _, d, energy = _difference(audio, sample_rate)
    lags = np.arange(d.shape[1])
    cmnd = np.ones_like(d)
    cmnd[:, 1:] = d[:, 1:] * lags[1:] / np.maximum(np.cumsum(d[:, 1:], -1), 1e-20)
    lo, hi = int(sample_rate / PITCH_FMAX), int(sample_rate / PITCH_FMIN)
    band = cmnd[:, lo:hi]
    below = band < YIN_THRESHOLD
    first = np.where(below.any(-1), below.argmax(-1), -1)
    f0 = np.zeros(d.shape[0])
    voiced = (first >= 0) & _active(energy, below_db)
    for i in np.nonzero(voiced)[0]:
        j = first[i]
        while j + 1 < band.shape[1] and band[i, j + 1] < band[i, j]:  # walk down to the dip's minimum
            j += 1
        tau = float(lo + j)
        if 0 < j < band.shape[1] - 1:
            a, b, c = band[i, j - 1], band[i, j], band[i, j + 1]
            den = a - 2 * b + c
            tau += 0.5 * (a - c) / den if den > 0 else 0.0
        f0[i] = sample_rate / tau
    return f0, voiced


def pitch_kept(reference, estimate, sample_rate: int, cents: float = 50.0) -> float:
    """Share of the reference's voiced frames in which the estimate is voiced within ``cents`` of its pitch
    (NaN when the reference has no voiced frame). Both are mono and time-aligned."""
    f_ref, v_ref = pitch_track(reference, sample_rate)
    f_est, v_est = pitch_track(estimate, sample_rate)
    n = min(len(f_ref), len(f_est))
    f_ref, v_ref, f_est, v_est = f_ref[:n], v_ref[:n], f_est[:n], v_est[:n]
    if not v_ref.any():
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        close = np.abs(1200.0 * np.log2(f_est / f_ref)) <= cents
    return float(np.mean((v_est & close)[v_ref]))
