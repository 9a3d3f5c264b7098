"""The bridge under abuse (issue 18), on loopback: each finding an attack on a real server process, with a
well-behaved session playing throughout whose blocks must all be answered on time while the server's memory
stays within 25% of its level plus what the attacker may hold; then the batch and generate paths' crashes.

The attacks live in benchmarks/bridge_harness.py (``bench_bridge.py abuse`` runs them on the shipped model). The
server here runs a tiny text-conditioned debug model with a small quota of bytes in flight and short TCP timeouts.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bridge_harness as harness  # noqa: E402
from bridge_harness import ServerProcess, WellBehaved  # noqa: E402

from lmdm_bridge import BridgeEffect  # noqa: E402
from lmdm_bridge.cli import add_serve_parser, cmd_serve  # noqa: E402
from lmdm_bridge.protocol.namespace import CLOSE, OPEN, PRESET  # noqa: E402
from lmdm_engine.cli import main  # noqa: E402
from lmdm_engine.core.audio import tone  # noqa: E402
from lmdm_engine.core.conditioning import TEXT_ENCODER  # noqa: E402
from lmdm_engine.io.batch import BatchSettings, plan_jobs, process_file  # noqa: E402
from lmdm_engine.io.effect import GenerativeDelay  # noqa: E402
from lmdm_engine.io.presets import resolve_preset  # noqa: E402
from lmdm_engine.runtime.torch import TorchRuntime  # noqa: E402
from lmdm_engine.stream.session import Session  # noqa: E402

from conftest import preset_params, random_model, save_debug_model  # noqa: E402
from test_bridge_support import DELAY  # noqa: E402

PEER_BYTES = 8 << 20  # the server's quota of bytes in flight per peer
ALLOWANCE_MIB = 48  # what an attacker may hold: its bytes in flight, and a few sessions


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A debug model that takes text prompts (so that a free-text prompt reaches the text encoder check)."""
    folder = tmp_path_factory.mktemp("text_model")
    return save_debug_model(random_model(text_dim=384, text_encoder=TEXT_ENCODER), folder)


@pytest.fixture(scope="module")
def server(model_dir):
    flags = ["--max-peer-bytes", str(PEER_BYTES), "--tcp-handshake-timeout", "1", "--tcp-idle-timeout", "3",
             "--workers", "2"]
    python = os.environ.get("LMDM_ABUSE_SERVER_PYTHON")  # an older bridge's interpreter: see the attacks succeed
    process = ServerProcess(*(flags if python is None else ["--workers", "2"]), model=model_dir, runtime="torch",
                            python=python or sys.executable, session_options=("delay_seconds", DELAY))
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def idle_between_attacks(request):
    """Each attack starts on an idle server: the sessions of the last one have finished."""
    yield
    if "server" in request.fixturenames:
        server = request.getfixturevalue("server")
        give_up = time.monotonic() + 20
        while server.status().get("live_sessions") and time.monotonic() < give_up:
            time.sleep(0.1)


def well_behaved(server) -> WellBehaved:
    return WellBehaved(server, delay_seconds=DELAY)


# ---- 1. work owned by live sessions --------------------------------------------------------------------------
def test_open_close_bundles_neither_pass_the_session_caps_nor_build_sessions(server):
    with well_behaved(server) as good:
        facts = harness.open_close_bundles(server)
    good.check(ALLOWANCE_MIB)
    # closed sessions count until they are done, and one closed before its build started is never built
    assert facts["open_replies"] <= 8 and facts["refused"] > 0
    assert server.status()["live_sessions"] == 0


# ---- 2. memory from tiny input ---------------------------------------------------------------------------------
def test_chunks_claiming_whole_blocks_hold_no_more_than_the_peers_quota(server):
    with well_behaved(server) as good:
        facts = harness.tiny_chunks(server, sessions=4, blocks=8)
    good.check(ALLOWANCE_MIB)
    assert facts["heavy_open"] == "over_quota"  # 50 steps x guidance x 1 MiB blocks: over the compute budget
    assert facts["over_quota"] > 0 and facts["closed"] == 4  # 32 MiB claimed against a quota of 8


