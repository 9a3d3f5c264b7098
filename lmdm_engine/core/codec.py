"""Streaming spectral codec: log-magnitude on a fitted PCA basis, decoded with peak-locked phases.

Latent of frame j: the log-magnitude spectrum ``log(|X_j| + log_floor)`` (sqrt-Hann STFT, ``n_fft`` points, hop
``n_fft / 2``) minus its corpus mean, weighted toward the low bins (:func:`bin_weights`) and projected on the first
``latent_size`` principal components of the corpus (``Codec.fit``; saved beside the model as ``codec.safetensors``). A 1,026-value complex latent left a 192-wide model
unable to move most of its output (the hiss of the first models); 128 smooth numbers a frame it can generate.

Decoding rebuilds the phases from the magnitudes alone, frame by frame with no look-ahead: a phase vocoder with
rigid phase locking (Laroche & Dolson 1999). Each spectral peak's frequency comes from a parabola through its
log-magnitude, its phase advances by the mean of that frequency and the previous frame's over one hop, and every
bin down to the troughs either side takes the peak's phase, turned by pi in the window's side lobes (the sine
window's transform changes sign every bin past 1.5 bins from its centre). On real magnitudes this scores a log-mel
Fréchet distance of about 1.4 against the original audio, on the 128-component basis about 12 (docs/SOUND.md).

Frame ``j`` of a stream covers samples ``[j*hop - (n_fft-hop), j*hop + hop)``: encoding needs no look-ahead (the
previous ``n_fft - hop`` samples are the encoder state), and decoding is the windowed overlap-add whose last
``n_fft - hop`` samples are the decoder state, so the reconstruction is delayed by ``n_fft - hop`` samples.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Iterable

import numpy as np

from .config import ConfigError, ModelConfig

# Bump when the latent representation changes: cached training latents are keyed on it.
CODEC_VERSION = "log-pca-plv-1"
CODEC_NAME = "codec.safetensors"
LEVEL_PASSES = 3  # match_level's passes (the basis holds a constant offset only nearly; hosts repeat them too)
FIT_FRAMES = 200_000  # frames a basis is fitted on at most (evenly spread over the clips)


def sine_window(n: int) -> np.ndarray:
    """sqrt-periodic-Hann: w^2(i) + w^2(i + n/2) = 1, so 50% overlap-add of analysis x synthesis is exact."""
    return np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n))


def frame_spectra(windows: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Frames [..., n_fft] -> complex spectra [..., bins] of the windowed frames, in float64 (as the ONNX graph)."""
    return np.fft.rfft(windows * window, axis=-1)


def bin_weights(config: ModelConfig) -> np.ndarray:
    """Weights [bins] of the bins in the basis fit: the square root of the mel scale's density (d mel / d Hz,
    HTK), mean 1. Unweighted, the principal components spend themselves on the many high bins and blur the low
    harmonics that carry the pitch: 128 components kept 70% of the corpus's pitched frames within 50 cents,
    weighted 97% (benchmarks/bench_codec.py)."""
    root = np.sqrt(1.0 / (700.0 + np.fft.rfftfreq(config.n_fft, 1.0 / config.sample_rate)))
    return root / root.mean()


