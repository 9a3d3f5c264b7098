"""The OSC bridge against calling the Session directly: round trips, sessions in real time, and a soak.

Each run starts ``python -m lmdm_bridge serve`` on free loopback ports (the shipped model, or ``--model``) and
talks to it with ``BridgeClient`` from this process, as a DAW on the same machine would. Audio is the
bench_realtime test signal (decaying notes plus a little noise), stereo at 48 kHz, in blocks of ``--block`` s.

roundtrip  Blocks sent one at a time: time from sending a block to holding its reply, over TCP and over UDP,
           against ``Session.process`` on the same blocks in this process; the three paths take turns block by
           block. The bridge's overhead is measured per block: the round trip minus the time the server spent in
           ``session.process`` for that same block (the server's status reports its running total, read before
           and after each block). Client encoding and decoding, sockets, framing, OSC, reassembly, the hand-offs
           between the server's event loop and its worker thread, and scheduling all count as overhead; the
           engine's own jitter does not. (The direct round trip is shown for scale only: subtracting its
           percentiles from the bridge's would mix two independent samples of the engine's jitter.) The server
           runs with batching on (its default), the sessions with no deadline. ``--pin C:S`` pins this process to
           CPUs C and the server to CPUs S (taskset lists, e.g. ``0:1``).
sessions   N sessions, each on its own TCP connection and thread, all sending a block every block duration (like
           the tracks of a DAW), with the default deadline (one block). A configuration runs in real time when no
           block comes back late. For each mode (batching on, off) N goes up through ``--sessions`` and stops after
           the first N with late blocks. Reported: late blocks, p50 and p99 round trip, and how many sessions'
           runtime calls each batched call carried.
client     The client's own share of a UDP block, with no server: a plain socket stands in for the bridge (it
           answers the open, then takes each block's datagrams and sends back the 24 datagrams of its reply, before
           ``receive_block`` is timed). ``send_block`` and ``receive_block`` are timed warm (back to back) and
           after a 20 ms sleep, as they run in a real session, where the client waits for the engine between
           blocks: code run just after a sleep misses the CPU's caches, and on this VM costs 2 to 4 times as much.
soak       ``--soak-sessions`` sessions (4) push ``--minutes`` of audio each, as fast as they are answered (two
           blocks in flight, no deadline). Reported: every block answered and unflagged, and the server's resident
           memory over time (from /proc): flat means it never grows past the sample taken after the first minute
           of audio (``--minutes`` / 10 for short runs) by more than 10%.

    python benchmarks/bench_bridge.py roundtrip [--blocks 200] [--pin 0:1] [--markdown]
    python benchmarks/bench_bridge.py client [--blocks 200] [--markdown]
    python benchmarks/bench_bridge.py sessions [--sessions 4,8,12,16,20,24] [--seconds 10] [--markdown]
abuse      The attacks of issue 18 (benchmarks/bridge_harness.py), one after another against one server with its
           default limits, each while a well-behaved session plays (TCP, the default preset, a block every
           ``--good-block`` s with the default deadline). Reported for each: what the bridge did, the
           well-behaved session's blocks answered on time, the server's resident memory at the session's start
           and its peak, and the bound it must stay within (1.25 x the start + what the attacker may hold). The
           forged-source attack needs raw sockets (root).

    python benchmarks/bench_bridge.py soak [--minutes 60] [--soak-sessions 4] [--markdown]
    python benchmarks/bench_bridge.py abuse [--attacks 2,4] [--good-block 0.25] [--markdown]
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
import threading
import time

import numpy as np
from bench_realtime import test_signal

from lmdm_bridge import BlockFlag, BridgeClient
from lmdm_bridge.client import UDP_PACKET_BYTES
from lmdm_bridge.protocol.namespace import AUDIO, reply_address
from lmdm_bridge.protocol.replies import open_reply
from lmdm_bridge.wire.blocks import audio_packets
from lmdm_bridge.wire.osc import decode_packet, encode_message
from lmdm_engine.io.presets import DEFAULT_PRESET, load_preset
from lmdm_engine.runtime.interface import default_model_dir, load_runtime
from lmdm_engine.stream.session import Session

import bridge_harness as attacks
from _common import machine, print_table
from bridge_harness import ServerProcess, WellBehaved

RATE, CHANNELS = 48000, 2


def server_process(args, *extra: str, cpus: str | None = None) -> ServerProcess:
    """``python -m lmdm_bridge serve`` on free ports with the benchmark's model and runtime."""
    return ServerProcess(*extra, model=args.model, runtime=args.runtime, cpus=cpus)


