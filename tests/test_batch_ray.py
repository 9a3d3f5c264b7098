"""lmdm process --ray: the local runner's outputs, nothing lost when an actor dies, Ctrl-C and resume.

The Ray tests share one local Ray instance with 2 CPUs (Ray's start-up is heavy) and run the shipped model on ONNX
Runtime, as a user's run does; the CLI uses the instance already there. Without Ray installed they are skipped; the
tests that the plain runner never imports Ray and that --ray without Ray is a clear error run either way."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lmdm_engine.cli import main
from lmdm_engine.io import ray_batch
from lmdm_engine.io.effect import GenerativeDelay

from test_batch import partials, read, write_audio

STEMS = 4
STEM_SECONDS = 4.0  # about a second each on a loaded 2-core machine: long enough to be caught mid-file


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def by_name(report_path: Path) -> dict:
    return {Path(f["source"]).name: f for f in json.loads(report_path.read_text())["files"]}


def leftovers(folder: Path) -> list[Path]:
    """Partial files and the runner's marker files: none may outlive a run."""
    return partials(folder) + list(folder.rglob(ray_batch.MARKER_PREFIX + "*"))


def test_outputs_equal_the_local_runners_and_bad_files_are_reported(tmp_path, ray_instance, capsys):
    folder = tmp_path / "in"
    write_audio(folder / "a.wav", seconds=0.5, rate=44100, channels=2, subtype="PCM_16")
    write_audio(folder / "sub" / "b.flac", seconds=0.5, rate=48000, channels=1, subtype="PCM_24", seed=1)
    write_audio(folder / "c.wav", seconds=0.4, rate=22050, channels=2, subtype="FLOAT", seed=2)
    write_audio(folder / "d.aiff", seconds=0.3, rate=96000, channels=1, subtype="PCM_16", seed=3)
    write_audio(folder / "nine.wav", seconds=0.1, channels=9)  # reads, but FLAC holds 8 channels: fails in processing
    (folder / "junk.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (folder / "empty.wav").write_bytes(b"")
    common = ["process", str(folder), "--format", "flac", "--tail", "0.2", "--quiet"]
    assert main([*common, "-o", str(tmp_path / "local"), "--report", str(tmp_path / "local.json")]) == 1
    capsys.readouterr()
    assert main([*common, "-o", str(tmp_path / "ray"), "--report", str(tmp_path / "ray.json"), "--ray", "--jobs",
                 "2"]) == 1
    table = capsys.readouterr().out

    written = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.flac"))
    assert [p.as_posix() for p in written] == ["a.flac", "c.flac", "d.flac", "sub/b.flac"]
    assert sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.flac")) == written
    for path in written:  # bit-identical: the same per-file function, whoever calls it
        assert (tmp_path / "ray" / path).read_bytes() == (tmp_path / "local" / path).read_bytes(), path

    local, on_ray = by_name(tmp_path / "local.json"), by_name(tmp_path / "ray.json")
    assert local.keys() == on_ray.keys()
    for name, result in on_ray.items():
        assert result["source"] == local[name]["source"]
        assert result["output"] == (local[name]["output"] or "").replace(str(tmp_path / "local"),
                                                                         str(tmp_path / "ray")) or None
        assert result["status"] == local[name]["status"] and result["frames_out"] == local[name]["frames_out"]
    for name in ("a.wav", "b.flac", "c.wav", "d.aiff"):
        assert on_ray[name]["attempts"] == 1 and on_ray[name]["worker"] in ("actor 0", "actor 1"), name
        assert on_ray[name]["node"], name
    for name in ("junk.wav", "empty.wav"):  # found out while planning, before any work
        assert on_ray[name]["note"] == local[name]["note"] and local[name]["note"].startswith("cannot read audio")
        assert on_ray[name]["attempts"] == 0 and on_ray[name]["worker"] is None
    nine = on_ray["nine.wav"]  # retried once on the other actor, then reported
    assert nine["attempts"] == 2 and local["nine.wav"]["note"] == "9 channels: FLAC holds at most 8, write wav " \
                                                                  "(--format wav)"
    assert nine["note"] in (local["nine.wav"]["note"] + f" (tried on {a})" for a in ("actor 0 and actor 1",
                                                                                       "actor 1 and actor 0"))
    runner = json.loads((tmp_path / "ray.json").read_text())["runner"]
    assert (runner["kind"], runner["actors"], runner["files_retried"], runner["actors_lost"]) == ("ray", 2, 1, 0)
    assert len(runner["actors_started"]) == 2 and not runner["actors_retired"]
    assert "by" in table.splitlines()[0] and "7 files: 4 written, 0 skipped, 3 failed" in table
    assert not leftovers(tmp_path)


def write_stems(folder: Path) -> None:
    for i in range(STEMS):
        write_audio(folder / f"stem{i}.wav", seconds=STEM_SECONDS, rate=48000, seed=i)


def when(condition, then, timeout=120.0) -> threading.Thread:
    """Call ``then`` (in a thread) as soon as ``condition`` holds."""
    def watch():
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.005)
        then()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_an_actor_killed_mid_file_loses_nothing(tmp_path, ray_instance):
    ray = ray_instance
    write_stems(tmp_path / "in")
    out = tmp_path / "out"

    def kill_actor_0():  # both actors hold a file: actor 0 dies with its file half written
        for name in ray.util.list_named_actors():
            if name.endswith("-actor-0"):
                try:
                    actor = ray.get_actor(name)
                except ValueError:  # an earlier run's, gone
                    continue
                ray.kill(actor)

    final_bytes = STEM_SECONDS * 48000 * 2 * 4

    def both_early():  # each actor has a file with at least half of it to go: actor 0 is killed mid-file
        try:
            sizes = [p.stat().st_size for p in partials(out)]
        except FileNotFoundError:  # a file completed while we looked
            return False
        return len(sizes) == 2 and max(sizes) < final_bytes / 2

    killer = when(both_early, kill_actor_0)
    assert main(["process", str(tmp_path / "in"), "-o", str(out), "--bit-depth", "32", "--quiet", "--ray", "--jobs",
                 "2", "--report", str(tmp_path / "r.json")]) == 0
    killer.join()
    results = by_name(tmp_path / "r.json")
    assert all(r["status"] == "written" for r in results.values()) and len(results) == STEMS
    retried = [name for name, r in results.items() if r["attempts"] == 2]
    assert len(retried) == 1 and results[retried[0]]["worker"] != "actor 0"
    runner = json.loads((tmp_path / "r.json").read_text())["runner"]
    assert (runner["actors_lost"], runner["files_retried"]) == (1, 1)
    assert runner["actors_retired"][0]["actor"] == "actor 0" and "died" in runner["actors_retired"][0]["reason"]
    assert not leftovers(tmp_path)
    audio, rate = read(tmp_path / "in" / retried[0])
    written, _ = sf.read(out / retried[0], dtype="float32", always_2d=True)
    np.testing.assert_array_equal(written.T, GenerativeDelay()(audio, rate))  # the retry wrote the whole file


