"""lmdm process over files, folders and globs: formats, naming, chains, failures, parallel jobs, kill and resume."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pedalboard.io import AudioFile

import lmdm_engine.io.batch as batch
from lmdm_engine.cli import main
from lmdm_engine.core.audio import tone
from lmdm_engine.core.files import PARTIAL_SUFFIX
from lmdm_engine.io.chains import build_board, parse_plugin_text
from lmdm_engine.io.effect import GenerativeDelay

FAST = dict(delay_seconds=0.1, steps=2)  # within the debug model's delay range
PRESET = "tape_echo"


@pytest.fixture
def model_args(debug_model_dir):
    return ["--model", str(debug_model_dir), "--runtime", "torch", "--preset", PRESET,
            "--set", "delay_seconds=0.1", "--set", "steps=2", "--quiet"]


def write_audio(path: Path, seconds=0.25, rate=44100, channels=2, subtype=None, seed=0) -> np.ndarray:
    """Write a test signal; returns it as pedalboard reads it back ([channels, frames] float32)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = tone(seconds, rate, channels, seed)
    if path.suffix == ".mp3":
        with AudioFile(str(path), "w", rate, channels) as f:
            f.write(audio)
    else:
        sf.write(path, audio.T, rate, subtype=subtype)
    return read(path)[0]


def read(path: Path) -> tuple[np.ndarray, float]:
    with AudioFile(str(path)) as f:
        return f.read(f.frames), f.samplerate


def expected_output(audio, rate, debug_runtime, tail_seconds=0.0, **overrides):
    """What the effect gives for the whole file (and its tail) as one buffer."""
    padded = np.concatenate([audio, np.zeros((audio.shape[0], int(round(tail_seconds * rate))), np.float32)], 1)
    return GenerativeDelay(PRESET, runtime=debug_runtime, **FAST, **overrides)(padded, rate)


def sf_bytes(audio: np.ndarray, container: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio.T, 44100, format=container, subtype="PCM_16")
    return buffer.getvalue()


def partials(folder: Path) -> list[Path]:
    return list(folder.rglob("*" + PARTIAL_SUFFIX))


