"""Spectrogram pictures (e.g. "Input" versus "Output") as PNG files, rendered off-screen with matplotlib's Agg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmdm_engine.core.files import atomic_write
from lmdm_engine.core.metrics import stft_magnitude


def save_spectrograms(
    path,
    panels: list[tuple[str, np.ndarray]],
    sample_rate: int,
    n_fft: int = 1024,
    hop: int = 256,
    dynamic_range_db: float = 80.0,
) -> Path:
    """One row per (title, mono audio) panel: STFT magnitude in dB, time (s) by frequency (kHz), one shared
    colour scale (the loudest bin of all panels down to dynamic_range_db below it). Returns the PNG's path."""
    if not panels:
        raise ValueError("need at least one (title, audio) panel")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    spectra = []
    for title, audio in panels:
        audio = np.asarray(audio, dtype=np.float64)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"panel {title!r}: expected mono audio of shape [samples], got {audio.shape}")
        if not np.all(np.isfinite(audio)):
            raise ValueError(f"panel {title!r}: audio contains NaN or infinite samples")
        magnitude = stft_magnitude(audio, n_fft, hop) * (4.0 / n_fft)  # a full-scale sine peaks at 0 dBFS
        spectra.append((title, audio.size, 20 * np.log10(magnitude + 1e-10)))
    top = max(db.max() for _, _, db in spectra)
    vmin, vmax = top - dynamic_range_db, top

    # A bare Figure with its own Agg canvas: no pyplot state, no display, freed when it goes out of scope.
    fig = Figure(figsize=(10, 0.4 + 2.4 * len(spectra)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(spectra), 1, squeeze=False)[:, 0]
    for ax, (title, n_samples, db) in zip(axes, spectra):
        image = ax.imshow(
            db.T, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax, interpolation="nearest",
            extent=(0, n_samples / sample_rate, 0, sample_rate / 2000),
        )
        ax.set_title(title, loc="left")
        ax.set_ylabel("Frequency (kHz)")
    axes[-1].set_xlabel("Time (s)")
    fig.colorbar(image, ax=list(axes), label="Level (dBFS)", pad=0.01)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path) as partial:  # a full disk leaves no part of a picture behind
            fig.savefig(partial, format="png", dpi=100)
    finally:
        fig.clear()
    return path
