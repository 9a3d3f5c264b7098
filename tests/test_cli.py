"""The lmdm command: process a file end to end, list presets, refuse what would lose audio."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from lmdm_engine.cli import build_parser, main

from conftest import tone


def test_process_a_short_file(tmp_path, debug_model_dir, capsys):
    src, dst, png = tmp_path / "in.wav", tmp_path / "out" / "echo.wav", tmp_path / "echo.png"
    audio = tone(0.8, 44100)
    sf.write(src, audio.T, 44100, subtype="PCM_16")
    code = main(["process", str(src), "-o", str(dst), "--model", str(debug_model_dir), "--runtime", "torch",
                 "--preset", "tape_echo", "--set", "delay_seconds=0.1", "--set", "steps=2", "--spectrogram", str(png),
                 "--quiet", "--buffer", "1000"])
    assert code == 0
    out, sr = sf.read(dst, always_2d=True)
    assert sr == 44100 and out.shape == audio.T.shape and np.isfinite(out).all()
    assert sf.info(dst).subtype == "PCM_24"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("*.partial"))
    assert f"{src} -> {dst}" in capsys.readouterr().out


def test_process_exit_codes_and_messages(tmp_path, debug_model_dir, capsys):
    src = tmp_path / "in.wav"
    sf.write(src, tone(0.2, 8000).T, 8000)
    model = ["--model", str(debug_model_dir), "--runtime", "torch", "--set", "delay_seconds=0.1"]
    assert main(["process", str(src), "-o", str(src), *model]) == 1
    assert f"refusing to overwrite the input {src}" in capsys.readouterr().out
    assert main(["process", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "o.wav"), *model]) == 1
    assert "missing.wav: no such file or folder" in capsys.readouterr().out
    assert main(["process", str(src), "-o", str(tmp_path / "o.wav"), *model, "--set", "strength=3"]) == 2
    assert "lmdm process: preset 'tape_echo': field 'strength' = 3.0 is out of range" in capsys.readouterr().err
    assert main(["process", str(src), "-o", str(tmp_path / "o.wav"), "--model", str(tmp_path / "nope")]) == 2
    assert "no such model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["process", str(src), "-o", str(tmp_path / "o.wav"), "--jobs", "0"])
    assert not (tmp_path / "o.wav").exists()


def test_process_runtime_options_come_from_the_runtime_module(tmp_path, debug_runtime, monkeypatch):
    from lmdm_engine import batch
    from lmdm_engine.runtime import BACKENDS, DEFAULT_BACKEND

    parse = build_parser().parse_args
    assert parse(["process", "x.wav", "-o", "y.wav"]).runtime == DEFAULT_BACKEND
    assert [parse(["process", "x.wav", "-o", "y.wav", "--runtime", b]).runtime for b in BACKENDS] == list(BACKENDS)
    with pytest.raises(SystemExit):
        parse(["process", "x.wav", "-o", "y.wav", "--runtime", "tensorflow"])
    calls = []
    monkeypatch.setattr(batch, "load_runtime", lambda *args, **kwargs: calls.append((args, kwargs)) or debug_runtime)
    src = tmp_path / "in.wav"
    sf.write(src, tone(0.2, 8000).T, 8000)
    assert main(["process", str(src), "-o", str(tmp_path / "o.wav"), "--runtime", BACKENDS[-1], "--provider", "cpu",
                 "--set", "delay_seconds=0.1", "--quiet"]) == 0
    assert calls == [((None,), {"backend": BACKENDS[-1], "provider": "cpu"})]


def test_presets_command_lists_every_shipped_preset():
    out = subprocess.run([sys.executable, "-m", "lmdm_engine.cli", "presets"], capture_output=True, text=True,
                         check=True).stdout
    for name in ("tape_echo", "glass_bells", "dark_pad_wash", "pluck_slapback", "dream_keys"):
        assert name in out