def test_every_readable_format_rate_and_channel_count(tmp_path, model_args):
    inputs = {
        "wav8.wav": dict(subtype="PCM_U8"), "wav16.wav": dict(subtype="PCM_16", rate=22050, channels=1),
        "wav24.wav": dict(subtype="PCM_24", rate=48000), "float.wav": dict(subtype="FLOAT", rate=96000),
        "lossless.flac": dict(subtype="PCM_24", rate=48000, channels=1), "mac.aiff": dict(subtype="PCM_16"),
        "vorbis.ogg": dict(rate=48000), "lossy.mp3": dict(rate=44100), "quad.wav": dict(channels=4, rate=22050),
        "five.flac": dict(channels=5, rate=96000, subtype="PCM_16"),
    }
    sources = {name: write_audio(tmp_path / "in" / name, **kw) for name, kw in inputs.items()}
    assert main(["process", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--tail", "0.1", *model_args]) == 0
    for name, kw in inputs.items():
        out_path = tmp_path / "out" / Path(name).with_suffix(".wav")
        info = sf.info(out_path)
        rate, channels = kw.get("rate", 44100), kw.get("channels", 2)
        assert (info.samplerate, info.channels, info.subtype) == (rate, channels, "PCM_24"), name
        assert info.frames == sources[name].shape[1] + round(0.1 * rate), name
        out, _ = sf.read(out_path, dtype="float32", always_2d=True)
        assert np.isfinite(out).all() and np.abs(out).max() > 0.01, name
    assert not partials(tmp_path)


@pytest.mark.parametrize("container, bits, subtype", [
    ("wav", 8, "PCM_U8"), ("wav", 16, "PCM_16"), ("wav", 24, "PCM_24"), ("wav", 32, "FLOAT"),
    ("flac", 8, "PCM_S8"), ("flac", 16, "PCM_16"), ("flac", 24, "PCM_24"),
])
def test_output_bit_depths(tmp_path, model_args, debug_runtime, container, bits, subtype):
    audio = write_audio(tmp_path / "in" / "take.wav", subtype="FLOAT")
    code = main(["process", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--format", container,
                 "--bit-depth", str(bits), "--buffer", "1000", *model_args])
    assert code == 0
    path = tmp_path / "out" / f"take.{container}"
    assert sf.info(path).subtype == subtype
    out, _ = sf.read(path, dtype="float32", always_2d=True)
    expected = expected_output(audio, 44100, debug_runtime)
    if bits == 32:
        np.testing.assert_array_equal(out.T, expected)  # streamed, buffer by buffer == the whole file at once
    else:
        np.testing.assert_allclose(out.T, expected, atol=1.01 * 2.0 ** (1 - bits))


def test_flac_cannot_hold_32_bit_float(tmp_path, model_args, capsys):
    write_audio(tmp_path / "in.wav")
    assert main(["process", str(tmp_path / "in.wav"), "-o", str(tmp_path / "o.flac"), "--bit-depth", "32",
                 *model_args]) == 2
    assert "flac takes bit depths 8, 16, 24, not 32; 32-bit float needs wav" in capsys.readouterr().err


def test_chains_from_command_line_and_preset_equal_the_stages_one_after_another(tmp_path, model_args, debug_runtime):
    audio = write_audio(tmp_path / "in" / "gtr.wav", seconds=0.5, rate=48000)
    preset = tmp_path / "chained.toml"
    preset.write_text('name = "chained"\nmix = 0.6\n\n[[post]]\nplugin = "Reverb"\nroom_size = 0.6\n\n'
                      '[[post]]\nplugin = "Limiter"\nthreshold_db = -3.0\n')
    args = [a for a in model_args if a not in ("--preset", PRESET)]
    code = main(["process", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *args, "--preset", str(preset),
                 "--pre", "HighpassFilter(cutoff_frequency_hz=200)", "--pre", "Compressor(threshold_db=-20, ratio=4)",
                 "--bit-depth", "32", "--tail", "0.3", "--buffer", "777"])
    assert code == 0
    out, _ = sf.read(tmp_path / "out" / "gtr.wav", dtype="float32", always_2d=True)
    padded = np.concatenate([audio, np.zeros((2, int(0.3 * 48000)), np.float32)], 1)
    pre = build_board([parse_plugin_text("HighpassFilter(cutoff_frequency_hz=200)"),
                       parse_plugin_text("Compressor(threshold_db=-20, ratio=4)")])
    post = build_board([parse_plugin_text("Reverb(room_size=0.6)"), parse_plugin_text("Limiter(threshold_db=-3.0)")])
    model = GenerativeDelay(preset, runtime=debug_runtime, post=[], **FAST)
    # equal to float rounding: pedalboard's IIR filters differ by ~1e-11 between buffer sizes, the model grows that
    np.testing.assert_allclose(out.T, post(model(pre(padded, 48000), 48000), 48000), atol=1e-5)


def test_outputs_mirror_folders_and_globs(tmp_path, model_args):
    for name in ("drums/kick.wav", "drums/snare.flac", "keys.aiff", "drums/.kick_backup.wav", "notes.txt"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("txt"):
            (tmp_path / "in" / name).write_text("not audio")
        else:
            write_audio(tmp_path / "in" / name, seconds=0.1, rate=22050)
    write_audio(tmp_path / "solo.wav", seconds=0.1)
    code = main(["process", str(tmp_path / "in"), str(tmp_path / "solo.wav"), "-o", str(tmp_path / "out"),
                 "--format", "flac", *model_args])
    assert code == 0
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")) == [
        "drums", "drums/kick.flac", "drums/snare.flac", "keys.flac", "solo.flac"]
    code = main(["process", str(tmp_path / "in" / "*" / "*.wav"), "-o", str(tmp_path / "globbed"), *model_args])
    assert code == 0
    assert [p.relative_to(tmp_path / "globbed").as_posix() for p in (tmp_path / "globbed").rglob("*.wav")] == [
        "drums/kick.wav"]
    # an output folder inside the input folder is never read as input
    for _ in range(2):
        assert main(["process", str(tmp_path / "in"), "-o", str(tmp_path / "in" / "processed"), "--report",
                     str(tmp_path / "r.json"), *model_args]) == 0
        assert json.loads((tmp_path / "r.json").read_text())["totals"]["files"] == 3


def test_bad_files_are_reported_and_the_rest_go_on(tmp_path, model_args, capsys):
    folder = tmp_path / "stems"
    good = write_audio(folder / "good.wav", seconds=0.2)
    (folder / "junk.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (folder / "empty.wav").write_bytes(b"")
    sf.write(folder / "silent_header_only.wav", np.zeros((0, 2), np.float32), 44100)
    (folder / "cut.wav").write_bytes((folder / "good.wav").read_bytes()[:3000])  # a copy stopped short
    (folder / "cut_too.aiff").write_bytes(sf_bytes(good, "AIFF")[:3000])
    (tmp_path / "readme.txt").write_text("not audio")
    code = main(["process", str(folder), str(tmp_path / "readme.txt"), str(tmp_path / "missing.wav"),
                 str(tmp_path / "nothing*.wav"), "-o", str(tmp_path / "out"), "--tail", "0.05", "--report",
                 str(tmp_path / "report.json"), *model_args])
    assert code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    by_name = {Path(f["source"]).name: f for f in report["files"]}
    assert report["totals"] == {**report["totals"], "files": 9, "written": 2, "failed": 7, "skipped": 0}
    for name in ("junk.wav", "empty.wav", "readme.txt"):
        assert by_name[name]["status"] == "failed", name
        assert by_name[name]["note"].startswith("cannot read audio: ") and "does not seem to contain audio" in \
            by_name[name]["note"], name
    for name in ("cut.wav", "cut_too.aiff"):
        assert by_name[name]["note"].startswith("cannot read audio: the file is cut short: its header promises"), name
    assert by_name["missing.wav"]["note"] == "no such file or folder"
    assert by_name["nothing*.wav"]["note"] == "the pattern matched no audio files"
    assert by_name["good.wav"]["frames_out"] == good.shape[1] + round(0.05 * 44100)
    assert by_name["silent_header_only.wav"]["status"] == "written"
    assert sf.info(tmp_path / "out" / "silent_header_only.wav").frames == round(0.05 * 44100)
    table = capsys.readouterr().out
    assert "9 files: 2 written, 0 skipped, 7 failed" in table and f"{folder / 'junk.wav'}: cannot read audio" in table
    assert not partials(tmp_path)


@pytest.fixture
def read_only(tmp_path):
    """Make folders read-only, for root too (chattr +i), or skip where the filesystem cannot."""
    locked = []

    def lock(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("running as root on a filesystem without chattr +i: cannot make a read-only folder")
        locked.append(folder)
        probe = folder / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")

    yield lock
    for folder in locked:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_read_only_output_folder(tmp_path, model_args, read_only):
    write_audio(tmp_path / "in" / "a" / "x.wav")
    write_audio(tmp_path / "in" / "b" / "y.wav")
    read_only(tmp_path / "out" / "a")
    code = main(["process", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--report", str(tmp_path / "r.json"),
                 *model_args])
    assert code == 1
    files = {Path(f["source"]).name: f for f in json.loads((tmp_path / "r.json").read_text())["files"]}
    assert files["x.wav"]["status"] == "failed"
    assert "x.wav.partial" in files["x.wav"]["note"] and ("ermission" in files["x.wav"]["note"]
                                                          or "not permitted" in files["x.wav"]["note"])
    assert files["y.wav"]["status"] == "written" and (tmp_path / "out" / "b" / "y.wav").is_file()
    assert not partials(tmp_path)


def test_refusals_and_request_errors(tmp_path, model_args, capsys):
    src = tmp_path / "in" / "a.wav"
    original = write_audio(src)
    write_audio(tmp_path / "in" / "b.flac")
    write_audio(tmp_path / "clash" / "x.wav")
    write_audio(tmp_path / "clash" / "x.flac")

    def run(*args):
        code = main(["process", *args, *model_args])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    code, text = run(str(src), "-o", str(src))
    assert code == 1 and f"refusing to overwrite the input {src}" in text
    np.testing.assert_array_equal(read(src)[0], original)
    code, text = run(str(tmp_path / "in"), "-o", str(tmp_path / "in"))  # a.wav -> in/a.wav; b.flac -> in/b.wav
    assert code == 1 and "refusing to overwrite the input" in text and "2 files: 1 written, 0 skipped, 1 failed" in text
    np.testing.assert_array_equal(read(src)[0], original)
    assert (tmp_path / "in" / "b.wav").is_file()
    for args, words in [
        ((str(tmp_path / "clash"), "-o", str(tmp_path / "o")), "would both be written to"),
        ((str(tmp_path / "in"), "-o", str(tmp_path / "o.wav")), "names one audio file"),
        ((str(src), "-o", str(tmp_path / "o.mp3")), "lmdm writes .wav or .flac"),
        ((str(src), "-o", str(tmp_path / "o.wav"), "--format", "flac"), "is a .wav file but --format is flac"),
        ((str(src), str(src), "-o", str(tmp_path / "o"), "--spectrogram", "x.png"), "one PNG"),
        ((str(src), "-o", str(tmp_path / "o"), "--pre", "Reverb(size=1)"), "Reverb has no parameter 'size'"),
        ((str(src), "-o", str(tmp_path / "o"), "--post", "PitchShift"), "PitchShift cannot be used"),
        ((str(src), "-o", str(tmp_path / "o"), "--post", "Reverb", "--set", "post=[]"), "not both"),
        ((str(src), "-o", str(tmp_path / "o"), "--set", "strength=3"), "'strength' = 3.0 is out of range"),
        ((str(src), "-o", str(tmp_path / "o"), "--set", 'post=[{"plugin": "Reverbb"}]'), "did you mean 'Reverb'"),
    ]:
        code, text = run(*args)
        assert code == 2 and words in text, (args, text)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.wav").exists()


def test_dry_run_and_skip_existing(tmp_path, model_args, capsys):
    for name in ("a.wav", "b.wav"):
        write_audio(tmp_path / "in" / name, seconds=0.5)
    args = [str(tmp_path / "in"), "-o", str(tmp_path / "out"), *model_args]
    assert main(["process", *args, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert f"process  {tmp_path / 'in' / 'a.wav'} -> {tmp_path / 'out' / 'a.wav'}  (0.5 s, 44100 Hz, 2 ch)" in listing
    assert "2 to process, 0 to skip, 0 that cannot be used" in listing and not (tmp_path / "out").exists()
    assert main(["process", *args]) == 0
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    (tmp_path / "out" / "b.wav").unlink()
    stale = tmp_path / "out" / "a.wav.partial"
    stale.write_bytes(b"left by a killed run")
    assert main(["process", *args, "--skip-existing", "--dry-run"]) == 0
    assert "1 to process, 1 to skip" in capsys.readouterr().out and stale.exists()
    assert main(["process", *args, "--skip-existing"]) == 0
    assert "2 files: 1 written, 1 skipped, 0 failed" in capsys.readouterr().out
    assert (tmp_path / "out" / "a.wav").stat().st_mtime_ns == written["a.wav"] and (tmp_path / "out" / "b.wav").exists()
    assert not partials(tmp_path)


def test_spectrogram_holds_a_bounded_excerpt(tmp_path, model_args, monkeypatch):
    drawn = []
    monkeypatch.setattr(batch, "SPECTROGRAM_SECONDS", 0.1)
    monkeypatch.setattr(batch, "SPECTROGRAM_COLUMNS", 10)
    monkeypatch.setattr("lmdm_engine.io.plots.save_spectrograms", lambda path, panels, rate, hop: drawn.append(
        (path, [(t, len(a)) for t, a in panels], rate, hop)))
    write_audio(tmp_path / "in" / "long.wav", seconds=0.5, rate=48000)
    write_audio(tmp_path / "in" / "sub" / "short.wav", seconds=0.05, rate=48000)
    assert main(["process", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--spectrogram",
                 str(tmp_path / "png"), *model_args]) == 0
    assert sorted(drawn) == [  # at most 10 columns: the hop grows with the excerpt
        (tmp_path / "png" / "long.png", [("Input (first 0.1 s)", 4800), ("Output (first 0.1 s)", 4800)], 48000, 480),
        (tmp_path / "png" / "sub" / "short.png", [("Input", 2400), ("Output", 2400)], 48000, 256),
    ]


def test_parallel_jobs_give_the_same_outputs(tmp_path, model_args):
    for i in range(3):
        write_audio(tmp_path / "in" / f"s{i}.wav", seconds=0.3, channels=1 + i % 2, seed=i)
    for jobs in ("1", "2"):
        assert main(["process", str(tmp_path / "in"), "-o", str(tmp_path / f"out{jobs}"), "--jobs", jobs,
                     "--bit-depth", "32", *model_args]) == 0
    for i in range(3):
        one, _ = sf.read(tmp_path / "out1" / f"s{i}.wav", dtype="float32")
        two, _ = sf.read(tmp_path / "out2" / f"s{i}.wav", dtype="float32")
        np.testing.assert_array_equal(one, two)


# ---- real processes, killed -------------------------------------------------------------------------------------
STEMS = 6
STEM_SECONDS = 3.0


def start_run(tmp_path, model_args, *extra):
    for i in range(STEMS):
        write_audio(tmp_path / "in" / f"stem{i}.wav", seconds=STEM_SECONDS, seed=i)
    command = [sys.executable, "-m", "lmdm_engine.cli", "process", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
               "--bit-depth", "32", "--buffer", "512", *model_args, *extra]
    return command, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended first: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("sig, jobs", [(signal.SIGTERM, "2"), (signal.SIGKILL, "1")])
def test_a_killed_run_resumes_with_skip_existing(tmp_path, model_args, debug_runtime, sig, jobs):
    out = tmp_path / "out"
    command, run = start_run(tmp_path, model_args, "--jobs", jobs)
    wait_for(lambda: list(out.glob("*.wav")) and partials(out), run)  # halfway: a stem done, one being written
    run.send_signal(sig)
    run.wait(timeout=60)
    assert run.returncode == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL)
    left = partials(out)
    assert bool(left) == (sig == signal.SIGKILL)  # SIGTERM cleans up at once, SIGKILL leaves one behind
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    assert 0 < len(done) < STEMS

    resumed = subprocess.run(command + ["--skip-existing"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{STEMS} files: {STEMS - len(done)} written, {len(done)} skipped, 0 failed" in resumed.stdout
    assert not partials(tmp_path)
    for i in range(STEMS):
        path = out / f"stem{i}.wav"
        if path.name in done:
            assert path.stat().st_mtime_ns == done[path.name]
        audio, _ = read(tmp_path / "in" / f"stem{i}.wav")
        result, _ = sf.read(path, dtype="float32", always_2d=True)
        np.testing.assert_array_equal(result.T, expected_output(audio, 44100, debug_runtime))


def worker_pids(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == parent \
                    and b"spawn_main" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes through /proc")
def test_a_worker_that_dies_fails_its_file_and_the_rest_go_on(tmp_path, model_args):
    out = tmp_path / "out"
    _, run = start_run(tmp_path, model_args, "--jobs", "2")
    wait_for(lambda: len(partials(out)) == 2, run)
    os.kill(worker_pids(run.pid)[0], signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 1, stderr
    assert f"{STEMS} files: {STEMS - 1} written, 0 skipped, 1 failed" in stdout
    assert "the worker process died (exit code -9) while processing this file" in stdout
    assert len(list(out.glob("*.wav"))) == STEMS - 1 and not partials(tmp_path)
