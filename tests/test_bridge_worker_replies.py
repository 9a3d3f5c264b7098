"""Replies sent from the engine's worker threads (not the event loop) over real sockets: racing the deadlines, on
one TCP connection shared by several sessions and over UDP, every block still gets exactly one reply, in order."""

import socket
import time
from collections import defaultdict

import pytest

from lmdm_bridge.protocol.namespace import AUDIO, CLOSE, COOKIE, OPEN, BlockFlag
from lmdm_bridge.protocol.replies import AudioReply, InfoReply, parse_reply
from lmdm_bridge.wire.blocks import audio_to_bytes
from lmdm_bridge.wire.framing import LengthPrefixFraming
from lmdm_bridge.wire.osc import decode_packet

from test_bridge_support import DELAY, RATE, SlowRuntime, hand_built, running_bridge, stereo_noise

BLOCK = 2400  # 50 ms at 48 kHz
SESSIONS = ("a", "b", "c")
BLOCKS = 12


def open_packet(name: str, deadline_ms: int, *options) -> bytes:
    return hand_built(OPEN, name, RATE, 2, BLOCK, "tape_echo", "deadline_ms", deadline_ms, "delay_seconds", DELAY,
                      *options)


def check_replies(replies: list) -> None:
    """Each session: replies to seq 0..BLOCKS-1 once each, in order, processed or late, then its close reply whose
    counts agree."""
    audio, closes = defaultdict(list), {}
    for reply in replies:
        if isinstance(reply, AudioReply):
            assert reply.session not in closes, "an audio reply after the close reply"
            audio[reply.session].append(reply)
        elif isinstance(reply, InfoReply) and reply.request == CLOSE:
            closes[reply.session] = reply.values
    for name in SESSIONS:
        assert [r.seq for r in audio[name]] == list(range(BLOCKS))
        assert all(r.total_frames == BLOCK and len(r.samples) == BLOCK * 8 for r in audio[name])
        late = sum(bool(r.flags & BlockFlag.LATE) for r in audio[name])
        assert all(r.flags & ~(BlockFlag.LATE | BlockFlag.RESTARTED) == 0 for r in audio[name])
        counts = closes[name]
        assert counts["blocks"] == BLOCKS and counts["late"] == late and counts["processed"] + late == BLOCKS


@pytest.mark.parametrize("seconds_per_call", [0.0, 0.004])
def test_tcp_sessions_sharing_a_connection_get_one_reply_per_block_in_order(debug_runtime, seconds_per_call):
    runtime = SlowRuntime(debug_runtime, seconds_per_call)  # about as slow as the deadline: replies race it
    with running_bridge(runtime) as bridge, socket.create_connection(bridge.server.tcp_address) as sock:
        framing = LengthPrefixFraming(1 << 24)
        sock.settimeout(20.0)
        replies = []

        def read_until(done) -> None:
            while not done():
                replies.extend(parse_reply(m) for p in framing.feed(sock.recv(1 << 20)) for m in decode_packet(p))

        for name in SESSIONS:
            sock.sendall(framing.encode(open_packet(name, deadline_ms=15)))
        read_until(lambda: sum(isinstance(r, InfoReply) and r.request == OPEN for r in replies) == len(SESSIONS))
        x = stereo_noise(BLOCKS * BLOCK)
        for i in range(BLOCKS):  # all sessions' blocks in bursts, so that they queue and expire
            for name in SESSIONS:
                chunk = audio_to_bytes(x[:, i * BLOCK:(i + 1) * BLOCK])
                sock.sendall(framing.encode(hand_built(AUDIO, name, i, 0, BLOCK, chunk)))
            time.sleep(0.01)
        for name in SESSIONS:
            sock.sendall(framing.encode(hand_built(CLOSE, name)))
        read_until(lambda: sum(isinstance(r, InfoReply) and r.request == CLOSE for r in replies) == len(SESSIONS))
        check_replies(replies)


def test_udp_sessions_get_one_reply_per_block_in_order(debug_runtime):
    with running_bridge(SlowRuntime(debug_runtime, 0.004)) as bridge, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.connect(bridge.server.udp_address)
        sock.settimeout(20.0)
        replies = []

        def read_until(done) -> None:
            while not done():
                replies.extend(parse_reply(m) for m in decode_packet(sock.recv(65536)))

        for name in SESSIONS:
            sock.send(open_packet(name, deadline_ms=15))
        read_until(lambda: sum(isinstance(r, InfoReply) and r.request == COOKIE for r in replies) == len(SESSIONS))
        cookies = {r.session: r.values["cookie"] for r in replies if r.request == COOKIE}
        for name in SESSIONS:  # the open again with its cookie: it proves this address
            sock.send(open_packet(name, 15, "cookie", cookies[name]))
        read_until(lambda: sum(isinstance(r, InfoReply) and r.request == OPEN for r in replies) == len(SESSIONS))
        x = stereo_noise(BLOCKS * BLOCK)
        for i in range(BLOCKS):  # 2400 stereo frames: three datagrams of at most 1000 frames
            for name in SESSIONS:
                for start in range(0, BLOCK, 1000):
                    chunk = audio_to_bytes(x[:, i * BLOCK + start: i * BLOCK + min(BLOCK, start + 1000)])
                    sock.send(hand_built(AUDIO, name, i, start, BLOCK, chunk, cookies[name]))
            time.sleep(0.01)
        for name in SESSIONS:
            sock.send(hand_built(CLOSE, name, cookies[name]))
        read_until(lambda: sum(isinstance(r, InfoReply) and r.request == CLOSE for r in replies) == len(SESSIONS))
        # a reply of several datagrams: one AudioReply per chunk; keep the first chunk of each (frame_offset 0)
        whole = []
        for r in replies:
            if isinstance(r, AudioReply):
                if r.frame_offset == 0:
                    whole.append(AudioReply(r.session, r.seq, 0, r.total_frames, r.flags, b"\0" * (BLOCK * 8)))
            else:
                whole.append(r)
        check_replies(whole)
