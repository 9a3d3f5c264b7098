"""The bridge over real UDP on loopback: chunked blocks, a lossy relay, raw sockets, and liblo's oscdump."""

import heapq
import queue
import random
import select
import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from lmdm_bridge import BlockFlag, BridgeClient
from lmdm_bridge.protocol.replies import AudioReply, ErrorReply
from lmdm_engine.stream.session import Session

from conftest import preset_params
from test_bridge_support import DELAY, RATE, hand_built, receive_replies, running_bridge, stereo_noise

BLOCK = 4800  # 0.1 s stereo at 48 kHz: 38,400 bytes, five datagrams of at most 8 KB


class LossyRelay:
    """A UDP relay between one client and the bridge that drops, duplicates and delays (so reorders) datagrams,
    both ways, from a seeded random stream. Only audio datagrams are dropped: the test is about blocks, and the
    control requests (open, close) are not retried by the client."""

    def __init__(self, server_address, drop=0.0, duplicate=0.0, max_delay=0.0, seed=0):
        self.drop, self.duplicate, self.max_delay = drop, duplicate, max_delay
        self.rng = random.Random(seed)
        self.to_client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.to_client.bind(("127.0.0.1", 0))
        self.to_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.to_server.connect(server_address)
        for s in (self.to_client, self.to_server):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.address = self.to_client.getsockname()
        self.client = None
        self.dropped = self.duplicated = 0
        self._due, self._count = [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _schedule(self, data: bytes, toward_server: bool) -> None:
        if data.startswith(b"/lmdm/audio") and self.rng.random() < self.drop:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            self._count += 1
            heapq.heappush(self._due, (time.monotonic() + self.rng.uniform(0, self.max_delay), self._count,
                                       toward_server, data))

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = 0.01 if not self._due else max(0.0, min(0.01, self._due[0][0] - time.monotonic()))
            readable, _, _ = select.select([self.to_client, self.to_server], [], [], wait)
            for sock in readable:
                data, source = sock.recvfrom(65536)
                if sock is self.to_client:
                    self.client = source
                self._schedule(data, sock is self.to_client)
            while self._due and self._due[0][0] <= time.monotonic():
                _, _, toward_server, data = heapq.heappop(self._due)
                if toward_server:
                    self.to_server.send(data)
                else:
                    self.to_client.sendto(data, self.client)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.to_client.close()
        self.to_server.close()


@pytest.fixture
def bridge(debug_runtime):
    with running_bridge(debug_runtime) as thread:
        yield thread


def stream(client: BridgeClient, name: str, x: np.ndarray) -> list:
    client.open(name, RATE, x.shape[0], BLOCK, "tape_echo", deadline_ms=0, delay_seconds=DELAY)
    results = [client.process(name, x[:, i: i + BLOCK]) for i in range(0, x.shape[1], BLOCK)]
    client.close(name)
    return results


def test_reordered_and_duplicated_datagrams_change_nothing(bridge, debug_runtime):
    x = stereo_noise(8 * BLOCK)
    with LossyRelay(bridge.server.udp_address, duplicate=0.2, max_delay=0.004, seed=1) as relay, \
            BridgeClient(*relay.address, transport="udp", timeout=10) as client:
        results = stream(client, "s", x)
    assert relay.duplicated > 5
    assert [r.seq for r in results] == list(range(8)) and all(r.flags == 0 for r in results)
    local = Session(debug_runtime, RATE, 2, preset_params("tape_echo", delay_seconds=DELAY))
    np.testing.assert_array_equal(np.concatenate([r.audio for r in results], 1), local.process(x))


def test_lost_datagrams_are_concealed_and_flagged_never_waited_on_forever(bridge):
    x = stereo_noise(24 * BLOCK)
    start = time.monotonic()
    with LossyRelay(bridge.server.udp_address, drop=0.12, duplicate=0.05, max_delay=0.003, seed=2) as relay, \
            BridgeClient(*relay.address, transport="udp", timeout=0.5) as client:
        results = stream(client, "s", x)
    assert relay.dropped > 10
    assert time.monotonic() - start < 20
    assert [r.seq for r in results] == list(range(24))  # every block answered, once, in order
    assert all(r.audio.shape == (2, BLOCK) and np.isfinite(r.audio).all() for r in results)
    concealed = [r for r in results if r.flags & BlockFlag.CONCEALED]
    assert 3 <= len(concealed) < 24
    status = bridge.call(bridge.server.bridge.status)
    assert status["concealed"] + status["lost"] > 0 and status["engine_errors"] == 0


def test_several_sessions_over_udp(bridge, debug_runtime):
    x = stereo_noise(4 * BLOCK)
    with BridgeClient(*bridge.server.udp_address, transport="udp") as a, \
            BridgeClient(*bridge.server.udp_address, transport="udp") as b:
        for client in (a, b):
            client.open("track", RATE, 2, BLOCK, "tape_echo", deadline_ms=0, delay_seconds=DELAY)
        outs = {a: [], b: []}
        for i in range(4):  # the same id from two sources: two sessions, each its own
            seqs = {c: c.send_block("track", x[:, i * BLOCK:(i + 1) * BLOCK] * (1 if c is a else 0.5)) for c in outs}
            for c, seq in seqs.items():
                outs[c].append(c.receive_block("track", seq).audio)
    for c, gain in ((a, 1.0), (b, 0.5)):
        local = Session(debug_runtime, RATE, 2, preset_params("tape_echo", delay_seconds=DELAY))
        np.testing.assert_allclose(np.concatenate(outs[c], 1), local.process(x * gain), atol=1e-5)


def test_hand_built_chunks_over_a_raw_udp_socket(bridge):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(bridge.server.udp_address)
    samples = np.linspace(-0.5, 0.5, 2 * 3000, dtype="<f4")  # 3000 stereo frames, sent as two chunks
    open_args = ("raw", 8000, 2, 3000, "", "deadline_ms", 0, "delay_seconds", DELAY)
    sock.send(hand_built("/lmdm/open", *open_args))
    (challenge,) = receive_replies(sock, 1)  # first a cookie, which the open must carry to prove this address
    assert challenge.request == "/lmdm/cookie" and challenge.session == "raw"
    cookie = challenge.values["cookie"]
    sock.send(hand_built("/lmdm/open", *open_args, "cookie", cookie))
    (opened,) = receive_replies(sock, 1)
    assert opened.request == "/lmdm/open" and opened.values["cookie"] == cookie
    sock.send(hand_built("/lmdm/audio", "raw", 0, 1000, 3000, samples[2000:].tobytes(), cookie))  # second half first
    sock.send(hand_built("/lmdm/audio", "raw", 0, 0, 3000, samples[:2000].tobytes(), cookie))
    chunks = receive_replies(sock, 3)  # 24,000 bytes back: three datagrams
    assert all(isinstance(c, AudioReply) and c.seq == 0 and c.total_frames == 3000 for c in chunks)
    chunks.sort(key=lambda c: c.frame_offset)
    assert chunks[0].frame_offset == 0 and sum(len(c.samples) for c in chunks) == 3000 * 8
    assert all(a.frame_offset + len(a.samples) // 8 == b.frame_offset for a, b in zip(chunks, chunks[1:]))
    sock.send(b"/lmdm/audio\0,sii" + b"\0" * 3)  # malformed: answered with an error, nothing else happens
    (error,) = receive_replies(sock, 1)
    assert isinstance(error, ErrorReply) and error.name == "malformed"
    sock.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("oscdump") is None, reason="liblo's oscdump is not installed "
                                                            "(Debian package liblo-tools)")
def test_liblo_oscdump_reads_the_replies(bridge):
    port = free_udp_port()
    dump = subprocess.Popen(["oscdump", "-L", str(port)], stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in dump.stdout], daemon=True).start()

    def wait_for(address: str, resend=None) -> str:
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up:
            if resend:
                resend()
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if f" {address} " in line:
                return line
        raise AssertionError(f"oscdump printed no {address}")

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(bridge.server.udp_address)
    try:
        open_args = ("liblo", 8000, 1, 800, "", "deadline_ms", 0, "reply_port", port, "delay_seconds", DELAY)
        challenge = wait_for("/lmdm/cookie", lambda: sock.send(hand_built("/lmdm/open", *open_args)))  # resent until
        cookie = challenge.split()[-1].strip('"')  # oscdump listens; the cookie reaches the reply port only
        opened = wait_for("/lmdm/open/reply", lambda: sock.send(hand_built("/lmdm/open", *open_args, "cookie", cookie)))
        assert '"liblo"' in opened and '"model_sample_rate" 8000' in opened
        sock.send(hand_built("/lmdm/audio", "liblo", 0, 0, 800, np.zeros(800, "<f4").tobytes(), cookie))
        audio = wait_for("/lmdm/audio/reply")
        assert audio.split()[2] == "siiiib" and '"liblo" 0 0 800 0 [3200 byte blob]' in audio
        sock.send(hand_built("/lmdm/close", "liblo", cookie))
        assert '"processed" 1' in wait_for("/lmdm/close/reply")
    finally:
        sock.close()
        dump.terminate()
        dump.wait(5)