def test_ctrl_c_removes_partials_and_skip_existing_resumes(tmp_path, ray_instance, capsys):
    write_stems(tmp_path / "in")
    out = tmp_path / "out"
    command = ["process", str(tmp_path / "in"), "-o", str(out), "--quiet", "--ray", "--jobs", "2"]
    interrupter = when(lambda: list(out.glob("*.wav")) and partials(out), lambda: os.kill(os.getpid(), signal.SIGINT))
    try:
        assert main(command) == 128 + signal.SIGINT
        interrupter.join()
    except KeyboardInterrupt:  # never lets a late Ctrl-C stop the test session
        pytest.fail("the interrupt came after the run had ended: make the stems longer")
    assert "interrupted: partial files removed" in capsys.readouterr().err
    assert not leftovers(tmp_path)
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    assert 0 < len(done) < STEMS

    assert main(command + ["--skip-existing"]) == 0
    assert f"{STEMS} files: {STEMS - len(done)} written, {len(done)} skipped, 0 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav") if p.name in done} == done
    assert len(list(out.glob("*.wav"))) == STEMS and not leftovers(tmp_path)


# ---- without Ray ------------------------------------------------------------------------------------------------
def test_the_plain_runner_never_imports_ray_and_ray_missing_is_a_clear_error(tmp_path):
    write_audio(tmp_path / "in.wav", seconds=0.2)
    script = f"""
import sys
from lmdm_engine.cli import main
assert main(["process", {str(tmp_path / "in.wav")!r}, "-o", {str(tmp_path / "out.wav")!r}, "--quiet"]) == 0
assert "ray" not in sys.modules, "the plain runner imported Ray"
sys.modules["ray"] = None  # as if the extra were not installed
for name in [m for m in sys.modules if m.startswith("lmdm_engine.io.ray_batch")]:
    del sys.modules[name]
sys.exit(main(["process", {str(tmp_path / "in.wav")!r}, "-o", {str(tmp_path / "o2.wav")!r}, "--ray"]))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert 'lmdm process: --ray needs Ray, an optional extra: pip install "lmdm[ray]"' in run.stderr
    assert (tmp_path / "out.wav").is_file() and not (tmp_path / "o2.wav").exists()


def test_addresses_and_what_a_node_must_see(tmp_path, capsys):
    for address in ("local", "auto", "ray://head:10001", "10.0.0.5:6379"):
        assert ray_batch.check_address(address) == address
    write_audio(tmp_path / "in.wav")
    with pytest.raises(SystemExit) as stop:  # the input folder read as the address: argparse stops with the reason
        main(["process", "--ray", str(tmp_path), "-o", str(tmp_path / "out"), "--quiet"])
    assert stop.value.code == 2
    assert f"argument --ray: {str(tmp_path)!r} is not a Ray address: give auto, ray://HOST:PORT or HOST:PORT, or " \
           "put --ray without an address (a Ray instance on this machine) after the inputs" in capsys.readouterr().err

    seen = tmp_path / "in.wav"
    marker = tmp_path / "out" / ".lmdm-ray-check-x"
    marker.parent.mkdir()
    marker.write_text("token")
    size = seen.stat().st_size
    assert ray_batch.visibility_problems([(str(seen), size)], (str(marker), "token")) == []
    assert ray_batch.visibility_problems(
        [(str(seen), size + 1), (str(tmp_path / "gone.wav"), 10)], (str(marker), "another token")) == [
        f"sees {seen} with {size} bytes, not {size + 1}",
        f"cannot see {tmp_path / 'gone.wav'} (No such file or directory)",
        f"sees another {marker} than the driver wrote"]
    assert ray_batch.visibility_problems([], (str(tmp_path / "elsewhere" / "m"), "t")) == [
        f"cannot see the output folder {tmp_path / 'elsewhere'} as the driver does"]