class Codec:
    """One model's codec: its config (rates and sizes) and the fitted basis: mean [bins], components
    [latent_size, bins] (orthonormal rows, over log-magnitudes times ``weights`` [bins]); ``typical_level``, the
    median ``level`` of the fitting clips' blocks (None in files from before it was kept)."""

    def __init__(self, config: ModelConfig, mean: np.ndarray, components: np.ndarray, weights: np.ndarray,
                 typical_level: float | None = None):
        bins = config.n_fft // 2 + 1
        if mean.shape != (bins,) or weights.shape != (bins,) or components.shape != (config.latent_size, bins):
            raise ConfigError(f"codec basis of shapes {mean.shape}, {components.shape}, {weights.shape} does not fit "
                              f"the config (expected ({bins},), ({config.latent_size}, {bins}), ({bins},))")
        self.config, self.typical_level = config, typical_level
        self.mean = np.ascontiguousarray(mean, np.float32)
        self.components = np.ascontiguousarray(components, np.float32)
        self.weights = np.ascontiguousarray(weights, np.float32)
        # the two maps as matrices, float64: log-magnitude @ encoder [bins, K]; latents @ decoder [K, bins]
        self.encoder = self.weights.astype(np.float64)[:, None] * self.components.T.astype(np.float64)
        self.decoder = self.components.astype(np.float64) / self.weights.astype(np.float64)
        self._mean64 = self.mean.astype(np.float64)
        self.level_shift = np.ones(bins) @ self.encoder  # [K]: the latent of a constant log-magnitude offset
        self._shift_image = self.level_shift @ self.decoder  # [bins]: what that latent decodes to (nearly ones)
        self.window = sine_window(config.n_fft)  # float64: analysis
        self.synthesis_window = self.window.astype(np.float32)

    @property
    def latency_samples(self) -> int:
        return self.config.codec_latency

    @property
    def key(self) -> str:
        """Names this exact latent space (version, framing, basis): cached latents are keyed on it."""
        h = hashlib.sha1(CODEC_VERSION.encode())
        for part in (self.config.sample_rate, self.config.n_fft, self.config.hop, self.config.log_floor):
            h.update(repr(part).encode())
        for part in (self.mean, self.components, self.weights):
            h.update(part.tobytes())
        return h.hexdigest()[:10]

    # ---- the latent map ------------------------------------------------------------------------
    def log_magnitude(self, spectra: np.ndarray) -> np.ndarray:
        return np.log(np.abs(spectra) + self.config.log_floor)

    def to_latent(self, log_mag: np.ndarray) -> np.ndarray:
        """[..., bins] -> [..., latent_size] float32 (computed in float64: the same frame gives the same latent
        however the frames were blocked into matrix products)."""
        return ((log_mag - self._mean64) @ self.encoder).astype(np.float32)

    @property
    def log_range(self) -> tuple[float, float]:
        """Log-magnitudes a decoder produces: from silence, log(log_floor), to log(n_fft), above the STFT peak of a
        sine of amplitude 3 (about amplitude * n_fft / pi): a spectrum guided past it would otherwise play at any
        level."""
        return math.log(self.config.log_floor), math.log(self.config.n_fft)

    def from_latent(self, latents: np.ndarray) -> np.ndarray:
        """[..., latent_size] -> log-magnitude [..., bins] float64 (the projection on the basis, within
        ``log_range``): float64, so that which bin is a peak does not depend on how frames were blocked into matrix
        products."""
        return np.clip(np.asarray(latents, np.float64) @ self.decoder + self._mean64, *self.log_range)

    def level(self, latents: np.ndarray) -> np.ndarray:
        """Loudness of latent frames [B, F, K]: the log (natural) RMS magnitude over their frames and bins, [B]."""
        return _log_rms(self.from_latent(latents))

    def match_level(self, latents: np.ndarray, target: np.ndarray, passes: int = LEVEL_PASSES) -> np.ndarray:
        """Latents [B, F, K] float32 moved along a constant log-magnitude offset until their ``level`` is
        ``target`` [B] (each pass closes most of the gap: the basis holds the constant only nearly). The shift is
        linear before the clip to ``log_range``, so the basis product runs once and each pass moves its result by
        the shift's own image (what a host repeating ``level`` on shifted latents computes, to float rounding)."""
        latents, target = np.asarray(latents, np.float32), np.asarray(target, np.float64)
        unclipped = np.asarray(latents, np.float64) @ self.decoder + self._mean64  # [B, F, bins]
        shift = np.zeros(latents.shape[0])
        for _ in range(passes):
            moved = np.clip(unclipped + shift[:, None, None] * self._shift_image, *self.log_range)
            shift += target - _log_rms(moved)
        return (latents + shift[:, None, None] * self.level_shift).astype(np.float32)

    # ---- fitting and persistence -------------------------------------------------------------------
    @classmethod
    def fit(cls, config: ModelConfig, clips: Iterable[np.ndarray], weights: np.ndarray | None = None) -> "Codec":
        """Principal components of the weighted log-magnitude frames of mono ``clips`` (at ``config.sample_rate``;
        ``weights`` [bins], by default :func:`bin_weights`)."""
        window = sine_window(config.n_fft)
        frames = []
        for audio in clips:
            audio = np.concatenate([np.zeros(config.codec_latency, np.float32), np.asarray(audio, np.float32)])
            if audio.shape[0] >= config.n_fft:
                windows = np.lib.stride_tricks.sliding_window_view(audio, config.n_fft)[::config.hop]
                frames.append(np.log(np.abs(frame_spectra(windows, window)) + config.log_floor))
        if not frames:
            raise ValueError(f"fitting a codec needs clips of at least {config.n_fft} samples")
        data = np.concatenate(frames)
        data = data[:: max(1, data.shape[0] // FIT_FRAMES)].astype(np.float64)
        bins = config.n_fft // 2 + 1
        if data.shape[0] < 2 or min(data.shape[0], bins) < config.latent_size:
            raise ValueError(f"fitting {config.latent_size} components needs at least {config.latent_size} "
                             f"frames, got {data.shape[0]}")
        mean = data.mean(0)
        weights = bin_weights(config) if weights is None else np.asarray(weights, np.float64)
        values, vectors = np.linalg.eigh(np.cov((data - mean) * weights, rowvar=False))
        components = vectors[:, np.argsort(values)[::-1][: config.latent_size]].T
        components *= np.sign(components.sum(1, keepdims=True) + 1e-12)  # a fixed sign per component
        codec = cls(config, mean, components, weights)
        blocks = [f[i:i + config.block_frames] for f in frames
                  for i in range(0, f.shape[0] - config.block_frames + 1, config.block_frames)]
        if blocks:
            codec.typical_level = float(np.median(codec.level(codec.to_latent(np.stack(blocks)))))
        return codec

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(folder) / CODEC_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {"mean": self.mean, "components": self.components, "weights": self.weights}
        if self.typical_level is not None:
            tensors["typical_level"] = np.array([self.typical_level], np.float32)
        save_file(tensors, str(tmp), metadata={"codec": CODEC_VERSION})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, folder: str | Path, config: ModelConfig | None = None) -> "Codec":
        from safetensors import SafetensorError, safe_open

        folder = Path(folder)
        config = config or ModelConfig.load(folder)
        path = folder / CODEC_NAME
        if not path.is_file():
            raise ConfigError(f"{path}: missing (a model folder holds its codec basis beside config.json)")
        try:
            with safe_open(str(path), "numpy") as f:
                version = (f.metadata() or {}).get("codec")
                if version != CODEC_VERSION:
                    raise ConfigError(f"{path}: codec {version!r}; this lmdm reads {CODEC_VERSION!r}")
                level = float(f.get_tensor("typical_level")[0]) if "typical_level" in f.keys() else None
                return cls(config, *(f.get_tensor(name) for name in ("mean", "components", "weights")), level)
        except (SafetensorError, OSError, KeyError) as e:
            raise ConfigError(f"{path}: not a readable codec basis ({e})") from None


def _log_rms(log_mag: np.ndarray) -> np.ndarray:
    """The log RMS magnitude [B] of log-magnitudes [B, F, bins] over their frames and bins."""
    return 0.5 * np.log(np.mean(np.exp(2.0 * log_mag), axis=(1, 2)))


def peak_locked_phases(log_mag: np.ndarray, psi: np.ndarray, omega: np.ndarray, hop: int, n_fft: int):
    """Phases for log-magnitude frames [C, F, bins] after the previous frame's state: ``psi`` [C, bins], the
    frame-centred phase each bin took, and ``omega`` [C, bins], the frequency (radians a sample) of the peak it
    followed (see the module docstring). Returns (centred phases [C, F, bins] float32 in [-pi, pi], signs [C, F,
    bins] (+-1: the frame's linear phase, (-1)^k, times the window's side-lobe sign), psi, omega): bin k of
    frame j is ``sign * |X| * exp(i phase)``. Everything but the phase recursion runs on all frames at once."""
    c, f, bins = log_mag.shape
    n = log_mag.size
    k = np.arange(bins, dtype=np.int16)
    rising = np.zeros(log_mag.shape, bool)
    np.less(log_mag[..., :-1], log_mag[..., 1:], out=rising[..., :-1])
    peak = np.zeros(log_mag.shape, bool)
    np.greater(rising[..., :-2], rising[..., 1:-1], out=peak[..., 1:-1])  # rose into k and does not rise after it
    # the nearest peak on either side of each bin, over the flattened frames (then kept to the bin's own frame)
    peaks = np.flatnonzero(peak)
    left = np.repeat(np.append(-1, peaks), np.diff(peaks, prepend=0, append=n)).reshape(log_mag.shape)
    right = np.repeat(np.append(peaks, n), np.diff(peaks + 1, prepend=0, append=n)).reshape(log_mag.shape)
    start = (np.arange(c * f) * bins).reshape(c, f, 1)  # each frame's first flat position
    has_left, has_right = left >= start, right < start + bins
    # each bin belongs to the peak its slope climbs to: the right one where the spectrum rises, else the left
    # (and with no peak that way, to itself)
    owned = np.where((rising & has_right) | ~has_left, np.where(has_right, right, start + k), left)  # flat
    owner = owned - start
    # each peak's fractional position: a parabola through its log-magnitude and its neighbours
    flat = log_mag.reshape(-1)
    a, b, d = flat[peaks - 1], flat[peaks], flat[peaks + 1]
    curve = a - 2 * b + d
    offset = np.zeros(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        offset[peaks] = np.where(curve < 0, np.clip(0.5 * (a - d) / curve, -0.5, 0.5), 0.0)
    centre = owner + offset.take(owned)
    lobe = np.floor(np.maximum(np.abs(k - centre), 0.5) - 0.5).astype(np.int16)  # 0 in the main lobe
    sign = 1.0 - 2.0 * ((lobe + k) & 1).astype(np.float32)
    freq = (2 * np.pi / n_fft) * centre  # [C, F, bins] float64: the owning peak's frequency
    advance = np.empty(freq.shape)  # phase advance over the hop into each frame: the mean of both frequencies
    advance[:, 0] = omega
    advance[:, 1:] = freq[:, :-1]
    advance += freq
    advance *= 0.5 * hop
    owner += (np.arange(c) * bins)[:, None, None]  # into [C * bins]: the frames' phases side by side
    out = np.empty(log_mag.shape)
    for j in range(f):
        psi = (psi + advance[:, j]).take(owner[:, j])
        out[:, j] = psi
    out -= (2 * np.pi) * np.rint(out / (2 * np.pi))  # into [-pi, pi]: bounded in endless streams
    return out.astype(np.float32), sign, out[:, -1].copy(), freq[:, -1].copy()


class StreamingCodec:
    """Encode audio chunks (multiples of ``hop``) to latent frames and back, carrying explicit state.

    Audio is ``[channels, samples]`` float32; latents are ``[channels, frames, latent_size]``.
    """

    def __init__(self, codec: Codec, channels: int):
        self.codec, self.config, self.channels = codec, codec.config, channels
        self.reset()

    @property
    def latency_samples(self) -> int:
        return self.codec.latency_samples

    def reset(self) -> None:
        cfg, c = self.config, self.channels
        overlap, bins = cfg.n_fft - cfg.hop, cfg.n_fft // 2 + 1
        self.state = {
            "encoder_history": np.zeros((c, overlap), np.float32),
            "decoder_overlap": np.zeros((c, overlap), np.float32),
            "decoder_phase": np.zeros((c, bins), np.float64),
            "decoder_frequency": np.zeros((c, bins), np.float64),
        }

    def encode(self, audio: np.ndarray) -> np.ndarray:
        cfg = self.config
        if audio.ndim != 2 or audio.shape[0] != self.channels:
            raise ValueError(f"codec expects audio [{self.channels}, samples], got shape {audio.shape}")
        if audio.shape[1] % cfg.hop:
            raise ValueError(f"codec chunk of {audio.shape[1]} samples is not a multiple of hop {cfg.hop}")
        buf = np.concatenate([self.state["encoder_history"], audio.astype(np.float32)], 1)  # [C, overlap + S]
        self.state["encoder_history"] = buf[:, buf.shape[1] - (cfg.n_fft - cfg.hop):]
        windows = np.lib.stride_tricks.sliding_window_view(buf, cfg.n_fft, axis=1)[:, ::cfg.hop]  # [C, F, n_fft]
        spectra = frame_spectra(windows, self.codec.window)
        return self.codec.to_latent(self.codec.log_magnitude(spectra))

    def decode(self, latents: np.ndarray) -> np.ndarray:
        cfg, codec = self.config, self.codec
        if latents.ndim != 3 or latents.shape[0] != self.channels or latents.shape[2] != cfg.latent_dim:
            raise ValueError(f"codec expects latents [{self.channels}, frames, {cfg.latent_dim}], got {latents.shape}")
        frames = latents.shape[1]
        log_mag = codec.from_latent(latents)  # [C, F, bins]
        phase, sign, self.state["decoder_phase"], self.state["decoder_frequency"] = peak_locked_phases(
            log_mag, self.state["decoder_phase"], self.state["decoder_frequency"], cfg.hop, cfg.n_fft)
        mag = (np.exp(log_mag.astype(np.float32)) - cfg.log_floor) * sign
        spectra = np.empty(mag.shape, np.complex64)
        np.multiply(mag, np.cos(phase), out=spectra.real)
        np.multiply(mag, np.sin(phase), out=spectra.imag)
        segments = np.fft.irfft(spectra, cfg.n_fft, axis=-1)  # [C, F, n_fft] float32
        segments *= codec.synthesis_window
        out = np.zeros((self.channels, (frames + 1) * cfg.hop), np.float32)
        out[:, : cfg.hop] = self.state["decoder_overlap"]
        # 50% overlap: each segment is two hops, its first half completes the previous one's second half
        halves = segments.reshape(self.channels, frames, 2, cfg.hop)
        out[:, : frames * cfg.hop] += halves[:, :, 0].reshape(self.channels, -1)
        out[:, cfg.hop:] += halves[:, :, 1].reshape(self.channels, -1)
        self.state["decoder_overlap"] = out[:, frames * cfg.hop:].copy()
        return out[:, : frames * cfg.hop]


def encode_clip(codec: Codec, audio: np.ndarray) -> np.ndarray:
    """Encode a whole mono clip ``[samples]`` (trimmed to a multiple of hop) from a fresh state: ``[frames, D]``."""
    hop = codec.config.hop
    usable = (audio.shape[-1] // hop) * hop
    return StreamingCodec(codec, 1).encode(audio[None, :usable])[0]


def decode_clip(codec: Codec, latents: np.ndarray) -> np.ndarray:
    """Decode ``[frames, D]`` from a fresh state, dropping the codec latency so it aligns with the source clip.

    The last ``hop`` samples lack the next frame's overlapping window (they fade out)."""
    cfg = codec.config
    stream = StreamingCodec(codec, 1)
    audio = stream.decode(latents[None])[0]
    tail = stream.state["decoder_overlap"][0]  # the last segment's second half, with nothing to complete it
    return np.concatenate([audio, tail])[cfg.codec_latency: cfg.codec_latency + audio.shape[0]]