# ---- 3. no amplification ---------------------------------------------------------------------------------------
def test_udp_replies_to_an_unproven_address_stay_within_three_times_its_bytes(server):
    with well_behaved(server) as good:
        facts = harness.amplification(server)
    good.check(ALLOWANCE_MIB)
    assert facts["ratio"] <= 3.0, facts
    assert facts["to_other_port"] < 200  # the cookie, at most: no audio reaches a port that never asked
    assert facts["own_port_refused"] and facts["packets_while_quiet"] < 100  # never answers itself (thousands)


def test_errors_never_echo_large_arguments_and_status_shows_no_paths(server):
    facts = harness.short_errors_and_status(server)
    assert facts["error_bytes"] < 400 < facts["request_bytes"]
    assert "/" not in facts["status"]["model"] and "model_path" not in facts["status"]


# ---- 4. starvation ----------------------------------------------------------------------------------------------
def test_heavy_sessions_from_many_peers_never_make_a_light_one_late(server):
    with well_behaved(server) as good:
        facts = harness.heavy_sessions(server, peers=6, seconds=3.0)
    good.check(ALLOWANCE_MIB)
    assert facts["huge_open"] == "over_quota"  # the 131,040-frame blocks at 50 steps and guidance 8
    assert facts["opened"] >= 2 and facts["refused"]  # the rest: over the bridge's load


def test_one_peer_cannot_open_every_session(server):
    facts = harness.one_peer_many_sessions(server, sessions=12)
    assert facts["opened"] == 8 and facts["refused"] == 4


def test_idle_and_half_open_connections_cannot_lock_others_out(server):
    with well_behaved(server) as good:
        facts = harness.idle_connections(server, connections=63, wait=2.5)
    good.check(ALLOWANCE_MIB)
    assert facts["newcomer_served"]  # the quietest connection without sessions made room
    assert facts["closed_by_server"] >= 60  # no whole packet within the handshake timeout (1 s here)


def test_bundled_messages_count_against_the_rate_limit(server):
    with well_behaved(server) as good:
        facts = harness.ping_bundles(server, bundles=200)
    good.check(ALLOWANCE_MIB)
    assert facts["pongs"] <= 4000 * (1 + facts["seconds"])  # --max-rate messages a second, one second's burst
    assert facts["pongs"] < facts["pings"] / 4


def test_malformed_packets_from_many_addresses_write_few_log_lines(server):
    facts = harness.malformed_sources(server, sources=200)
    assert facts["log_lines"] <= 5, facts


# ---- 5. forged source addresses --------------------------------------------------------------------------------
@pytest.mark.skipif(not harness.raw_sockets_allowed(), reason="forging a source address needs raw sockets (root)")
def test_a_forged_source_address_cannot_change_or_close_a_udp_session(server):
    assert harness.forged_source(server)["victim_intact"]


# ---- 6. smaller defects ---------------------------------------------------------------------------------------
def test_free_text_prompts_are_refused_without_the_text_encoder_loaded_at_start_up(server):
    with well_behaved(server) as good:
        facts = harness.free_text_prompt(server)
    good.check(ALLOWANCE_MIB)
    assert facts["outcome"].startswith("bad_parameter") and "--text" in facts["outcome"]
    assert facts["seconds"] < 2 and facts["rss_growth_mib"] < 50  # nothing was loaded


def test_denormal_input_is_processed_as_silence(debug_runtime):
    params = preset_params("tape_echo", delay_seconds=DELAY)
    silent, tiny = (Session(debug_runtime, 48000, 2, params) for _ in range(2))
    for _ in range(6):
        a = silent.process(np.zeros((2, 4800), np.float32))
        b = tiny.process(np.full((2, 4800), 1e-40, np.float32))
        np.testing.assert_array_equal(a, b)


def test_a_presets_chains_play_over_the_bridge_as_in_lmdm_process(server, model_dir):
    x = (0.3 * np.random.default_rng(1).standard_normal((2, 48000))).astype(np.float32)
    with BridgeEffect(*server.tcp, "hall_bells", delay_seconds=DELAY) as remote:
        over_the_bridge = remote(x, 48000)
    local = GenerativeDelay("hall_bells", runtime=TorchRuntime.from_pretrained(model_dir), delay_seconds=DELAY)
    np.testing.assert_allclose(over_the_bridge, local(x, 48000), atol=1e-4)
    assert resolve_preset("hall_bells").post  # the compressor, hall and limiter were really there


