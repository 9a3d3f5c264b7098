"""Training data from a folder of audio files: clips, a stable held-out split, clear errors."""

import numpy as np
import pytest
import soundfile as sf

from lmdm_engine.core.audio import tone
from lmdm_engine.train.data import folder_clips, load_clips

from conftest import debug_codec


def test_folder_of_audio_files(tmp_path):
    codec = debug_codec()
    cfg = codec.config
    (tmp_path / "sub").mkdir()
    for i in range(12):
        sr = 8000 if i % 2 else 16000  # resampled to the model rate
        sf.write(tmp_path / ("sub" if i % 3 == 0 else ".") / f"take{i}.flac", tone(1.2, sr, 2, seed=i).T, sr)
    train = folder_clips(tmp_path, codec, "train", seconds=0.5)
    held = folder_clips(tmp_path, codec, "heldout", seconds=0.5, heldout_fraction=0.3)
    assert train.latents.shape[1:] == (int(0.5 * cfg.sample_rate) // cfg.hop, cfg.latent_dim)
    assert len(train) >= 2 * 6 and not np.any(train.styles)
    assert not {n.split("#")[0] for n in held.names} & {n.split("#")[0] for n in
                                                         folder_clips(tmp_path, codec, "train", 0.5, 0.3).names}
    with pytest.raises(ValueError, match="shorter than 4.0 s"):  # a plain folder goes through folder_clips
        load_clips(tmp_path, codec, "train")


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no audio files"):
        folder_clips(tmp_path, debug_codec(), "train")
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    with pytest.raises(ValueError, match="broken.wav: cannot read audio"):
        folder_clips(tmp_path, debug_codec(), "train", heldout_fraction=0.0)
