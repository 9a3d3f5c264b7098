"""Streaming spectral codec: amplitude-compressed STFT with phase advances, and overlap-add state.

Needs no learned weights, reconstructs exactly (float round-off only), and is numpy-only so the effect path
never imports torch. The STFT is a matrix product with a fixed real basis, which the ONNX exporter can reuse.

Latent of bin k in frame j: ``|X_jk|^compression * gain * exp(i (phi_jk - phi_(j-1)k - 2 pi k hop / n_fft))``,
real and imaginary parts stacked. Absolute STFT phase is close to random from frame to frame, so a model cannot
predict it from context; its advance relative to the bin's own rotation (the instantaneous-frequency deviation)
is constant for a sustained partial, so sustained sound has stationary latents a small model can continue.
The encoder and the decoder each carry the previous frame's phase per bin as state.

Frame ``j`` of a stream covers samples ``[j*hop - (n_fft-hop), j*hop + hop)``: encoding needs no look-ahead (the
previous ``n_fft - hop`` samples are the encoder state), and decoding is the windowed overlap-add whose last
``n_fft - hop`` samples are the decoder state, so the reconstruction is the input delayed by ``n_fft - hop``.
"""

from __future__ import annotations

import numpy as np

from .config import ModelConfig

# Bump when the latent representation changes: cached training latents are keyed on it.
CODEC_VERSION = "phase-advance-1"


class CodecBasis:
    """Fixed analysis / synthesis matrices for one config (sqrt-periodic-Hann window, 50% overlap)."""

    def __init__(self, config: ModelConfig):
        n, bins = config.n_fft, config.n_fft // 2 + 1
        window = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n))  # w^2(i) + w^2(i + n/2) = 1
        k = np.arange(bins)[None, :]
        phase = 2 * np.pi * np.arange(n)[:, None] * k / n  # [n, bins]
        # analysis: frame [.., n] @ [n, 2*bins] -> [re | im] of rfft(window * frame)
        self.analysis = np.concatenate([window[:, None] * np.cos(phase), -window[:, None] * np.sin(phase)], 1)
        # synthesis: [re | im] @ [2*bins, n] -> window * irfft
        scale = np.full(bins, 2.0 / n)
        scale[0] = scale[-1] = 1.0 / n
        synth_re = (scale[:, None] * np.cos(phase.T)) * window[None, :]
        synth_im = (-scale[:, None] * np.sin(phase.T)) * window[None, :]
        self.synthesis = np.concatenate([synth_re, synth_im], 0)
        self.analysis = self.analysis.astype(np.float32)
        self.synthesis = self.synthesis.astype(np.float32)
        self.config, self.bins, self.advance = config, bins, bin_advance(config)


