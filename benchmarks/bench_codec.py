"""The codec oracle: real magnitudes through candidate latents and phase reconstructions (docs/SOUND.md).

Every candidate decodes the held-out clips' own STFT (the codec's framing: sqrt-Hann, ``n_fft`` 1024, hop 512 at
22,050 Hz) from some compact view of it, with no model involved, so each row bounds what a model generating that
view could sound like. Magnitudes: the true ones; log-magnitude on the first K principal components of the
training clips (``Codec.fit``); a log-mel filterbank of K bands with its pseudo-inverse. Phases: the true ones;
random; a phase vocoder without phase locking (each bin advances at its own peak's frequency); rigid phase locking
to the peaks (Laroche & Dolson 1999) with the bins in a peak's region taking its phase; the same, with the sine
window's side-lobe signs (the shipped decoder, ``codec.peak_locked_phases``). Columns as in bench_sound.py
(FD against the original clips, level error, flatness ratio and harmonicity on pitched clips, and the share of
the pitched clips' voiced frames whose pitch is kept within 50 cents).

    python benchmarks/bench_codec.py [--data data/corpus] [--clips 64] [--fit-files 600] [--markdown] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from _common import machine, print_table
from bench_sound import Heldout, measured
from lmdm_engine.core.codec import Codec, frame_spectra, peak_locked_phases, sine_window
from lmdm_engine.core.config import ModelConfig
from lmdm_engine.core.metrics import mel_filterbank, pitch_kept
from lmdm_engine.train.data import fit_codec


class Framing:
    """The codec's STFT and overlap-add, for decoding any (magnitude, phase) pair of a whole clip."""

    def __init__(self, config: ModelConfig):
        self.config, self.window = config, sine_window(config.n_fft)

    def spectra(self, audio: np.ndarray) -> np.ndarray:
        cfg = self.config
        padded = np.concatenate([np.zeros(cfg.codec_latency), audio])
        windows = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[:: cfg.hop]
        return frame_spectra(windows, self.window)  # [F, bins]

    def audio(self, spectra: np.ndarray) -> np.ndarray:
        cfg = self.config
        segments = np.fft.irfft(spectra, cfg.n_fft, axis=-1) * self.window
        out = np.zeros((segments.shape[0] + 1) * cfg.hop)
        for j, seg in enumerate(segments):
            out[j * cfg.hop: j * cfg.hop + cfg.n_fft] += seg
        return out[cfg.codec_latency: cfg.codec_latency + segments.shape[0] * cfg.hop]


def locked_phases(mag: np.ndarray, config: ModelConfig, side_lobes: bool, lock: bool = True) -> np.ndarray:
    """Phases [F, bins] from magnitudes by the shipped recursion; without side-lobe signs or without locking
    (every bin then keeps its own running phase, advanced at its own frequency estimate), for the comparison."""
    bins, k = mag.shape[1], np.arange(mag.shape[1])
    log_mag = np.log(mag + config.log_floor)[None]
    if lock:
        phase, sign, _, _ = peak_locked_phases(log_mag, np.zeros((1, bins)), np.zeros((1, bins)), config.hop,
                                               config.n_fft)
        phase, sign = phase[0].astype(np.float64), sign[0]
        if not side_lobes:  # keep only the (-1)^k of the frame's linear phase
            sign = 1.0 - 2.0 * (k % 2)
        return phase + np.where(sign < 0, np.pi, 0.0)
    return _unlocked(log_mag[0], config) + np.pi * k


def _unlocked(log_mag: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Each bin's running phase advanced at its own parabolic frequency estimate (no vertical coherence)."""
    a, b, c = log_mag[:, :-2], log_mag[:, 1:-1], log_mag[:, 2:]
    curve = a - 2 * b + c
    delta = np.zeros_like(log_mag)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta[:, 1:-1] = np.where(curve < 0, np.clip(0.5 * (a - c) / curve, -0.5, 0.5), 0.0)
    freq = 2 * np.pi * (np.arange(log_mag.shape[1]) + delta) / config.n_fft
    return np.cumsum(config.hop * freq, 0)


def pca_magnitudes(codec: Codec, spectra: np.ndarray, size: int) -> np.ndarray:
    """Magnitudes through the first ``size`` components of ``codec``'s basis."""
    log_mag = codec.log_magnitude(spectra) - codec.mean
    return np.maximum(np.exp(log_mag @ codec.encoder[:, :size] @ codec.decoder[:size] + codec.mean)
                      - codec.config.log_floor, 0.0)


def mel_magnitudes(config: ModelConfig, spectra: np.ndarray, bands: int) -> np.ndarray:
    """Mel power of ``bands`` bands brought back to bins by the filterbank's pseudo-inverse."""
    fb = mel_filterbank(config.sample_rate, config.n_fft, bands)
    return np.sqrt(np.maximum((np.abs(spectra) ** 2 @ fb.T) @ np.linalg.pinv(fb).T, 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/corpus")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--fit-files", type=int, default=600)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()

    start = time.perf_counter()
    config = ModelConfig(latent_size=128)
    codec = fit_codec(args.data, config, max_files=args.fit_files)
    unweighted = fit_codec(args.data, config, max_files=args.fit_files, weights=np.ones(config.n_fft // 2 + 1))
    framing = Framing(config)

    held = Heldout(Path(args.data), SimpleNamespace(config=config))  # Heldout reads only the runtime's config
    clips = [a.astype(np.float64) for a in held.audio[: args.clips]]
    spectra = [framing.spectra(a) for a in clips]
    pitched = [i for i in held.pitched if i < args.clips]
    rng = np.random.default_rng(0)
    mags = {
        "true": lambda s: np.abs(s),
        **{f"log-magnitude PCA {k}": (lambda s, k=k: pca_magnitudes(codec, s, k)) for k in (64, 96, 128)},
        "log-magnitude PCA 128, unweighted": lambda s: pca_magnitudes(unweighted, s, 128),
        "log-mel 128 (pseudo-inverse)": lambda s: mel_magnitudes(config, s, 128),
    }
    phases = {
        "true": lambda s, m: np.angle(s),
        "random": lambda s, m: rng.uniform(-np.pi, np.pi, m.shape),
        "vocoder, unlocked": lambda s, m: locked_phases(m, config, False, lock=False),
        "peak-locked": lambda s, m: locked_phases(m, config, False),
        "peak-locked + side lobes (shipped)": lambda s, m: locked_phases(m, config, True),
    }
    grid = [("true", p) for p in phases] + [(m, p) for m in list(mags)[1:] for p in ("true", "peak-locked + side lobes (shipped)")]
    rows = {}
    for mag_name, phase_name in grid:
        outs = []
        for s in spectra:
            m = mags[mag_name](s)
            outs.append(framing.audio(m * np.exp(1j * phases[phase_name](s, m))))
        refs = [a[: len(o)] for a, o in zip(clips, outs)]
        row = measured(outs, refs, pitched, config.sample_rate)
        row["pitch"] = float(np.nanmean([pitch_kept(refs[i], outs[i], config.sample_rate) for i in pitched]))
        rows[f"{mag_name} magnitudes, {phase_name} phases"] = row
    print(f"# codec oracle: {args.clips} held-out clips of {args.data}, {machine()}, {time.perf_counter() - start:.0f} s")
    print_table(["magnitudes, phases", "FD", "level", "flat", "harm", "pitch"],
                [[name, f"{r['FD']:.1f}", f"{r['level']:+.1f} dB", f"{r['flat']:.2f}x", f"{r['harm']:.2f}",
                  f"{100 * r['pitch']:.0f}%"] for name, r in rows.items()], args.markdown)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "settings": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
