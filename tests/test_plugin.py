"""The DAW plugin (bridge/plugin/) in real hosts against a real `lmdm serve` on loopback: Pedalboard loads the
VST3, a small CLAP host built from DPF's headers runs the CLAP, Debian's lv2file runs the LV2.

The reference is a local Session with the same model, preset and parameters: the plugin's output is that Session's
output delayed by exactly the latency it reports, which is the plugin's own buffering (its block, the reply margin
and one host buffer) and not the session's latency_samples: the Session's output already holds the echo that long
after the dry signal. Pedalboard takes the reported latency off itself; with the other hosts the tests do. VST3
delivers parameter values to a plugin with its first process call, so the Pedalboard tests process one short buffer
first (a DAW does the same when it plays)."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from lmdm_engine.io.presets import DEFAULT_PRESET, SCHEMA, list_presets, load_preset
from plugin_support import (BIN, DELAY, TOOLS, URI, as_sent, block_frames, build_plugin, free_port, local_session,
                            plugin_latency, plugin_path, serving, signal_for, wait_for)

pedalboard = pytest.importorskip("pedalboard")

# the parameters the tests set: values every host passes through exactly (the delay is its range's minimum)
PARAMS = dict(preset="glass_bells", seed=3, mix=0.5, strength=0.75, steps=3, delay_s=DELAY)
SESSION = dict(delay_seconds=DELAY, seed=3, mix=0.5, strength=0.75, steps=3, feedback=0.45)  # + tape_echo's feedback


@pytest.fixture(scope="module", autouse=True)
def built():
    build_plugin()


@pytest.fixture(scope="module")
def server(debug_model_dir):
    with serving(debug_model_dir) as s:
        yield s


@pytest.fixture
def port_env():
    """Set LMDM_BRIDGE_PORT (the plugin's default server port) for the plugins a test creates."""
    old = os.environ.get("LMDM_BRIDGE_PORT")
    yield lambda port: os.environ.__setitem__("LMDM_BRIDGE_PORT", str(port))
    if old is None:
        os.environ.pop("LMDM_BRIDGE_PORT", None)
    else:
        os.environ["LMDM_BRIDGE_PORT"] = old


def load_vst3(channels: int, **params):
    plugin = pedalboard.load_plugin(str(plugin_path("vst3", channels)))
    for name, value in params.items():
        setattr(plugin, name, value)
    return plugin


def warm_up(plugin, rate: int, channels: int) -> None:
    """One short call: the host hands the plugin its parameters (the network thread then opens a session)."""
    plugin.process(np.zeros((channels, 16), np.float32), rate)


class Streaming:
    """A stream through a plugin in calls made without reset: Pedalboard returns each call's output with the
    latency taken off, so all the output so far is the start of the plugin's (compensated) output stream."""

    def __init__(self, plugin, rate: int, buffer: int = 512):
        self.plugin, self.rate, self.buffer = plugin, rate, buffer
        plugin.reset()
        self.sent, self.got = [], []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.sent.append(x)
        self.got.append(self.plugin.process(x, self.rate, buffer_size=self.buffer, reset=False))
        return self.got[-1]

    def output(self) -> np.ndarray:
        return np.concatenate(self.got, 1)

    def input(self) -> np.ndarray:
        return np.concatenate(self.sent, 1)[:, :self.output().shape[1]]


def test_the_preset_table_is_the_shipped_presets():
    """The plugin's preset list and values (generated at build time from presets/*.toml with the standard library
    alone) are the engine's own."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_presets", BIN.parents[1] / "tools" / "gen_presets.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.DEFAULT_PRESET == DEFAULT_PRESET
    assert gen.SCHEMA_DEFAULTS == {k: SCHEMA[k].default for k in gen.SCHEMA_DEFAULTS}
    rows = gen.rows(BIN.parents[3] / "presets")
    assert [r["name"] for r in rows] == sorted(p.name for p in list_presets())
    for row in rows:
        preset = load_preset(row["name"])
        assert {k: row[k] for k in gen.SCHEMA_DEFAULTS} == {k: getattr(preset, k) for k in gen.SCHEMA_DEFAULTS}


@pytest.mark.parametrize("rate", [44100, 48000, 96000])
@pytest.mark.parametrize("channels", [1, 2])
def test_the_vst3_in_pedalboard_equals_a_local_session(server, port_env, debug_runtime, rate, channels):
    """At host buffers of 64, 512, 1,000 and 4,096 frames: the same output, sample for sample, and the reported
    latency is the plugin's own buffering (the echo stays where the session puts it, latency_samples after the dry
    signal)."""
    port_env(server.port)
    plugin = load_vst3(channels, **PARAMS)
    x = signal_for(rate, channels, 0.6, seed=rate + channels)
    reference = local_session(debug_runtime, rate, channels, "glass_bells", **SESSION)
    want = reference.process(x)
    warm_up(plugin, rate, channels)
    for buffer in (64, 512, 1000, 4096):
        out = plugin.process(x, rate, buffer_size=buffer)
        np.testing.assert_array_equal(out, want, err_msg=f"{rate} Hz, {channels} ch, buffer {buffer}")
        assert plugin.reported_latency_samples == plugin_latency(rate, buffer)
    assert not np.allclose(want, x, atol=1e-3)  # the session really changes the sound
    del plugin


def test_without_a_server_the_output_is_the_input_delayed_by_the_reported_latency(port_env):
    port_env(free_port())
    plugin = load_vst3(2, **PARAMS)
    warm_up(plugin, 48000, 2)
    x = signal_for(48000, 2, 3.0)
    start = time.perf_counter()
    out = plugin.process(x, 48000, buffer_size=512)
    assert time.perf_counter() - start < 1.0  # 3 s of audio: nothing waits for the absent server
    np.testing.assert_array_equal(out, x)  # Pedalboard took the latency off: the rest is the input itself
    # the latency: the plugin's own buffering, as with a server (nothing jumps when it comes back)
    assert plugin.reported_latency_samples == plugin_latency(48000, 512)
    assert not plugin.connected


def clap(*args: str, env: dict | None = None, timeout: float = 60) -> dict:
    """Run tools/clap_host; its key value lines as a dict."""
    done = subprocess.run([str(TOOLS / "clap_host"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return {k: float(v) for k, v in (line.split() for line in done.stdout.splitlines())}


def raw(x: np.ndarray, path) -> str:
    x.T.astype(np.float32).tofile(path)
    return str(path)


def read_raw(path, channels: int) -> np.ndarray:
    return np.fromfile(path, np.float32).reshape(-1, channels).T


def test_clap_without_a_server_delays_the_input_by_exactly_its_latency(tmp_path):
    x = signal_for(44100, 1, 1.0)
    info = clap(str(plugin_path("clap", 1)), "--rate", "44100", "--channels", "1", "--in", raw(x, tmp_path / "in"),
                "--out", str(tmp_path / "out"), "--buffers", "100,1,4000", "--param", f"Delay={DELAY}",
                env={"LMDM_BRIDGE_PORT": str(free_port())})
    latency = int(info["latency"])
    assert latency == info["latency_end"] == plugin_latency(44100, 4000)  # the largest buffer
    out = read_raw(tmp_path / "out", 1)
    np.testing.assert_array_equal(out[:, :latency], 0.0)
    np.testing.assert_array_equal(out[:, latency:], x[:, :-latency])
    assert info["connected"] == 0


def test_killing_the_server_mid_stream_plays_dry_then_wet_again_when_it_is_back(debug_model_dir, port_env):
    x = signal_for(48000, 2, 0.25)
    with serving(debug_model_dir) as first:
        port = first.port
        port_env(port)
        plugin = load_vst3(2, **PARAMS)
        warm_up(plugin, 48000, 2)
        stream = Streaming(plugin, 48000)
        for _ in range(3):
            stream(x)
        assert not np.array_equal(stream.output(), stream.input())  # wet
        first.kill()
    # gone: every block comes back dry, at once (Pedalboard takes the latency off: dry is the input itself)
    for _ in range(2):
        stream(x)
    start = time.perf_counter()
    for _ in range(4):
        stream(x)
    assert time.perf_counter() - start < 0.5
    dry = stream.output().shape[1]
    np.testing.assert_array_equal(stream.output()[:, -3 * x.shape[1]:], stream.input()[:, -3 * x.shape[1]:])
    with serving(debug_model_dir, port) as second:
        def wet_again():
            got = stream(x)
            return not np.array_equal(got, stream.input()[:, -got.shape[1]:])
        wait_for(wet_again, 10, "the plugin reconnects and plays wet")
        assert second.sessions() == 1
    assert stream.output().shape[1] > dry
    del plugin


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_two_instances_get_two_sessions_and_twenty_load_cycles_leak_no_threads(server, port_env):
    port_env(server.port)
    x = signal_for(48000, 2, 0.2)
    gc.collect()
    a, b = load_vst3(2, **PARAMS), load_vst3(2, **PARAMS)
    for one in (a, b):
        warm_up(one, 48000, 2)
        one.process(x, 48000, buffer_size=512)
    wait_for(lambda: server.sessions() == 2, 5, "two sessions on the server")
    del a, b, one
    gc.collect()
    wait_for(lambda: server.sessions() == 0, 5, "the sessions closed with their plugins")
    before = threads()
    for _ in range(20):
        plugin = load_vst3(2, **PARAMS)
        plugin.process(x, 48000, buffer_size=512)
        del plugin
        gc.collect()
    wait_for(lambda: threads() <= before, 5, f"threads back to {before} (now {threads()})")
    wait_for(lambda: server.sessions() == 0, 5, "no session left on the server")


def test_parameter_changes_go_out_between_blocks(server, port_env, debug_runtime):
    """A change made between two host calls applies from the plugin's next block, as /lmdm/param (and /lmdm/preset)
    do on the server: the output equals a local Session changed at that block."""
    port_env(server.port)
    plugin = load_vst3(2, **PARAMS)
    warm_up(plugin, 48000, 2)
    block = block_frames(48000)
    x = signal_for(48000, 2, 0.8)
    cuts = (4 * block, 9 * block)  # host calls ending on block boundaries: the next block is the first changed
    reference = local_session(debug_runtime, 48000, 2, "glass_bells", **SESSION)
    want = [reference.process(x[:, :cuts[0]])]
    reference.set_params(mix=0.25, steps=2)
    want.append(reference.process(x[:, cuts[0]:cuts[1]]))
    # a new preset: the server loads it, then the plugin sends its own parameters again (they stay as they are)
    reference.set_params(load_preset("pluck_slapback").params)
    reference.set_params(**as_sent({**SESSION, "mix": 0.25, "steps": 2}), mode="delay")
    want.append(reference.process(x[:, cuts[1]:]))

    stream = Streaming(plugin, 48000)
    stream(x[:, :cuts[0]])
    plugin.mix, plugin.steps = 0.25, 2
    stream(x[:, cuts[0]:cuts[1]])
    plugin.preset = "pluck_slapback"
    stream(x[:, cuts[1]:])
    got = stream.output()
    assert got.shape[1] > cuts[1] + block
    np.testing.assert_array_equal(got, np.concatenate(want, 1)[:, :got.shape[1]])
    del plugin


def test_a_new_delay_time_opens_a_new_session_and_the_reported_latency_stays(server, port_env, debug_runtime):
    """The delay moves the echo inside the session's output, not the plugin's latency."""
    port_env(server.port)
    plugin = load_vst3(2, **PARAMS)
    warm_up(plugin, 48000, 2)
    x = signal_for(48000, 2, 0.3)
    plugin.process(x, 48000, buffer_size=512)
    assert plugin.reported_latency_samples == plugin_latency(48000, 512)
    plugin.delay_s = 0.125
    warm_up(plugin, 48000, 2)
    out = plugin.process(x, 48000, buffer_size=512)
    longer = local_session(debug_runtime, 48000, 2, "glass_bells", **{**SESSION, "delay_seconds": 0.125})
    shorter = local_session(debug_runtime, 48000, 2, "glass_bells", **SESSION)
    assert longer.latency_samples > shorter.latency_samples
    np.testing.assert_array_equal(out, longer.process(x))
    assert plugin.reported_latency_samples == plugin_latency(48000, 512)
    del plugin


def test_a_change_the_server_refuses_is_logged_with_its_reason(server, port_env, capfd):
    port_env(server.port)
    plugin = load_vst3(2, **PARAMS)
    warm_up(plugin, 48000, 2)
    stream = Streaming(plugin, 48000)
    stream(signal_for(48000, 2, 0.2))
    plugin.mode = "jam"  # the debug model was not trained to jam
    stream(signal_for(48000, 2, 0.2))
    wait_for(lambda: "needs a jamming model" in capfd.readouterr().err, 5, "the server's refusal in the plugin's log")
    del plugin


def test_an_offline_render_waits_for_a_stalled_server_but_not_for_ever(debug_model_dir, port_env):
    with serving(debug_model_dir) as stalled:
        port_env(stalled.port)
        plugin = load_vst3(2, **PARAMS)
        warm_up(plugin, 48000, 2)
        x = signal_for(48000, 2, 0.5)
        stalled.process.send_signal(signal.SIGSTOP)
        try:
            start = time.perf_counter()
            out = plugin.process(x, 48000, buffer_size=512)
            took = time.perf_counter() - start
        finally:
            stalled.process.send_signal(signal.SIGCONT)
        # 2 s for the first reply that does not come, then 50 ms for each next one (11 blocks in 0.5 s)
        assert 2.0 <= took < 5.0, took
        np.testing.assert_array_equal(out, x)  # dry where no reply came
        del plugin


def test_the_state_brings_back_parameters_and_the_server(server, port_env, debug_runtime):
    port_env(server.port)
    saved = load_vst3(2, **{**PARAMS, "seed": 11})
    warm_up(saved, 48000, 2)
    state = saved.raw_state
    del saved
    port_env(free_port())  # a new instance would look for a server elsewhere: the state says where it is
    plugin = load_vst3(2)
    plugin.raw_state = state
    assert (plugin.seed, plugin.preset, plugin.mix) == (11, "glass_bells", 0.5)
    warm_up(plugin, 48000, 2)
    x = signal_for(48000, 2, 0.4)
    want = local_session(debug_runtime, 48000, 2, "glass_bells", **{**SESSION, "seed": 11}).process(x)
    np.testing.assert_array_equal(plugin.process(x, 48000, buffer_size=512), want)
    del plugin


def test_clap_in_a_clap_host_at_buffer_sizes_that_change_every_call(server, debug_runtime, tmp_path):
    x = signal_for(48000, 2, 1.0, seed=9)
    want = local_session(debug_runtime, 48000, 2, "glass_bells", **SESSION).process(x)
    args = [str(plugin_path("clap", 2)), "--rate", "48000", "--channels", "2", "--in", raw(x, tmp_path / "in"),
            "--param", f"Delay={DELAY}", "--param", "Seed=3", "--param", "Mix=0.5", "--param", "Strength=0.75",
            "--param", "Steps=3", "--param", "Preset=3"]
    env = {"LMDM_BRIDGE_PORT": str(server.port)}
    info = clap(*args, "--out", str(tmp_path / "out"), "--buffers", "1,7,64,1000,8192,333,4096,2",
                "--save-state", str(tmp_path / "state"), env=env)
    latency = int(info["latency"])
    assert latency == info["latency_end"] == plugin_latency(48000, 8192)  # the largest buffer
    assert info["connected"] == 1
    out = read_raw(tmp_path / "out", 2)
    np.testing.assert_array_equal(out[:, latency:], want[:, :-latency])
    # the saved state holds the server: a host that restores it finds the server without being told
    info = clap(str(plugin_path("clap", 2)), "--rate", "48000", "--channels", "2", "--in", str(tmp_path / "in"),
                "--out", str(tmp_path / "again"), "--load-state", str(tmp_path / "state"), "--buffers", "512",
                env={"LMDM_BRIDGE_PORT": str(free_port())})
    latency = int(info["latency"])
    np.testing.assert_array_equal(read_raw(tmp_path / "again", 2)[:, latency:], want[:, :-latency])


def test_clap_at_real_time_pace_is_wet_without_waiting(server, debug_runtime, tmp_path):
    """A live host (calls paced at the audio's speed): the replies come within the reply margin (and one to two
    host buffers) the plugin's latency leaves them, so no block is dry."""
    x = signal_for(48000, 1, 1.5, seed=4)
    want = local_session(debug_runtime, 48000, 1, "glass_bells", **SESSION).process(x)
    info = clap(str(plugin_path("clap", 1)), "--rate", "48000", "--channels", "1", "--in", raw(x, tmp_path / "in"),
                "--out", str(tmp_path / "out"), "--buffers", "512", "--realtime", "--param", f"Delay={DELAY}",
                "--param", "Seed=3", "--param", "Mix=0.5", "--param", "Strength=0.75", "--param", "Steps=3",
                "--param", "Preset=3", env={"LMDM_BRIDGE_PORT": str(server.port)})
    latency = int(info["latency"])
    assert latency == plugin_latency(48000, 512)
    np.testing.assert_array_equal(read_raw(tmp_path / "out", 1)[:, latency:], want[:, :-latency])