def bin_advance(config: ModelConfig) -> np.ndarray:
    """Phase a bin's own frequency advances by in one hop, 2 pi k hop / n_fft, reduced mod 2 pi: [bins] float64.

    Unreduced, high bins advance by ~1,600 rad a hop, where float32 resolves only ~1e-4 rad, and the decoder's
    running phase would random-walk away from the encoder's over a long stream."""
    k = np.arange(config.n_fft // 2 + 1)
    return np.mod(2 * np.pi * k * config.hop / config.n_fft, 2 * np.pi)


def to_latent(spec: np.ndarray, prev_phase: np.ndarray, basis: CodecBasis) -> tuple[np.ndarray, np.ndarray]:
    """STFT frames [C, F, 2*bins] (re | im) -> (latents [C, F, 2*bins], phase of the last frame [C, bins])."""
    config, bins = basis.config, basis.bins
    re, im = spec[..., :bins], spec[..., bins:]
    mag = np.sqrt(re * re + im * im)
    phase = np.arctan2(im, re).astype(np.float64)  # [C, F, bins]
    before = np.concatenate([prev_phase[:, None, :], phase[:, :-1]], 1)  # previous frame's phase
    step = phase - before - basis.advance
    amp = config.latent_gain * mag**config.compression
    return np.concatenate([amp * np.cos(step), amp * np.sin(step)], -1), phase[:, -1]


def from_latent(latent: np.ndarray, prev_phase: np.ndarray, basis: CodecBasis) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_latent`: latents [C, F, 2*bins] -> (STFT frames re | im, phase of the last frame)."""
    config, bins = basis.config, basis.bins
    re, im = latent[..., :bins], latent[..., bins:]
    mag = (np.sqrt(re * re + im * im) / config.latent_gain) ** (1.0 / config.compression)
    step = np.arctan2(im, re).astype(np.float64) + basis.advance
    phase = prev_phase[:, None, :] + np.cumsum(step, 1)  # [C, F, bins], float64 so it does not drift
    phase = np.mod(phase + np.pi, 2 * np.pi) - np.pi  # keep the running phase bounded in endless streams
    return np.concatenate([mag * np.cos(phase), mag * np.sin(phase)], -1), phase[:, -1]


class StreamingCodec:
    """Encode audio chunks (multiples of ``hop``) to latent frames and back, carrying explicit state.

    Audio is ``[channels, samples]`` float32; latents are ``[channels, frames, latent_dim]``.
    """

    def __init__(self, config: ModelConfig, channels: int):
        self.config = config
        self.channels = channels
        self.basis = CodecBasis(config)
        self.reset()

    @property
    def latency_samples(self) -> int:
        return self.config.codec_latency

    def reset(self) -> None:
        overlap = self.config.n_fft - self.config.hop
        bins = self.config.n_fft // 2 + 1
        self.state = {
            "encoder_history": np.zeros((self.channels, overlap), np.float32),
            "encoder_phase": np.zeros((self.channels, bins), np.float64),
            "decoder_overlap": np.zeros((self.channels, overlap), np.float32),
            "decoder_phase": np.zeros((self.channels, bins), np.float64),
        }

    def _check_chunk(self, audio: np.ndarray) -> None:
        if audio.ndim != 2 or audio.shape[0] != self.channels:
            raise ValueError(f"codec expects audio [{self.channels}, samples], got shape {audio.shape}")
        if audio.shape[1] % self.config.hop:
            raise ValueError(f"codec chunk of {audio.shape[1]} samples is not a multiple of hop {self.config.hop}")

    def encode(self, audio: np.ndarray) -> np.ndarray:
        self._check_chunk(audio)
        cfg = self.config
        frames = audio.shape[1] // cfg.hop
        buf = np.concatenate([self.state["encoder_history"], audio.astype(np.float32)], 1)  # [C, overlap + S]
        self.state["encoder_history"] = buf[:, buf.shape[1] - (cfg.n_fft - cfg.hop):]
        # [C, overlap + S] -> [C, frames, n_fft] strided windows, one per hop
        idx = np.arange(frames)[:, None] * cfg.hop + np.arange(cfg.n_fft)[None, :]
        windows = buf[:, idx]
        latents, self.state["encoder_phase"] = to_latent(windows @ self.basis.analysis, self.state["encoder_phase"], self.basis)
        return latents.astype(np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        cfg = self.config
        if latents.ndim != 3 or latents.shape[0] != self.channels or latents.shape[2] != cfg.latent_dim:
            raise ValueError(f"codec expects latents [{self.channels}, frames, {cfg.latent_dim}], got {latents.shape}")
        frames = latents.shape[1]
        # [C, frames, latent_dim] -> [C, frames, n_fft] windowed time segments
        spec, self.state["decoder_phase"] = from_latent(latents.astype(np.float32), self.state["decoder_phase"], self.basis)
        segments = spec.astype(np.float32) @ self.basis.synthesis
        out = np.zeros((self.channels, (frames + 1) * cfg.hop), np.float32)
        out[:, : cfg.hop] = self.state["decoder_overlap"]
        # 50% overlap: each segment is two hops, its first half completes the previous one's second half
        halves = segments.reshape(self.channels, frames, 2, cfg.hop)  # [C, frames, 2, hop]
        out[:, : frames * cfg.hop] += halves[:, :, 0].reshape(self.channels, -1)
        out[:, cfg.hop:] += halves[:, :, 1].reshape(self.channels, -1)
        self.state["decoder_overlap"] = out[:, frames * cfg.hop:].copy()
        return out[:, : frames * cfg.hop]


def encode_clip(config: ModelConfig, audio: np.ndarray) -> np.ndarray:
    """Encode a whole mono clip ``[samples]`` (trimmed to a multiple of hop) from a fresh state: ``[frames, D]``."""
    usable = (audio.shape[-1] // config.hop) * config.hop
    return StreamingCodec(config, 1).encode(audio[None, :usable])[0]


def decode_clip(config: ModelConfig, latents: np.ndarray) -> np.ndarray:
    """Decode ``[frames, D]`` from a fresh state, dropping the codec latency so it aligns with the source clip.

    Exact except the last ``hop`` samples, which lack the next frame's overlapping window (they fade out)."""
    codec = StreamingCodec(config, 1)
    audio = codec.decode(latents[None])[0]
    tail = codec.decode(np.zeros((1, 1, config.latent_dim), np.float32))[0]
    return np.concatenate([audio, tail])[config.codec_latency: config.codec_latency + audio.shape[0]]
