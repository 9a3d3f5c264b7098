"""The lmdm command: process a file end to end, list presets, refuse what would lose audio."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from lmdm_engine.cli import main

from conftest import tone


def test_process_a_short_file(tmp_path, debug_model_dir, capsys):
    src, dst, png = tmp_path / "in.wav", tmp_path / "out" / "echo.wav", tmp_path / "echo.png"
    audio = tone(0.8, 44100)
    sf.write(src, audio.T, 44100, subtype="PCM_16")
    code = main(["process", str(src), "-o", str(dst), "--model", str(debug_model_dir), "--preset", "tape_echo",
                 "--set", "delay_seconds=0.1", "--set", "steps=2", "--spectrogram", str(png), "--quiet",
                 "--buffer", "1000"])
    assert code == 0
    out, sr = sf.read(dst, always_2d=True)
    assert sr == 44100 and out.shape == audio.T.shape and np.isfinite(out).all()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("*.partial"))
    assert "wrote" in capsys.readouterr().out


def test_process_refuses_bad_requests(tmp_path, debug_model_dir):
    src = tmp_path / "in.wav"
    sf.write(src, tone(0.2, 8000).T, 8000)
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        main(["process", str(src), "-o", str(src), "--model", str(debug_model_dir)])
    with pytest.raises(SystemExit, match="cannot read audio"):
        main(["process", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "o.wav"), "--model", str(debug_model_dir)])
    six = tmp_path / "six.wav"
    sf.write(six, np.zeros((100, 6)), 8000)
    with pytest.raises(SystemExit, match="6 channels"):
        main(["process", str(six), "-o", str(tmp_path / "o.wav"), "--model", str(debug_model_dir)])
    with pytest.raises(SystemExit, match="strength"):
        main(["process", str(src), "-o", str(tmp_path / "o.wav"), "--model", str(debug_model_dir),
              "--set", "strength=3", "--set", "delay_seconds=0.1"])
    assert not (tmp_path / "o.wav").exists()


def test_presets_command_lists_every_shipped_preset():
    out = subprocess.run([sys.executable, "-m", "lmdm_engine.cli", "presets"], capture_output=True, text=True,
                         check=True).stdout
    for name in ("tape_echo", "glass_bells", "dark_pad_wash", "pluck_slapback", "dream_keys"):
        assert name in out
