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
