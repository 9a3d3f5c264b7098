"""The bridge over real TCP sockets on loopback: both OSC stream framings, several sessions, raw hand-built bytes."""

import socket
import struct
import time

import numpy as np
import pytest

from lmdm_bridge import BridgeClient, BridgeError
from lmdm_bridge.protocol.replies import parse_reply
from lmdm_bridge.wire.framing import LengthPrefixFraming, SlipFraming
from lmdm_bridge.wire.osc import decode_packet
from lmdm_engine.stream.session import Session

from conftest import preset_params
from test_bridge_support import DELAY, RATE, hand_built, running_bridge, stereo_noise

BLOCK = 4800


@pytest.fixture
def bridge(debug_runtime):
    with running_bridge(debug_runtime) as thread:
        yield thread


@pytest.mark.parametrize("framing", ["length-prefix", "slip"])
def test_several_sessions_on_one_connection_equal_local_sessions(bridge, debug_runtime, framing):
    x = stereo_noise(6 * BLOCK)
    with BridgeClient(*bridge.server.tcp_address, framing=framing) as client:
        names = {"bass": dict(channels=1, seed=1), "keys": dict(channels=2, seed=2), "pad": dict(channels=2, seed=3)}
        for name, p in names.items():
            client.open(name, RATE, p["channels"], BLOCK, "tape_echo", deadline_ms=0, delay_seconds=DELAY,
                        seed=p["seed"])
        out = {name: [] for name in names}
        for i in range(6):  # interleaved: all tracks send, then all read
            seqs = {name: client.send_block(name, x[: p["channels"], i * BLOCK:(i + 1) * BLOCK])
                    for name, p in names.items()}
            for name, seq in seqs.items():
                result = client.receive_block(name, seq)
                assert result.flags == 0 and result.seq == i
                out[name].append(result.audio)
        for name, p in names.items():
            same = preset_params("tape_echo", delay_seconds=DELAY, seed=p["seed"])
            local = Session(debug_runtime, RATE, p["channels"], same)
            # batched with the other tracks: equal up to float summation order
            np.testing.assert_allclose(np.concatenate(out[name], 1), local.process(x[: p["channels"]]), atol=1e-5)
            assert client.close(name)["processed"] == 6
    assert bridge.call(lambda: bridge.server.bridge.status()["sessions"]) == 0