def test_a_request_queued_behind_a_failed_open_is_answered(server):
    sock = harness.tcp_connection(server)
    packets = [harness.osc(OPEN, "doomed", 48000, 2, 4800, "", "delay_seconds", 1.0),  # outside the model's range
               harness.osc(PRESET, "doomed", "glass_bells"), harness.osc(CLOSE, "doomed")]
    sock.sendall(harness.LengthPrefixFraming.encode(harness.bundle(packets)))
    replies = harness.read_tcp(sock, 10)
    sock.close()
    assert [e.name for e in harness.errors(replies)] == ["bad_parameter", "unknown_session", "unknown_session"]


def _serve(argv: list[str]) -> str:
    """``lmdm serve`` with ``argv`` that must refuse to start: its message (no traceback)."""
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    with pytest.raises(SystemExit) as stopped:
        cmd_serve(parser.parse_args(["serve", "--port", "0", *argv]))
    return str(stopped.value)


def test_corrupt_graphs_and_huge_dimensions_are_refused_naming_the_file(tmp_path, model_dir):
    from lmdm_engine.runtime.onnx import file_digest, read_manifest

    shipped = read_manifest(Path(__file__).resolve().parents[1] / "lmdm_engine" / "models" / "default")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    manifest = json.loads((shipped["folder"] / "manifest.json").read_text())
    for entry in manifest["graphs"].values():  # graphs that are not ONNX, with digests that match them
        (corrupt / entry["file"]).write_bytes(b"not a graph" * 100)
        entry["sha256"] = file_digest(corrupt / entry["file"])
    (corrupt / "manifest.json").write_text(json.dumps(manifest))
    (corrupt / "codec.safetensors").write_bytes((shipped["folder"] / "codec.safetensors").read_bytes())
    message = _serve(["--model", str(corrupt), "--runtime", "onnx"])
    assert "denoiser_step.onnx: not a graph ONNX Runtime can load" in message

    huge = tmp_path / "huge_manifest"
    huge.mkdir()
    for file in [entry["file"] for entry in manifest["graphs"].values()] + ["codec.safetensors"]:
        (huge / file).write_bytes((corrupt / file).read_bytes())
    manifest["config"]["window_blocks"] = 64
    manifest["config"]["block_frames"] = 4096
    (huge / "manifest.json").write_text(json.dumps(manifest))
    message = _serve(["--model", str(huge), "--runtime", "onnx"])
    assert "manifest.json" in message and "'window_blocks'" in message

    wide = tmp_path / "wide"
    wide.mkdir()
    config = json.loads((model_dir / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "width": 1 << 20, "heads": 2}))
    for name in ("model.safetensors", "codec.safetensors"):
        (wide / name).write_bytes((model_dir / name).read_bytes())
    message = _serve(["--model", str(wide), "--runtime", "torch"])
    assert "config.json" in message and "'width': must be in [2, 4096]" in message