def blocks_of(audio: np.ndarray, frames: int) -> list[np.ndarray]:
    return [audio[:, i: i + frames] for i in range(0, audio.shape[1] - frames + 1, frames)]


def pct(values, q) -> str:
    return f"{np.percentile(values, q):.2f}"


# ---- roundtrip -------------------------------------------------------------------------------------------
def cpu_list(text: str) -> set[int]:
    cpus = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def roundtrip(args) -> None:
    client_cpus, server_cpus = args.pin.split(":") if args.pin else (None, None)
    if client_cpus and os.sched_getaffinity(0) != cpu_list(client_cpus):
        # start over under taskset: thread pools started at import (numpy's BLAS) must see the CPUs they get
        os.execvp("taskset", ["taskset", "-c", client_cpus, sys.executable, *sys.argv])
    frames = int(args.block * RATE)
    blocks = blocks_of(test_signal(args.block * (args.blocks + 2), RATE, CHANNELS), frames)[: args.blocks + 2]
    runtime = load_runtime(args.model, **({"backend": args.runtime} if args.runtime else {}))
    server = server_process(args, cpus=server_cpus)
    paths = {"direct": Session(runtime, RATE, CHANNELS, load_preset(DEFAULT_PRESET).params).process}
    clients = []
    for transport, address in (("tcp", server.tcp), ("udp", server.udp)):
        client = BridgeClient(*address, transport=transport)
        client.open(transport, RATE, CHANNELS, frames, DEFAULT_PRESET, deadline_ms=0)
        paths[transport] = lambda block, client=client, name=transport: client.process(name, block)
        clients.append(client)
    times = {name: [] for name in paths}
    outside = {"tcp": [], "udp": []}  # per block: round trip minus the server's time in the session for it
    # this process's own heap (the direct path's engine) out of the collector's scans, as the server's is: a full
    # collection of it takes tens of ms, which is no part of the bridge's overhead
    gc.collect()
    gc.freeze()
    flagged = 0
    try:
        for block in blocks:  # the paths take turns on each block, so a busy moment touches all of them
            for name, process in paths.items():
                before = None if name == "direct" else clients[0].status()["process_seconds"]
                start = time.perf_counter()
                result = process(block)
                ms = 1000 * (time.perf_counter() - start)
                times[name].append(ms)
                if before is not None:
                    outside[name].append(ms - 1000 * (clients[0].status()["process_seconds"] - before))
                    flagged += bool(result.flags)
        for client, name in zip(clients, ("tcp", "udp")):
            client.close(name)
            client.close_connection()
    finally:
        server.stop()
    pinned = f"client CPUs {client_cpus}, server CPUs {server_cpus}" if args.pin else "no"
    print(f"machine: {machine()}; pinned: {pinned}")
    print(f"model: {args.model or default_model_dir()} ({runtime.name}); preset {DEFAULT_PRESET}; "
          f"{args.blocks} blocks of {args.block:g} s stereo {RATE} Hz after 2 warm-up blocks; flagged replies: "
          f"{flagged}")
    rows = []
    for name, ms in times.items():
        ms = np.array(ms[2:])  # the first two blocks warm up
        over = ["-"] * 4 if name == "direct" else [pct(outside[name][2:], q) for q in (50, 90, 99, 100)]
        rows.append([name, pct(ms, 50), pct(ms, 99), *over])
    print_table(["path", "round trip p50 ms", "p99 ms", "bridge overhead p50 ms", "p90 ms", "p99 ms", "max ms"],
                rows, args.markdown)


