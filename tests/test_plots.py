"""Spectrogram plots: a valid PNG comes out; bad panels are refused with ValueError."""

import numpy as np
import pytest

from lmdm_engine.io.plots import save_spectrograms

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_input_output_png(tmp_path):
    sr = 8000
    t = np.arange(sr) / sr
    dry = np.sin(2 * np.pi * 440 * t) * np.exp(-3 * t)
    wet = 0.5 * np.sin(2 * np.pi * 880 * t)
    path = save_spectrograms(tmp_path / "sub" / "io.png", [("Input", dry), ("Output", wet)], sr)
    assert path == tmp_path / "sub" / "io.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


@pytest.mark.parametrize("audio", [np.zeros((2, 4000)), np.zeros(0), np.full(100, np.nan)])
def test_bad_panels_raise(tmp_path, audio):
    with pytest.raises(ValueError, match="panel 'Input'"):
        save_spectrograms(tmp_path / "bad.png", [("Input", audio)], 8000)
    assert not (tmp_path / "bad.png").exists()


def test_no_panels_raise(tmp_path):
    with pytest.raises(ValueError):
        save_spectrograms(tmp_path / "none.png", [], 8000)