@pytest.mark.skipif(not shutil.which("lv2file"), reason="Debian's lv2file is not installed (apt-get install lv2file)")
def test_lv2_in_lv2file_after_make_install(server, debug_runtime, tmp_path):
    """`make install` puts every bundle in the user folders; lv2file runs the LV2 from there. lv2file 0.95 hands the
    plugin a broken worker feature (tools/lv2file_fix.c mends it), and applies no preset port value written as a
    plain number, as every host and DPF write them: it lists the plugin's presets, and the test sets the ports."""
    import soundfile as sf

    folders = {"VST3_DIR": tmp_path / "vst3", "CLAP_DIR": tmp_path / "clap", "LV2_DIR": tmp_path / "lv2"}
    done = subprocess.run(["make", "-C", str(BIN.parents[1]), "install", *(f"{k}={v}" for k, v in folders.items())],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("lmdm", "lmdm_mono"):
        assert (folders["VST3_DIR"] / f"{name}.vst3" / "Contents" / "x86_64-linux" / f"{name}.so").is_file()
        assert (folders["CLAP_DIR"] / f"{name}.clap").is_file()
        assert (folders["LV2_DIR"] / f"{name}.lv2" / "manifest.ttl").is_file()
    env = {**os.environ, "LV2_PATH": str(folders["LV2_DIR"]), "LMDM_BRIDGE_PORT": str(server.port),
           "LD_PRELOAD": str(TOOLS / "lv2file_fix.so")}
    listed = subprocess.run(["lv2file", "-L", URI[2]], capture_output=True, text=True, env=env)
    assert sorted(line.split(": ", 1)[1] for line in listed.stdout.splitlines() if line.startswith("Preset: ")) \
        == sorted(p.name for p in list_presets()), listed.stdout + listed.stderr
    x = signal_for(44100, 2, 1.0, seed=2)
    sf.write(tmp_path / "in.wav", x.T, 44100, subtype="FLOAT")
    ports = {"delay_seconds": DELAY, "seed": 3, "mix": 0.5, "strength": 0.75, "steps": 3, "preset": 3}
    done = subprocess.run(["lv2file", "-i", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out.wav"),
                           *(a for k, v in ports.items() for a in ("-p", f"{k}:{v}")), "--ignore-clipping", URI[2]],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    out = sf.read(tmp_path / "out.wav", dtype="float32")[0].T
    reference = local_session(debug_runtime, 44100, 2, "glass_bells", **SESSION)
    want = reference.process(x)
    latency = plugin_latency(44100, 512)  # lv2file's blocks: 512 frames
    np.testing.assert_array_equal(out[:, :latency], 0.0)
    np.testing.assert_array_equal(out[:, latency:], want[:, :-latency])
