"""Shared helpers for the bridge tests (no tests here): servers on loopback, runtimes that are slow or fail,
raw sockets speaking hand-built OSC."""

from __future__ import annotations

import socket
import struct
import threading
import time
from contextlib import contextmanager

import numpy as np

from lmdm_bridge.protocol.replies import parse_reply
from lmdm_bridge.server.dispatch import BridgeSettings
from lmdm_bridge.server.transports import BridgeServer, ServerThread
from lmdm_bridge.wire.osc import decode_packet

DELAY = 0.1  # the debug model takes delays of 0.016 to 0.128 s (its block is 25 frames at 8 kHz)
RATE = 48000


@contextmanager
def running_bridge(runtime, batching: bool = True, **settings):
    """A BridgeServer on free loopback ports, in a background thread."""
    server = BridgeServer(runtime, BridgeSettings(**settings), port=0, batching=batching, model="debug")
    with ServerThread(server) as thread:
        yield thread


class SlowRuntime:
    """A runtime whose velocity calls take ``seconds`` longer (an engine that cannot keep up)."""

    def __init__(self, runtime, seconds: float):
        self.runtime, self.seconds = runtime, seconds
        self.name, self.config, self.latent_scale = "slow", runtime.config, runtime.latent_scale

    def __getattr__(self, name):
        return getattr(self.runtime, name)

    def velocity(self, state, x, t, style):
        time.sleep(self.seconds)
        return self.runtime.velocity(state, x, t, style)


class FailingRuntime(SlowRuntime):
    """A runtime whose velocity fails while ``failing`` is set."""

    def __init__(self, runtime):
        super().__init__(runtime, 0.0)
        self.failing = threading.Event()

    def velocity(self, state, x, t, style):
        if self.failing.is_set():
            raise RuntimeError("simulated engine failure")
        return self.runtime.velocity(state, x, t, style)


def osc_string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return raw + b"\0" * (-len(raw) % 4)


def hand_built(address: str, *args) -> bytes:
    """An OSC message built byte by byte (no codec of this project or python-osc): ints, floats, strings, blobs."""
    tags, body = ",", b""
    for value in args:
        if isinstance(value, int):
            tags, body = tags + "i", body + struct.pack(">i", value)
        elif isinstance(value, float):
            tags, body = tags + "f", body + struct.pack(">f", value)
        elif isinstance(value, str):
            tags, body = tags + "s", body + osc_string(value)
        else:
            tags, body = tags + "b", body + struct.pack(">i", len(value)) + value + b"\0" * (-len(value) % 4)
    return osc_string(address) + osc_string(tags) + body


def receive_replies(sock: socket.socket, count: int, timeout: float = 10.0) -> list:
    """``count`` replies read from a UDP socket, parsed."""
    out, give_up = [], time.monotonic() + timeout
    while len(out) < count:
        sock.settimeout(max(1e-3, give_up - time.monotonic()))
        data = sock.recv(65536)
        out += [parse_reply(m) for m in decode_packet(data)]
    return out


def stereo_noise(frames: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal((2, frames))).astype(np.float32)
