"""The bridge under attack, on loopback: a server process, a well-behaved session, and the attacks of issue 18.

``tests/test_bridge_abuse.py`` runs them against a debug model and checks the facts each attack returns;
``bench_bridge.py abuse`` runs them against the shipped model and reports, for each, the well-behaved session's
on-time share and the server's peak memory. Every attack is a function of a running ``ServerProcess`` that returns
a dict of what it saw; none needs more than loopback (``forged_source`` needs raw sockets: root or CAP_NET_RAW).
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from lmdm_bridge import BlockFlag, BridgeClient, BridgeError
from lmdm_bridge.protocol.namespace import AUDIO, CLOSE, COOKIE, ERROR, OPEN, PING, STATUS
from lmdm_bridge.protocol.replies import ErrorReply, InfoReply, parse_reply
from lmdm_bridge.wire.framing import LengthPrefixFraming
from lmdm_bridge.wire.osc import Message, OscDecodeError, decode_packet, encode_message

RATE, CHANNELS = 48000, 2
READY = re.compile(r"^lmdm bridge ready: tcp ([\d.]+):(\d+) .*, udp ([\d.]+):(\d+);")
HOST = "127.0.0.1"


# ---- the server -----------------------------------------------------------------------------------------------
class ServerProcess:
    """``python -m lmdm_bridge serve`` on free loopback ports (stopped with SIGINT); its log lines are kept."""

    def __init__(self, *extra: str, model: str | None = None, runtime: str | None = None, cpus: str | None = None,
                 python: str = sys.executable, log_level: str = "warning", session_options: tuple = ()):
        self.session_options = session_options  # what the attacks' opens add (a debug model's delay)
        command = [python, "-m", "lmdm_bridge", "serve", "--port", "0", "--log-level", log_level, *extra]
        command = ["taskset", "-c", cpus, *command] if cpus else command
        command += ["--model", str(model)] if model else []
        command += ["--runtime", runtime] if runtime else []
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        match = READY.match(line)
        if not match:
            self.process.kill()
            raise RuntimeError(f"the bridge did not start: {line!r} {self.process.stderr.read()[-2000:]}")
        self.tcp = (match.group(1), int(match.group(2)))
        self.udp = (match.group(3), int(match.group(4)))
        self.log: list[tuple[float, str]] = []  # (time.monotonic(), line) of every line on its stderr
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log.append((time.monotonic(), line.rstrip("\n")))

    def log_lines_since(self, since: float) -> list[str]:
        return [line for t, line in list(self.log) if t >= since]

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc")

    def status(self) -> dict:
        with BridgeClient(*self.tcp, timeout=10) as client:
            return client.status()

    def stop(self, timeout: float = 60) -> str:
        self.process.send_signal(signal.SIGINT)
        out, _ = self.process.communicate(timeout=timeout)
        return out.strip()


# ---- the well-behaved session -----------------------------------------------------------------------------------
class WellBehaved:
    """A session that plays by the rules throughout an attack: over TCP, one stereo block every block duration
    (``block_seconds``), the default deadline (one block), the server's default preset with ``params`` over it.
    Plays ``warm_up_seconds`` first (the server's memory settles: its runtime's arenas, the session's buffers),
    then takes the server's resident memory as its idle level; records each later reply's flags and round trip,
    and samples the server's memory at every block."""

    def __init__(self, server: ServerProcess, block_seconds: float = 0.2, warm_up_seconds: float = 1.0, **params):
        self.server, self.params = server, params
        self.frames = int(block_seconds * RATE)
        self.period, self.warm_up = block_seconds, max(1, round(warm_up_seconds / block_seconds))
        self.flags: list[int] = []
        self.round_trips: list[float] = []  # seconds from sending each block to holding its reply
        self.rss: list[float] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._warm = threading.Event()

    def __enter__(self) -> "WellBehaved":
        self.client = BridgeClient(*self.server.tcp, timeout=30)
        self.client.open("good", RATE, CHANNELS, self.frames, **self.params)
        self._thread.start()
        if not self._warm.wait(60):
            raise RuntimeError(f"the well-behaved session did not start: {self.error!r}")
        self.idle_rss = self.server.rss_mib()
        return self

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        try:
            start = time.monotonic()
            for i in range(1 << 30):
                if self._stop.is_set():
                    break
                time.sleep(max(0.0, start + i * self.period - time.monotonic()))
                block = (0.2 * rng.standard_normal((CHANNELS, self.frames))).astype(np.float32)
                sent = time.monotonic()
                flags = self.client.process("good", block).flags
                if i >= self.warm_up:
                    self.round_trips.append(time.monotonic() - sent)
                    self.flags.append(int(flags))
                    self.rss.append(self.server.rss_mib())
                elif i == self.warm_up - 1:
                    self._warm.set()
        except BaseException as e:  # reported by check(): the session must never fail
            self.error = e
            self._warm.set()

    def __exit__(self, *exc) -> None:
        give_up = time.monotonic() + 10 * self.period
        while len(self.flags) < 3 and self.error is None and time.monotonic() < give_up:  # a few blocks at least
            time.sleep(self.period / 4)
        self._stop.set()
        self._thread.join(30)
        try:
            self.client.close("good")
        except (BridgeError, OSError, TimeoutError):
            pass
        self.client.close_connection()

    @property
    def late(self) -> int:
        return sum(bool(f & BlockFlag.LATE) for f in self.flags)

    @property
    def on_time_share(self) -> float:
        return 1.0 - self.late / max(1, len(self.flags))

    @property
    def peak_rss(self) -> float:
        return max(self.rss, default=self.idle_rss)

    def check(self, allowance_mib: float) -> None:
        """Every block answered on time, and the server's memory within 25% of its level at the start plus
        ``allowance_mib`` (what the attacker may hold)."""
        assert self.error is None, f"the well-behaved session failed: {self.error!r}"
        assert len(self.flags) >= 3, "the well-behaved session sent too few blocks"
        trips = ", ".join(f"{1000 * t:.0f}{' LATE' if f & BlockFlag.LATE else ''}"
                          for t, f in zip(self.round_trips, self.flags))
        assert self.late == 0, (f"{self.late} of {len(self.flags)} blocks of the well-behaved session were late "
                                f"(round trips, ms: {trips})")
        bound = 1.25 * self.idle_rss + allowance_mib
        assert self.peak_rss <= bound, f"server RSS peaked at {self.peak_rss:.0f} MiB, over {bound:.0f} MiB"


# ---- raw OSC over sockets ---------------------------------------------------------------------------------------
def osc(address: str, *args) -> bytes:
    return encode_message(Message(address, args))


def bundle(packets: list[bytes]) -> bytes:
    return b"#bundle\0" + b"\0" * 8 + b"".join(struct.pack(">i", len(p)) + p for p in packets)


def chunk(session: str, seq: int, offset: int, total: int, frames: int, cookie: str | None = None) -> bytes:
    return osc(AUDIO, session, seq, offset, total, bytes(frames * 4 * CHANNELS), *([cookie] if cookie else []))


def replies_of(packets) -> list:
    out = []
    for packet in packets:
        try:
            messages = decode_packet(packet)
        except OscDecodeError:
            continue
        for message in messages:
            try:
                out.append(parse_reply(message))
            except ValueError:
                pass
    return out


def udp_socket(host: str = HOST) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((host, 0))
    return sock


def drain_udp(sock: socket.socket, seconds: float, until=None) -> tuple[list[bytes], int]:
    """Datagrams that arrive within ``seconds`` (or until ``until(replies)`` holds for the replies other than
    audio), and their bytes."""
    packets, replies, received, give_up = [], [], 0, time.monotonic() + seconds
    while time.monotonic() < give_up:
        sock.settimeout(max(1e-3, give_up - time.monotonic()))
        try:
            data = sock.recv(1 << 16)
        except (socket.timeout, BlockingIOError):
            break
        except ConnectionRefusedError:
            continue
        packets.append(data)
        received += len(data)
        if until is not None and not data.startswith(AUDIO.encode()):
            replies += replies_of([data])
            if until(replies):
                break
    return packets, received


def udp_open(sock: socket.socket, server: "ServerProcess", session: str, frames: int,
             *options) -> tuple[str | None, object]:
    """Open a session over UDP, answering the cookie challenge: (its cookie, the open's answer). Servers without
    cookies answer at once (cookie None)."""
    args = (session, RATE, CHANNELS, frames, "", *server.session_options, *options)
    sock.sendto(osc(OPEN, *args), server.udp)

    def answered(replies):
        return any(getattr(r, "session", None) == session and (isinstance(r, ErrorReply) or r.request in (OPEN, COOKIE))
                   for r in replies)
    replies = [r for r in replies_of(drain_udp(sock, 10, answered)[0]) if getattr(r, "session", None) == session]
    if not replies or not isinstance(replies[-1], InfoReply) or replies[-1].request != COOKIE:
        return None, replies[-1] if replies else None
    cookie = replies[-1].values["cookie"]
    sock.sendto(osc(OPEN, *args, "cookie", cookie), server.udp)
    replies = [r for r in replies_of(drain_udp(sock, 10, lambda rs: any(
        getattr(r, "session", None) == session and (isinstance(r, ErrorReply) or r.request == OPEN) for r in rs))[0])
        if getattr(r, "session", None) == session]
    return cookie, replies[-1] if replies else None


def tcp_connection(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(server.tcp, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_tcp(sock: socket.socket, seconds: float, quiet: float = 0.5) -> list:
    """Replies read until ``seconds`` pass or nothing comes for ``quiet`` seconds."""
    framing, packets = LengthPrefixFraming(1 << 30), []
    give_up = time.monotonic() + seconds
    while time.monotonic() < give_up:
        sock.settimeout(quiet)
        try:
            data = sock.recv(1 << 20)
        except (socket.timeout, ConnectionResetError):
            break
        if not data:
            break
        packets += [p for p in framing.feed(data) if isinstance(p, bytes)]
    return replies_of(packets)


def pairs(options: tuple):
    return zip(options[::2], options[1::2])


def errors(replies, name: str | None = None) -> list[ErrorReply]:
    return [r for r in replies if isinstance(r, ErrorReply) and (name is None or r.name == name)]


def infos(replies, request: str) -> list[InfoReply]:
    return [r for r in replies if isinstance(r, InfoReply) and r.request == request]


# ---- the attacks (issue 18's findings, in order) ------------------------------------------------------------------
def open_close_bundles(server: ServerProcess, pairs: int = 128, rounds: int = 2) -> dict:
    """1. Bundles of /lmdm/open + /lmdm/close pairs on one TCP connection (about 30 KB)."""
    sock = tcp_connection(server)
    sent = 0
    for r in range(rounds):
        packets = []
        for i in range(pairs):
            name = f"flood{r}-{i}"
            packets += [osc(OPEN, name, RATE, CHANNELS, 4800, "", *server.session_options), osc(CLOSE, name)]
        data = LengthPrefixFraming.encode(bundle(packets))
        sock.sendall(data)
        sent += len(data)
    replies = read_tcp(sock, 30)
    sock.close()
    return {"sent_bytes": sent, "open_replies": len(infos(replies, OPEN)), "sessions": len(infos(replies, OPEN)),
            "close_replies": len(infos(replies, CLOSE)), "refused": len(errors(replies, "too_many_sessions"))}


def tiny_chunks(server: ServerProcess, sessions: int = 4, blocks: int = 8, rounds: int = 1) -> dict:
    """2. Over UDP: an open asking 50 steps, guidance 8 and 1 MiB blocks with no deadline; then sessions that may
    open, each sent one-frame chunks that claim whole 1 MiB blocks, then closed."""
    sock = udp_socket()
    big = 131040  # stereo float32 frames of a 1 MiB block
    _, heavy = udp_open(sock, server, "heavy", big, "deadline_ms", 0, "steps", 50, "guidance", 8.0)
    over_quota = closed = 0
    for r in range(rounds):
        cookies = {}
        for i in range(sessions):
            name = f"tiny{r}-{i}"
            cookies[name], _ = udp_open(sock, server, name, big, "deadline_ms", 0, "steps", 1)
        for name, cookie in cookies.items():
            for seq in range(blocks):
                sock.sendto(chunk(name, seq, 0, big, 1, cookie), server.udp)
        for name, cookie in cookies.items():
            sock.sendto(osc(CLOSE, name, *([cookie] if cookie else [])), server.udp)
        names = set(cookies)
        packets, _ = drain_udp(sock, 60, lambda rs: {r.session for r in infos(rs, CLOSE) + errors(rs)
                                                     if getattr(r, "seq", -1) == -1} >= names)
        replies = replies_of(packets)
        over_quota += len(errors(replies, "over_quota"))
        closed += len(infos(replies, CLOSE))
    sock.close()
    return {"heavy_open": heavy.name if isinstance(heavy, ErrorReply) else "opened", "over_quota": over_quota,
            "closed": closed, "sessions": sessions, "holders": 1}


def amplification(server: ServerProcess, garbage: int = 50, chunks: int = 40) -> dict:
    """3. Over UDP, from an address that never proves itself: garbage, an open whose replies go to another port,
    chunks that claim whole 1 MiB blocks, an open whose replies would go to the bridge's own port, a status
    request. Every byte that comes back, to the sender or to the other port, is counted."""
    sender, other = udp_socket(), udp_socket()
    sent = 0

    def send(data: bytes) -> None:
        nonlocal sent
        sender.sendto(data, server.udp)
        sent += len(data)
    for i in range(garbage):
        send(struct.pack(">Q", i))
    send(osc(OPEN, "amp", RATE, CHANNELS, 131040, "", *server.session_options, "deadline_ms", 0, "reply_port",
             other.getsockname()[1]))
    time.sleep(0.2)
    for seq in range(chunks):
        send(chunk("amp", min(seq, 7), 0, 131040, 1))
    send(osc(OPEN, "loop", RATE, CHANNELS, 4800, "", *server.session_options, "reply_port", server.udp[1]))
    send(osc(STATUS))
    packets_before = server.status()["packets"]
    a, received_a = drain_udp(sender, 2.0)
    b, received_b = drain_udp(other, 1.0)
    packets_after = server.status()["packets"]
    own_port = [e for e in errors(replies_of(a)) if "own port" in e.message]
    status = infos(replies_of(a), STATUS)
    sender.close()
    other.close()
    return {"sent_bytes": sent, "received_bytes": received_a + received_b, "to_other_port": received_b,
            "ratio": (received_a + received_b) / sent, "own_port_refused": bool(own_port),
            "packets_while_quiet": packets_after - packets_before - 1,  # the status request counted itself
            "status_answered": bool(status)}


def short_errors_and_status(server: ServerProcess) -> dict:
    """3. An error about a 100 KB argument, and /lmdm/status as a peer without the token sees it (over TCP)."""
    sock = tcp_connection(server)
    request = LengthPrefixFraming.encode(osc(OPEN, "big", "x" * 100_000, CHANNELS, 4800, ""))
    sock.sendall(request)
    sock.sendall(LengthPrefixFraming.encode(osc(STATUS)))
    replies = read_tcp(sock, 10)
    sock.close()
    (error,) = errors(replies)
    (status,) = infos(replies, STATUS)
    return {"request_bytes": len(request), "error_bytes": len(encode_message(Message(ERROR, (
        error.code, error.name, error.session, error.seq, error.message)))), "status": status.values}


def heavy_sessions(server: ServerProcess, peers: int = 6, seconds: float = 4.0, period: float = 0.1) -> dict:
    """4. Peers (UDP sockets) each opening a session at 50 steps and guidance 8, fed one chunk every ``period``
    that claims a whole new 0.1 s block (the rest is concealed): more work than the machine has. One first asks
    for 131,040-frame blocks, as in the issue."""
    socks = [udp_socket() for _ in range(peers)]
    _, huge = udp_open(socks[0], server, "huge", 131040, "steps", 50, "guidance", 8.0)
    if isinstance(huge, InfoReply) and huge.request == OPEN:
        socks[0].sendto(osc(CLOSE, "huge", *([huge.values["cookie"]] if "cookie" in huge.values else [])), server.udp)
    opened = {}
    refused = []
    for i, sock in enumerate(socks):
        cookie, reply = udp_open(sock, server, f"heavy{i}", 4800, "steps", 50, "guidance", 8.0)
        if isinstance(reply, InfoReply) and reply.request == OPEN:
            opened[i] = cookie
        else:
            refused.append(reply.name if isinstance(reply, ErrorReply) else "no answer")
    start = time.monotonic()
    for n in range(int(seconds / period)):
        time.sleep(max(0.0, start + n * period - time.monotonic()))
        for i, cookie in opened.items():
            socks[i].sendto(chunk(f"heavy{i}", n, 0, 4800, 1, cookie), server.udp)
    for i, cookie in opened.items():
        socks[i].sendto(osc(CLOSE, f"heavy{i}", *([cookie] if cookie else [])), server.udp)
    for sock in socks:
        sock.close()
    return {"huge_open": huge.name if isinstance(huge, ErrorReply) else "opened", "opened": len(opened),
            "refused": refused, "sessions": len(opened), "holders": len(opened)}


def one_peer_many_sessions(server: ServerProcess, sessions: int = 33) -> dict:
    """4. One TCP connection opening ``sessions`` sessions."""
    sock = tcp_connection(server)
    sock.sendall(b"".join(LengthPrefixFraming.encode(osc(OPEN, f"mine{i}", RATE, CHANNELS, 4800, "",
                                                         *server.session_options)) for i in range(sessions)))
    replies = read_tcp(sock, 30, quiet=1.0)
    sock.close()
    opened = len(infos(replies, OPEN))
    return {"opened": opened, "refused": len(errors(replies, "too_many_sessions")), "sessions": opened}


def idle_connections(server: ServerProcess, connections: int = 63, wait: float = 0.0) -> dict:
    """4. ``connections`` TCP connections that send one byte each and nothing more; then a newcomer connects and
    plays a block; after ``wait`` seconds, how many of the idle ones the server has closed."""
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(server.tcp, timeout=5)
        sock.sendall(b"\0")
        socks.append(sock)
    time.sleep(0.2)
    served = False
    try:
        with BridgeClient(*server.tcp, timeout=10) as newcomer:
            newcomer.open("newcomer", RATE, CHANNELS, 4800, **dict(pairs(server.session_options)))
            newcomer.process("newcomer", np.zeros((CHANNELS, 4800), np.float32))
            newcomer.close("newcomer")
            served = True
    except (ConnectionError, OSError, TimeoutError, BridgeError):
        pass
    time.sleep(wait)
    closed = 0
    for sock in socks:
        sock.settimeout(0.05)
        try:
            closed += sock.recv(1) == b""
        except socket.timeout:
            pass
        except OSError:
            closed += 1
        sock.close()
    return {"newcomer_served": served, "closed_by_server": closed}


def ping_bundles(server: ServerProcess, bundles: int = 400, pings: int = 256) -> dict:
    """4. Bundles of 256 pings each, from one UDP socket, as fast as it can send them."""
    sock = udp_socket()
    packet = bundle([osc(PING)] * pings)
    start = time.monotonic()
    for _ in range(bundles):
        sock.sendto(packet, server.udp)
    sent = time.monotonic() - start
    packets, _ = drain_udp(sock, 2.0)
    pongs = len(infos(replies_of(packets), PING))
    sock.close()
    return {"pings": bundles * pings, "pongs": pongs, "seconds": sent + 2.0}


def malformed_sources(server: ServerProcess, sources: int = 200, each: int = 5) -> dict:
    """4. Malformed datagrams from ``sources`` loopback addresses (127.0.1.x, 127.0.2.x, ...)."""
    start = time.monotonic()
    for i in range(sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.{1 + i // 250}.{1 + i % 250}", 0))
        for _ in range(each):
            sock.sendto(b"\xffjunk", server.udp)
        sock.close()
    time.sleep(2.0)
    lines = server.log_lines_since(start)
    return {"datagrams": sources * each, "log_lines": len(lines)}


def raw_sockets_allowed() -> bool:
    """Whether this process may forge packets (root, or CAP_NET_RAW)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).close()
        return True
    except PermissionError:
        return False


def forged_source(server: ServerProcess) -> dict:
    """5. A UDP session, then datagrams forged (raw socket) with its address as their source: a parameter change
    and a close without its cookie. Returns whether the session still plays with its parameters."""
    victim = BridgeClient(*server.udp, transport="udp", timeout=10)
    victim.open("victim", RATE, CHANNELS, 4800, mix=0.5, **dict(pairs(server.session_options)))
    port = victim._sock.getsockname()[1]
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        for payload in (osc("/lmdm/param", "victim", "mix", 0.0), osc(CLOSE, "victim")):
            raw.sendto(_udp_datagram(HOST, port, server.udp[0], server.udp[1], payload), (server.udp[0], 0))
        time.sleep(0.3)
        result = victim.process("victim", np.zeros((CHANNELS, 4800), np.float32))
        params = victim.set_params("victim", seed=1)
        intact = not result.flags & BlockFlag.LATE and params["mix"] == 0.5
    except (BridgeError, TimeoutError):
        intact = False
    finally:
        raw.close()
    try:
        victim.close("victim")
    except (BridgeError, TimeoutError):
        pass
    victim.close_connection()
    return {"victim_intact": intact, "sessions": 1}


def _udp_datagram(source: str, source_port: int, dest: str, dest_port: int, payload: bytes) -> bytes:
    """An IPv4 packet holding a UDP datagram with any source address (checksums: the kernel fills the IP one, 0
    means none for UDP)."""
    udp = struct.pack(">HHHH", source_port, dest_port, 8 + len(payload), 0) + payload
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(source), socket.inet_aton(dest))
    return header + udp


def free_text_prompt(server: ServerProcess) -> dict:
    """6. A free-text prompt sent to a server started without --text."""
    with BridgeClient(*server.tcp, timeout=30) as client:
        client.open("words", RATE, CHANNELS, 4800, **dict(pairs(server.session_options)))
        rss = server.rss_mib()
        start = time.monotonic()
        try:
            client.set_params("words", prompt="a prompt no preset has: warm analogue strings")
            outcome = "accepted"
        except BridgeError as e:
            outcome = f"{e.name}: {e.message}"
        seconds = time.monotonic() - start
        grew = server.rss_mib() - rss
        client.close("words")
    return {"outcome": outcome, "seconds": seconds, "rss_growth_mib": grew, "sessions": 1}


def denormal_input(server: ServerProcess, blocks: int = 20) -> dict:
    """6. Server time for blocks of denormal samples against blocks of silence (no deadline)."""
    out = {}
    with BridgeClient(*server.tcp, timeout=60) as client:
        for name, value in (("silence", 0.0), ("denormal", 1e-40), ("silence again", 0.0)):
            client.open("d", RATE, CHANNELS, 4800, deadline_ms=0, **dict(pairs(server.session_options)))
            block = np.full((CHANNELS, 4800), value, np.float32)
            before = client.status()["process_seconds"]
            for _ in range(blocks):
                client.process("d", block)
            out[name] = client.status()["process_seconds"] - before
            client.close("d")
    return {"ratio": out["denormal"] / ((out["silence"] + out["silence again"]) / 2), **out, "sessions": 1,
            "holders": 1}