# ---- the client's share ---------------------------------------------------------------------------------------
def client_share(args) -> None:
    frames = int(args.block * RATE)
    audio = test_signal(args.block, RATE, CHANNELS)[:, :frames]
    bridge = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bridge.bind(("127.0.0.1", 0))
    bridge.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    bridge.settimeout(10.0)
    opened = threading.Thread(target=lambda: answer_open(bridge))
    opened.start()
    client = BridgeClient(*bridge.getsockname(), transport="udp")
    client.open("share", RATE, CHANNELS, frames, DEFAULT_PRESET)
    opened.join()
    request_datagrams = len(audio_packets(AUDIO, "share", 0, audio, None, UDP_PACKET_BYTES))
    times = {}
    for mode, pause in (("warm", 0.0), ("after a 20 ms sleep", 0.02)):
        sends, receives = [], []
        for _ in range(args.blocks + 2):
            time.sleep(pause)
            start = time.perf_counter()
            seq = client.send_block("share", audio)
            sends.append(1000 * (time.perf_counter() - start))
            address = None
            for _ in range(request_datagrams):
                _, address = bridge.recvfrom(1 << 16)
            for packet in audio_packets(reply_address(AUDIO), "share", seq, audio, 0, UDP_PACKET_BYTES):
                bridge.sendto(packet, address)
            time.sleep(pause)
            start = time.perf_counter()
            client.receive_block("share", seq)
            receives.append(1000 * (time.perf_counter() - start))
        times[mode] = (sends[2:], receives[2:])
    client.close_connection()
    bridge.close()
    print(f"machine: {machine()}")
    print(f"{args.blocks} blocks of {args.block:g} s stereo {RATE} Hz, each way in datagrams of at most "
          f"{UDP_PACKET_BYTES} bytes, after 2 warm-up blocks")
    rows = [[f"{name}, {mode}", pct(ms, 50), pct(ms, 90), pct(ms, 99)]
            for mode, (sends, receives) in times.items() for name, ms in (("send_block", sends),
                                                                          ("receive_block", receives))]
    print_table(["call", "p50 ms", "p90 ms", "p99 ms"], rows, args.markdown)


def answer_open(bridge: socket.socket) -> None:
    packet, address = bridge.recvfrom(1 << 16)
    (request,) = decode_packet(packet)
    bridge.sendto(encode_message(open_reply(request.args[0], 0, {})), address)


# ---- sessions in real time ------------------------------------------------------------------------------------
def paced_session(address, name: str, blocks: list[np.ndarray], start: float, period: float, out: dict) -> None:
    """Send block i at start + i * period; record each round trip and its flags."""
    client = BridgeClient(*address)
    client.open(name, RATE, CHANNELS, blocks[0].shape[1], DEFAULT_PRESET)
    ms, late = [], 0
    for i, block in enumerate(blocks):
        time.sleep(max(0.0, start + i * period - time.perf_counter()))
        sent = time.perf_counter()
        result = client.process(name, block)
        ms.append(1000 * (time.perf_counter() - sent))
        late += bool(result.flags & BlockFlag.LATE)
    client.close(name)
    client.close_connection()
    out[name] = (ms, late)