# ---- 7. batch and generate ---------------------------------------------------------------------------------
def test_a_symlink_loop_in_an_input_folder_fails_that_entry_only(tmp_path, debug_model_dir, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", tone(0.3, 8000).T, 8000)
    (folder / "loop.wav").symlink_to("loop.wav")
    code = main(["process", str(folder), "-o", str(tmp_path / "out"), "--model", str(debug_model_dir), "--runtime",
                 "torch", "--set", "delay_seconds=0.1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1 and (tmp_path / "out" / "a.wav").is_file()
    assert "loop.wav: a symbolic link that leads round in a loop" in out


def test_a_file_cut_short_while_it_is_read_fails_and_writes_nothing(tmp_path, debug_runtime):
    source = tmp_path / "long.wav"
    sf.write(source, tone(3.0, 8000).T, 8000, subtype="PCM_16")
    plan = plan_jobs([str(source)], tmp_path / "out.wav")
    preset = resolve_preset("tape_echo", {"delay_seconds": DELAY})
    settings = BatchSettings(preset, buffer_frames=1000)

    def cut_short(_seconds):  # once reading has started, another program truncates the file
        if source.stat().st_size > 20000:
            os.truncate(source, 10000)
    result = process_file(plan.jobs[0], settings, GenerativeDelay(preset, runtime=debug_runtime), cut_short)
    assert result.status == "failed" and "was cut short while it was read" in result.note
    assert not (tmp_path / "out.wav").exists() and not list(tmp_path.glob("*.partial"))


@pytest.fixture
def full_disk(tmp_path):
    """A tiny tmpfs filled to the last byte (needs root), unmounted afterwards."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=64k tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("a full disk is simulated with a tmpfs mount, which needs root")
    try:
        with open(mount / "filler", "wb") as f:
            try:
                f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        yield mount
    finally:
        os.system(f"umount {mount}")


def test_reports_and_spectrograms_on_a_full_disk_leave_nothing_behind(tmp_path, full_disk, debug_model_dir, capsys):
    source = tmp_path / "in.wav"
    sf.write(source, tone(0.3, 8000).T, 8000)
    code = main(["process", str(source), "-o", str(full_disk / "o.wav"), "--report", str(full_disk / "r.json"),
                 "--spectrogram", str(full_disk / "o.png"), "--model", str(debug_model_dir), "--runtime", "torch",
                 "--set", "delay_seconds=0.1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert f"cannot write {full_disk / 'o.wav'}: No space left on device" in captured.out
    assert f"cannot write the report {full_disk / 'r.json'}: No space left on device" in captured.err
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_generate_refuses_what_it_cannot_do_with_a_clear_error(tmp_path, debug_model_dir, capsys):
    model = ["--model", str(debug_model_dir), "--runtime", "torch", "--quiet"]
    sketch = tmp_path / "sketch.wav"
    sf.write(sketch, tone(0.5, 8000).T.mean(1), 8000)
    before = sketch.read_bytes()
    cases = [
        (["--seconds", "0", "-o", str(tmp_path / "g.wav")], 2, "--seconds 0: give a length above 0 s"),
        (["--seconds", "0.5", "-o", "/proc/g.wav"], 1, "cannot write -o /proc/g.wav"),
        (["--sketch", str(sketch), "-o", str(sketch)], 2, "is the sketch: refusing to overwrite it"),
        (["--seconds", "0.5", "--guidance", "100", "-o", str(tmp_path / "g.wav")], 2,
         "--guidance 100 is out of range [1, 8]"),
        (["--sketch", str(sketch), "--strength", "1.5", "-o", str(tmp_path / "g.wav")], 2,
         "--strength 1.5 is out of range [0, 1]"),
    ]
    for argv, code, message in cases:
        assert main(["generate", *argv, *model]) == code, argv
        assert message in capsys.readouterr().err
    assert sketch.read_bytes() == before and not (tmp_path / "g.wav").exists()


def test_a_preset_from_outside_the_shipped_set_says_which_plugin_files_it_loads(tmp_path, debug_model_dir, capsys):
    folder = tmp_path / "mine"
    (folder / "plugins").mkdir(parents=True)
    (folder / "plugins" / "Echo.vst3").write_bytes(b"not a plugin")
    (folder / "mine.toml").write_text('name = "mine"\ndelay_seconds = 0.1\n[[pre]]\nplugin = "plugins/Echo.vst3"\n')
    source = tmp_path / "in.wav"
    sf.write(source, tone(0.2, 8000).T, 8000)
    code = main(["process", str(source), "-o", str(tmp_path / "o.wav"), "--preset", str(folder / "mine.toml"),
                 "--model", str(debug_model_dir), "--runtime", "torch", "--quiet"])
    err = capsys.readouterr().err
    absolute = (folder / "plugins" / "Echo.vst3").resolve()
    assert code == 2 and f"preset 'mine' loads plugin files: pre[0] {absolute}" in err
    assert err.index("loads plugin files") < err.index("cannot load")  # said before loading it
    message = _serve(["--preset", str(folder / "mine.toml"), "--model", str(debug_model_dir), "--runtime", "torch"])
    assert f"pre[0]: {absolute}" in message and "the bridge runs built-in plugins only" in message
