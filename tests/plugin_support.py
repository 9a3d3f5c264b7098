"""Shared helpers for the plugin tests (no tests here): the built plugin and its tools, `lmdm serve` as a real
process on loopback, the local Session the plugin's output must equal, and the Python side of the OSC vectors.

The tests build the plugin with `make -C bridge/plugin` when the build tools are there (CI's .ci/run installs them
and builds first) and skip, saying which tool is missing, when they are not."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "bridge" / "plugin"
BUILD = PLUGIN_DIR / "build"
BIN = BUILD / "bin"
TOOLS = BUILD / "tools"
DPF_PATH = Path(os.environ.get("DPF_PATH", "/usr/share/dpf"))
DELAY = 0.1  # the debug model takes delays of 0.016 to 0.128 s; the plugin's range starts at 0.1 s
URI = {1: "urn:lmdm:bridge-plugin:mono", 2: "urn:lmdm:bridge-plugin:stereo"}


def missing_build_tools() -> str | None:
    """Why the plugin cannot be built here, or None."""
    for tool in ("make", "g++", "cc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not (DPF_PATH / "Makefile.plugins.mk").is_file():
        return f"DPF is not in {DPF_PATH} (Debian: apt-get install dpf-source)"
    return None


def build_plugin() -> None:
    """Build (or bring up to date) the plugins and the test tools; skip when the tools are missing."""
    reason = missing_build_tools()
    if reason:
        pytest.skip(f"cannot build the plugin: {reason}")
    done = subprocess.run(["make", "-C", str(PLUGIN_DIR), "-j2"], capture_output=True, text=True)
    assert done.returncode == 0, f"make -C bridge/plugin failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def plugin_path(fmt: str, channels: int) -> Path:
    name = "lmdm" if channels == 2 else "lmdm_mono"
    return BIN / {"vst3": f"{name}.vst3", "clap": f"{name}.clap", "lv2": f"{name}.lv2"}[fmt]


def block_frames(rate: int) -> int:
    """The plugin's block at a host rate (src/Shared.hpp, blockFramesFor)."""
    return 2048 if rate <= 50000 else 4096 if rate <= 100000 else 8192


REPLY_MARGIN_BLOCKS = 2  # src/Shared.hpp, kReplyMarginBlocks


def plugin_latency(rate: int, host_buffer: int) -> int:
    """What the plugin reports (src/Stream.cpp, latencyFor): its own buffering, the block it collects, the reply
    margin and one host buffer; never the session's latency_samples."""
    return (1 + REPLY_MARGIN_BLOCKS) * block_frames(rate) + host_buffer


def f32(value: float) -> float:
    """A parameter as the plugin holds and sends it (float32)."""
    return float(np.float32(value))


# ---- lmdm serve ------------------------------------------------------------------------------------------------
class Server:
    """`lmdm serve` on loopback as a child process; ``port`` from its ready line. Without batching: a batch of two
    sessions (a plugin's closing session and its next one) equals two single runs only to float rounding (about
    1e-7, tested with the bridge), and these tests compare sample for sample."""

    def __init__(self, model_dir: Path, port: int = 0):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lmdm_bridge", "serve", "--model", str(model_dir), "--runtime", "torch",
             "--port", str(port), "--workers", "1", "--no-batching"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        match = re.search(r"tcp 127\.0\.0\.1:(\d+)", line)
        if not match:
            self.process.kill()
            raise RuntimeError(f"lmdm serve did not start: {line!r} {self.process.stderr.read()[-2000:]}")
        self.port = int(match.group(1))

    def sessions(self) -> int:
        from lmdm_bridge import BridgeClient
        with BridgeClient("127.0.0.1", self.port, timeout=10) as client:
            return int(client.status()["sessions"])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def serving(model_dir: Path, port: int = 0):
    server = Server(model_dir, port)
    try:
        yield server
    finally:
        server.stop()


def free_port() -> int:
    """A loopback port nothing listens on (for a plugin that must find no server)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, seconds: float, what: str) -> None:
    until = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > until:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.05)


# ---- the reference --------------------------------------------------------------------------------------------
def as_sent(params: dict) -> dict:
    """Parameters as the plugin sends them: floats rounded to float32."""
    return {k: f32(v) if isinstance(v, float) else v for k, v in params.items()}


def local_session(runtime, rate: int, channels: int, preset: str, **params):
    """The Session the plugin's output must equal: the preset with the plugin's parameters over it."""
    from lmdm_engine.io.presets import resolve_preset
    from lmdm_engine.stream.session import Session
    return Session(runtime, rate, channels, resolve_preset(preset, as_sent(params)).params)


def signal_for(rate: int, channels: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Notes and a little noise: [channels, frames] float32."""
    from lmdm_engine.core.audio import tone
    return tone(seconds, rate, channels, seed)


# ---- the OSC codec's vectors, written by the bridge's Python codec and protocol ----------------------------------
# The one place the plugin tests reach into the bridge's internals (the codec, the framing, the protocol's request
# parser and open reply): re-point these imports if those modules move.
def python_osc():
    """(Message, encode_message, decode_packet, OscDecodeError, LengthPrefixFraming, FramingError)."""
    from lmdm_bridge.wire.framing import FramingError, LengthPrefixFraming
    from lmdm_bridge.wire.osc import Message, OscDecodeError, decode_packet, encode_message
    return Message, encode_message, decode_packet, OscDecodeError, LengthPrefixFraming, FramingError


def python_protocol():
    """(parse_request, open_reply): how the bridge reads a request and writes the open reply."""
    from lmdm_bridge.protocol.replies import open_reply
    from lmdm_bridge.protocol.requests import parse_request
    return parse_request, open_reply