def run_sessions(args, n: int, batching: bool, blocks: list[np.ndarray]) -> list[str]:
    server = server_process(args, *([] if batching else ["--no-batching"]))
    results: dict = {}
    start = time.perf_counter() + 1.0  # time for every session to open
    threads = [threading.Thread(target=paced_session, args=(server.tcp, f"track{i}", blocks, start, args.block,
                                                            results)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with BridgeClient(*server.tcp) as client:
        status = client.status()
    server.stop()
    ms = np.concatenate([r[0][2:] for r in results.values()])  # after two warm-up blocks
    late = sum(r[1] for r in results.values())
    total = len(results) * len(blocks)
    per_call = f"{status['runtime_requests'] / status['runtime_calls']:.2f}" if status["runtime_calls"] else "-"
    return [str(n), "on" if batching else "off", f"{late}/{total}", pct(ms, 50), pct(ms, 99), per_call,
            "yes" if late == 0 and len(results) == n else "no"]


def sessions(args) -> None:
    frames = int(args.block * RATE)
    count = int(args.seconds / args.block) + 2
    blocks = blocks_of(test_signal(args.block * count, RATE, CHANNELS), frames)
    rows = []
    for batching in (True, False):
        for n in (int(v) for v in args.sessions.split(",")):
            rows.append(run_sessions(args, n, batching, blocks))
            print("  " + "  ".join(rows[-1]), flush=True)
            if rows[-1][6] == "no":
                break
    print(f"machine: {machine()}")
    print(f"model: {args.model or default_model_dir()}; preset {DEFAULT_PRESET}; blocks of {args.block:g} s stereo "
          f"{RATE} Hz every {args.block:g} s per session, {args.seconds:g} s each; deadline one block")
    print_table(["sessions", "batching", "late", "round trip p50 ms", "p99 ms", "session calls per runtime call",
                 "real time"], rows, args.markdown)


# ---- soak --------------------------------------------------------------------------------------------------
def soak_session(address, name: str, audio: np.ndarray, frames: int, total_blocks: int, counts: dict) -> None:
    """Push ``total_blocks`` blocks (cycling over ``audio``) with two in flight, as fast as they are answered."""
    client = BridgeClient(*address)
    client.open(name, RATE, CHANNELS, frames, DEFAULT_PRESET, deadline_ms=0)
    blocks = blocks_of(audio, frames)
    answered = flagged = 0
    in_flight = []
    for i in range(total_blocks):
        in_flight.append(client.send_block(name, blocks[i % len(blocks)]))
        if len(in_flight) == 2:
            flagged += bool(client.receive_block(name, in_flight.pop(0)).flags)
            answered += 1
            counts[name] = answered
    for seq in in_flight:
        flagged += bool(client.receive_block(name, seq).flags)
        answered += 1
    client.close(name)
    client.close_connection()
    counts[name] = answered
    counts[name + ":flagged"] = flagged


def soak(args) -> None:
    frames = int(args.block * RATE)
    total_blocks = int(args.minutes * 60 / args.block)
    audio = test_signal(60.0, RATE, CHANNELS)
    server = server_process(args)
    counts: dict = {}
    names = [f"soak{i}" for i in range(args.soak_sessions)]
    threads = [threading.Thread(target=soak_session, args=(server.tcp, name, audio, frames, total_blocks, counts))
               for name in names]
    start = time.perf_counter()
    for t in threads:
        t.start()
    samples = []  # (wall s, audio minutes per session, server RSS MiB), while the sessions are open
    while any(t.is_alive() for t in threads):
        done = min(counts.get(name, 0) for name in names)
        samples.append((time.perf_counter() - start, done * args.block / 60, server.rss_mib()))
        for t in threads:
            t.join(timeout=args.sample_seconds / len(threads))
    wall = time.perf_counter() - start
    summary = server.stop()
    answered = sum(counts.get(name, 0) for name in names)
    flagged = sum(counts.get(name + ":flagged", 0) for name in names)
    warm = next((s for s in samples if s[1] >= min(1.0, args.minutes / 10)), samples[0])
    peak = max(s[2] for s in samples if s[0] >= warm[0])
    growth = peak / warm[2] - 1
    print(f"machine: {machine()}")
    print(f"model: {args.model or default_model_dir()}; preset {DEFAULT_PRESET}; {args.soak_sessions} sessions x "
          f"{args.minutes:g} min of stereo {RATE} Hz audio in {args.block:g} s blocks, two in flight each")
    shown = samples[:: max(1, len(samples) // 20)]
    shown += samples[-1:] if shown[-1] is not samples[-1] else []
    rows = [[f"{s[0]:.0f}", f"{s[1]:.1f}", f"{s[2]:.0f}"] for s in shown]
    print_table(["wall s", "audio min per session", "server RSS MiB"], rows, args.markdown)
    print(f"blocks answered: {answered} of {args.soak_sessions * total_blocks}; flagged: {flagged}; "
          f"{args.soak_sessions * args.minutes * 60 / wall:.1f}x real time in all")
    print(f"server RSS: {warm[2]:.0f} MiB after warm-up, at most {peak:.0f} MiB after it ({100 * growth:+.1f}%: "
          f"{'flat' if growth <= 0.10 else 'NOT flat'}, limit +10%); {summary}")


# ---- abuse ----------------------------------------------------------------------------------------------------
# (finding, attack, function, its arguments, what the facts say); each attack's facts say how many sessions it held
# and how many of its peers held audio in flight (``sessions``, ``holders``): its allowance of memory
ATTACKS = [
    ("1", "open+close bundles, 2 x 128 pairs on one TCP connection", attacks.open_close_bundles, {},
     lambda f: f"{f['open_replies']} sessions built, {f['refused']} opens refused"),
    ("2", "UDP: 50 steps x guidance 8 x 1 MiB open; then 3 rounds of 4 sessions x 8 one-frame chunks claiming "
          "1 MiB blocks", attacks.tiny_chunks, dict(sessions=4, blocks=8, rounds=3),
     lambda f: f"heavy open: {f['heavy_open']}; {f['over_quota']} blocks over the peer's quota"),
    ("3", "UDP from an unproven address: garbage, reply_port elsewhere, 40 chunks claiming 1 MiB blocks, "
          "reply_port = the bridge's own", attacks.amplification, {},
     lambda f: f"replies {f['ratio']:.2f}x the request bytes; {f['to_other_port']} B to the other port; own port "
               f"{'refused' if f['own_port_refused'] else 'ACCEPTED'}"),
    ("3", "error about a 100 KB argument; status without the token", attacks.short_errors_and_status, {},
     lambda f: f"error {f['error_bytes']} B for {f['request_bytes']} B; status model {f['status']['model']!r}"),
    ("4", "12 UDP peers: 131,040-frame blocks, then 50 steps x guidance 8, a concealed block every 0.1 s",
     attacks.heavy_sessions, dict(peers=12, seconds=10.0),
     lambda f: f"1 MiB open: {f['huge_open']}; {f['opened']} heavy sessions opened, {len(f['refused'])} refused"),
    ("4", "one TCP connection opens 33 sessions", attacks.one_peer_many_sessions, {},
     lambda f: f"{f['opened']} opened, {f['refused']} refused"),
    ("4", "63 TCP connections sending one byte each, then a newcomer", attacks.idle_connections, dict(wait=11.0),
     lambda f: f"newcomer {'served' if f['newcomer_served'] else 'LOCKED OUT'}; {f['closed_by_server']} closed by "
               "the handshake timeout"),
    ("4", "400 bundles of 256 pings from one UDP socket", attacks.ping_bundles, {},
     lambda f: f"{f['pongs']} of {f['pings']} pings answered in {f['seconds']:.1f} s"),
    ("4", "malformed datagrams from 1,000 loopback addresses", attacks.malformed_sources, dict(sources=1000),
     lambda f: f"{f['log_lines']} log lines for {f['datagrams']} datagrams"),
    ("5", "forged source address (raw socket): param and close without the cookie", attacks.forged_source, {},
     lambda f: "victim untouched" if f["victim_intact"] else "VICTIM CHANGED"),
    ("6", "free-text prompt, server without --text", attacks.free_text_prompt, {},
     lambda f: f"{f['outcome'][:60]} after {f['seconds']:.2f} s, RSS {f['rss_growth_mib']:+.0f} MiB"),
    ("6", "denormal blocks against silence (no deadline)", attacks.denormal_input, {},
     lambda f: f"server time {f['ratio']:.2f}x silence's"),
]
QUOTA_MIB = 32  # --max-peer-bytes, the default
SESSION_MIB = 20  # what one session holds with the shipped model (its two codecs' STFT bases are 8 MiB each)


def abuse(args) -> None:
    rows = []
    chosen = set(args.attacks.split(",")) if args.attacks else None
    for finding, name, attack, kwargs, say in ATTACKS:
        if chosen is not None and finding not in chosen:
            continue
        if attack is attacks.forged_source and not attacks.raw_sockets_allowed():
            rows.append([finding, name, "skipped: raw sockets need root", "-", "-", "-", "-"])
            continue
        server = server_process(args)  # a fresh server for each: its idle memory is the baseline
        try:
            with WellBehaved(server, block_seconds=args.good_block, warm_up_seconds=3.0) as good:
                facts = attack(server, **kwargs)
        finally:
            started = time.monotonic()
            server.stop()
            stop_s = time.monotonic() - started
        allowance = facts.get("sessions", 0) * SESSION_MIB + facts.get("holders", 0) * QUOTA_MIB
        bound = 1.25 * good.idle_rss + allowance
        worst = 1000 * max(good.round_trips, default=0.0)
        rows.append([finding, name, say(facts), f"{len(good.flags) - good.late}/{len(good.flags)}", f"{worst:.0f}",
                     f"{good.idle_rss:.0f} -> {good.peak_rss:.0f} (bound {bound:.0f}: "
                     f"{'met' if good.peak_rss <= bound else 'NOT met'})", f"{stop_s:.1f}"])
        print("  " + " | ".join(rows[-1]), flush=True)
    print(f"machine: {machine()}")
    print(f"model: {args.model or default_model_dir()}; a fresh server with the default limits for each attack; the "
          f"well-behaved session: TCP, {DEFAULT_PRESET}, stereo {RATE} Hz blocks of {args.good_block:g} s every "
          f"{args.good_block:g} s, deadline one block; RSS bound: 1.25 x the server's RSS once the session plays + what "
          f"the attacker holds within its quotas ({SESSION_MIB} MiB a session it opened, {QUOTA_MIB} MiB of audio in "
          f"flight a peer that sent audio); stop: seconds from SIGINT to exit, right after the attack")
    print_table(["finding", "attack", "what the bridge did", "well-behaved on time", "worst round trip ms",
                 "server RSS MiB", "stop s"], rows, args.markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("roundtrip", "client", "sessions", "soak", "abuse"))
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--runtime", default=None, help="runtime backend (default: the engine's)")
    parser.add_argument("--block", type=float, default=0.5, help="block length in seconds (default 0.5)")
    parser.add_argument("--blocks", type=int, default=200, help="roundtrip, client: blocks timed per path")
    parser.add_argument("--sessions", default="4,8,12,16,20,24", help="sessions: the session counts to try")
    parser.add_argument("--seconds", type=float, default=10.0, help="sessions: seconds of audio per run")
    parser.add_argument("--minutes", type=float, default=60.0, help="soak: minutes of audio per session")
    parser.add_argument("--soak-sessions", type=int, default=4, help="soak: sessions (default 4)")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="soak: seconds between RSS samples")
    parser.add_argument("--pin", default=None, help="roundtrip: CLIENT:SERVER CPU lists to pin to, e.g. 0:1")
    parser.add_argument("--attacks", default=None, help="abuse: the findings to run, e.g. 2,4 (default: all)")
    parser.add_argument("--good-block", type=float, default=0.25,
                        help="abuse: the well-behaved session's block in seconds (default 0.25)")
    parser.add_argument("--markdown", action="store_true", help="print tables as markdown")
    args = parser.parse_args()
    {"roundtrip": roundtrip, "client": client_share, "sessions": sessions, "soak": soak, "abuse": abuse}[args.mode](args)


if __name__ == "__main__":
    main()