def raw_exchange(address, framing, packets: list[bytes], replies: int) -> list:
    """Send hand-built packets framed by hand over a raw TCP socket; read ``replies`` replies back."""
    with socket.create_connection(address, timeout=10) as sock:
        for p in packets:
            sock.sendall(struct.pack(">i", len(p)) + p if framing is LengthPrefixFraming
                         else b"\xc0" + p.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0")
        decoder, out = framing(1 << 24), []
        while len(out) < replies:
            data = sock.recv(65536)
            assert data, "the bridge closed the connection"
            out += [parse_reply(m) for packet in decoder.feed(data) for m in decode_packet(packet)]
        return out


@pytest.mark.parametrize("framing", [LengthPrefixFraming, SlipFraming])
def test_hand_built_osc_over_a_raw_socket(bridge, framing):
    samples = np.full((1, 800), 0.25, np.float32)  # 800 mono frames at 8 kHz
    packets = [
        hand_built("/lmdm/ping", 42, "hello"),
        hand_built("/lmdm/open", "raw", 8000, 1, 800, "", "deadline_ms", 0, "delay_seconds", DELAY),
        hand_built("/lmdm/audio", "raw", 0, 0, 800, samples.astype("<f4").tobytes()),
        hand_built("/lmdm/audio", "raw", 1, 0, 800, samples.astype("<f4").tobytes()),
        hand_built("/lmdm/close", "raw"),
    ]
    pong, opened, first, second, closed = raw_exchange(bridge.server.tcp_address, framing, packets, 5)
    assert pong.args == (42, "hello")
    assert opened.values["latency_samples"] > 0 and opened.values["preset"] == "tape_echo"
    assert (first.seq, second.seq, first.total_frames, first.flags) == (0, 1, 800, 0)
    assert len(second.samples) == 800 * 4 and np.isfinite(np.frombuffer(second.samples, "<f4")).all()
    assert closed.values["processed"] == 2


def test_oversized_frame_is_answered_and_the_connection_goes_on(debug_runtime):
    with running_bridge(debug_runtime, max_packet_bytes=4096) as thread:
        big = hand_built("/lmdm/ping", b"x" * 10_000)
        error, pong = raw_exchange(thread.server.tcp_address, LengthPrefixFraming,
                                   [big, hand_built("/lmdm/ping", 1)], 2)
        assert error.name == "too_large" and "larger than the limit of 4096" in error.message
        assert pong.args == (1,)


def test_garbage_stream_is_closed_and_the_server_carries_on(bridge):
    with socket.create_connection(bridge.server.tcp_address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100) == b""  # closed without an answer: there is no framing to answer in
    with BridgeClient(*bridge.server.tcp_address) as client:
        assert client.ping(7) == (7,)


def test_a_dropped_connection_closes_its_sessions(bridge):
    client = BridgeClient(*bridge.server.tcp_address)
    client.open("gone", RATE, 2, BLOCK, "tape_echo", delay_seconds=DELAY)
    client.send_block("gone", stereo_noise(BLOCK))
    client.close_connection()
    give_up = time.monotonic() + 10
    while bridge.call(lambda: bridge.server.bridge.status()["sessions"]):
        assert time.monotonic() < give_up
        time.sleep(0.01)


def test_errors_reach_the_client_with_their_reason(debug_runtime, tmp_path):
    echo = tmp_path / "debug_echo.toml"  # a server-side preset file, chosen over the bridge by its name
    echo.write_text('name = "debug_echo"\ndelay_seconds = 0.1\n')
    with running_bridge(debug_runtime, preset=str(echo)) as thread, \
            BridgeClient(*thread.server.tcp_address) as client:
        with pytest.raises(BridgeError, match=r"bad_parameter .* delay_seconds=0.5 is outside this model's range"):
            client.open("a", RATE, 2, BLOCK, "tape_echo", delay_seconds=0.5)
        assert client.open("a", RATE, 2, BLOCK).values["preset"] == "debug_echo"
        with pytest.raises(BridgeError, match=r"'strength' = 2.0 is out of range \[0.0, 1.0\]"):
            client.set_params("a", strength=2.0)
        with pytest.raises(BridgeError, match="unknown preset 'glass_bell'.*did you mean 'glass_bells'") as e:
            client.set_preset("a", "glass_bell")
        assert e.value.session == "a"  # the error names the session
        with pytest.raises(BridgeError, match="presets are chosen by name"):
            client.set_preset("a", str(echo))
        assert client.set_preset("a", "debug_echo")["preset"] == "debug_echo"


class _Closing:
    """A transport that only knows whether it was aborted."""

    def __init__(self):
        self.aborts = 0

    def is_closing(self) -> bool:
        return self.aborts > 0


class _QuietConnection:
    """What BridgeServer.make_room reads of a connection: no sessions, quiet since ``at``."""

    sessions = 0
    last_packet = None

    def __init__(self, at: float):
        self.opened_at, self.transport = at, _Closing()

    def close_for(self, reason: str) -> None:
        self.transport.aborts += 1  # it stays in connections until its connection_lost, as an aborted one does


def test_a_burst_of_connections_closes_each_quiet_one_once(debug_runtime, monkeypatch):
    from lmdm_bridge.server import transports
    monkeypatch.setattr(transports, "MAX_CONNECTIONS", 3)
    server = transports.BridgeServer(debug_runtime, workers=1)
    try:
        old = [_QuietConnection(at) for at in (1.0, 2.0, 3.0)]
        server.connections.update(old)
        for at in (4.0, 5.0, 6.0, 7.0):  # all arrive before any connection_lost runs
            assert server.make_room()
            server.connections.add(_QuietConnection(at))
            assert sum(not c.transport.is_closing() for c in server.connections) <= 3
        assert [c.transport.aborts for c in old] == [1, 1, 1]
        assert sorted(c.opened_at for c in server.connections if not c.transport.is_closing()) == [5.0, 6.0, 7.0]
    finally:
        server.workers.shutdown()
