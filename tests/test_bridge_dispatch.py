"""Request handling without sockets: a Bridge fed packets from fake peers (delivery, deadlines, isolation, limits)."""

import asyncio
import time

import numpy as np
import pytest

from lmdm_bridge.hosting.peer import Peer
from lmdm_bridge.hosting.workers import Workers
from lmdm_bridge.protocol.namespace import AUDIO, CLOSE, OPEN, PARAM, BlockFlag
from lmdm_bridge.protocol.replies import AudioReply, ErrorReply, InfoReply, parse_reply
from lmdm_bridge.server.dispatch import Bridge, BridgeSettings
from lmdm_bridge.wire.blocks import audio_messages
from lmdm_bridge.wire.osc import Message, decode_message, encode_message
from lmdm_engine.stream.session import Session

from conftest import preset_params
from test_bridge_support import DELAY, RATE, FailingRuntime, SlowRuntime, stereo_noise

BLOCK = 4800  # 0.1 s at 48 kHz


class FakePeer(Peer):
    """Collects the replies it is sent (through the codec), with the time each arrived."""

    def __init__(self, name: str = "a", max_packet: int | None = None):
        self.key = ("fake", name)
        self.max_packet = max_packet
        self.replies, self.times = [], []
        self.congested = set()

    def send(self, message: Message) -> None:
        self.replies.append(parse_reply(decode_message(encode_message(message))))
        self.times.append(time.monotonic())

    def set_congested(self, session, congested):
        (self.congested.add if congested else self.congested.discard)(session)

    def audio(self) -> list[AudioReply]:
        return [r for r in self.replies if isinstance(r, AudioReply)]

    def errors(self) -> list[ErrorReply]:
        return [r for r in self.replies if isinstance(r, ErrorReply)]


def packet(address: str, *args) -> bytes:
    return encode_message(Message(address, args), doubles=True)


def open_packet(session="s", *options, block=BLOCK, preset="tape_echo"):
    return packet(OPEN, session, RATE, 2, block, preset, "delay_seconds", DELAY, *options)


def block_packet(session: str, seq: int, audio: np.ndarray) -> bytes:
    (message,) = audio_messages(AUDIO, session, seq, audio)
    return encode_message(message)


def joined(replies: list[AudioReply]) -> np.ndarray:
    return np.concatenate([np.frombuffer(r.samples, "<f4").reshape(-1, 2).T for r in replies], 1)


async def until(predicate, timeout: float = 20.0) -> None:
    give_up = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < give_up, "timed out waiting for the bridge"
        await asyncio.sleep(0.005)


def run_bridge(runtime, scenario, batching=False, **settings):
    """Run ``scenario(bridge)`` on a fresh Bridge in an event loop, then shut the bridge down."""
    async def main():
        workers = Workers(runtime, batching=batching, workers=1)
        bridge = Bridge(workers, BridgeSettings(**settings), "debug")
        bridge.start()
        try:
            return await scenario(bridge)
        finally:
            await bridge.shutdown()
            workers.shutdown()
    return asyncio.run(main())


def local_output(runtime, audio: np.ndarray, **params) -> np.ndarray:
    return Session(runtime, RATE, 2, preset_params("tape_echo", delay_seconds=DELAY, **params)).process(audio)


def test_every_block_answered_once_in_order_equal_to_a_local_session(debug_runtime):
    x = stereo_noise(5 * BLOCK)
    peer = FakePeer()

    async def scenario(bridge):
        bridge.handle_packet(open_packet("s", "deadline_ms", 0), peer)
        for seq in range(5):
            bridge.handle_packet(block_packet("s", seq, x[:, seq * BLOCK:(seq + 1) * BLOCK]), peer)
        await until(lambda: len(peer.audio()) == 5)

    run_bridge(debug_runtime, scenario)
    opened = peer.replies[0]
    assert isinstance(opened, InfoReply) and opened.request == OPEN and opened.values["latency_samples"] > 0
    replies = peer.audio()
    assert [r.seq for r in replies] == list(range(5)) and all(r.flags == 0 for r in replies)
    np.testing.assert_array_equal(joined(replies), local_output(debug_runtime, x))


def test_late_blocks_are_answered_dry_by_their_deadline_then_the_session_restarts(debug_runtime):
    slow = SlowRuntime(debug_runtime, 0.2)  # a model block needs over 600 ms
    x = stereo_noise(8 * BLOCK)
    peer = FakePeer()

    async def scenario(bridge):
        bridge.handle_packet(open_packet("s", "deadline_ms", 50), peer)
        bridge.handle_packet(block_packet("s", 0, x[:, :BLOCK]), peer)  # fills the FIFO only: no model block yet
        await until(lambda: len(peer.audio()) == 1)
        sent = time.monotonic()
        for seq in range(1, 7):
            bridge.handle_packet(block_packet("s", seq, x[:, seq * BLOCK:(seq + 1) * BLOCK]), peer)
        await until(lambda: len(peer.audio()) == 7)
        late_by = max(peer.times) - sent
        bridge.handle_packet(packet(PARAM, "s", "mix", 0.35), peer)  # answered once the block in flight is done
        await until(lambda: isinstance(peer.replies[-1], InfoReply))
        slow.seconds = 0.0
        bridge.handle_packet(block_packet("s", 7, x[:, 7 * BLOCK:]), peer)
        await until(lambda: len(peer.audio()) == 8)
        return late_by

    late_by = run_bridge(slow, scenario)
    replies = peer.audio()
    assert [r.seq for r in replies] == list(range(8))
    assert replies[0].flags == 0 and all(r.flags == BlockFlag.LATE for r in replies[1:7])
    assert late_by < 0.45, f"late replies took {late_by:.3f} s; the deadline was 50 ms and a block needs 600 ms"
    np.testing.assert_array_equal(joined(replies[1:7]), x[:, BLOCK: 7 * BLOCK])  # dry
    assert replies[7].flags == BlockFlag.RESTARTED
    np.testing.assert_array_equal(joined(replies[7:]), local_output(debug_runtime, x[:, 7 * BLOCK:]))


def test_bad_input_is_answered_dry_and_flagged_and_the_stream_goes_on(debug_runtime):
    x = stereo_noise(2 * BLOCK)
    x[0, 100], x[1, 200] = np.nan, np.inf
    peer = FakePeer()

    async def scenario(bridge):
        bridge.handle_packet(open_packet("s", "deadline_ms", 0), peer)
        bridge.handle_packet(block_packet("s", 0, x[:, :BLOCK]), peer)
        bridge.handle_packet(block_packet("s", 1, x[:, BLOCK:]), peer)
        await until(lambda: len(peer.audio()) == 2)

    run_bridge(debug_runtime, scenario)
    first, second = peer.audio()
    assert first.flags == BlockFlag.BAD_INPUT and second.flags == 0
    clean = np.nan_to_num(x, nan=0.0, posinf=0.0)
    np.testing.assert_array_equal(joined([first]), clean[:, :BLOCK])
    np.testing.assert_array_equal(joined([second]), local_output(debug_runtime, clean)[:, BLOCK:])


def test_unreadable_block_gets_an_error_instead_of_audio_and_the_stream_goes_on(debug_runtime):
    x = stereo_noise(3 * BLOCK)
    peer = FakePeer()

    async def scenario(bridge):
        bridge.handle_packet(open_packet("s", "deadline_ms", 0), peer)
        bridge.handle_packet(block_packet("s", 0, x[:, :BLOCK]), peer)
        bridge.handle_packet(packet(AUDIO, "s", 1, 0, BLOCK, b"\0" * 6), peer)  # not whole stereo frames
        bridge.handle_packet(block_packet("s", 1, x[:, BLOCK: 2 * BLOCK]), peer)  # too late: block 1 was refused
        bridge.handle_packet(block_packet("s", 2, x[:, 2 * BLOCK:]), peer)
        await until(lambda: len(peer.audio()) == 2)

    run_bridge(debug_runtime, scenario)
    (error,) = peer.errors()
    assert (error.name, error.seq) == ("bad_audio", 1) and "not a whole number of 2-channel" in error.message
    first, third = peer.audio()
    assert (first.seq, third.seq, third.flags) == (0, 2, BlockFlag.RESTARTED)
    np.testing.assert_array_equal(joined([third]), local_output(debug_runtime, x[:, 2 * BLOCK:]))


def test_parameter_change_mid_stream_applies_between_blocks(debug_runtime):
    x = stereo_noise(4 * BLOCK)
    peer = FakePeer()

    async def scenario(bridge):
        bridge.handle_packet(open_packet("s", "deadline_ms", 0), peer)
        for seq in range(4):
            if seq == 2:
                bridge.handle_packet(packet(PARAM, "s", "strength", 0.9, "style.pad", 1.0, "mix", 0.8), peer)
            bridge.handle_packet(block_packet("s", seq, x[:, seq * BLOCK:(seq + 1) * BLOCK]), peer)
        await until(lambda: len(peer.audio()) == 4)

    run_bridge(debug_runtime, scenario)
    kinds = [r.request if isinstance(r, InfoReply) else r.seq for r in peer.replies]
    assert kinds == [OPEN, 0, 1, PARAM, 2, 3, CLOSE]  # closed by the bridge's shutdown
    changed = peer.replies[3].values
    assert changed["strength"] == pytest.approx(0.9) and changed["style.pad"] == 1.0 and "style.dark" in changed
    local = Session(debug_runtime, RATE, 2, preset_params("tape_echo", delay_seconds=DELAY))
    expected = [local.process(x[:, :2 * BLOCK])]
    local.set_params(strength=0.9, mix=0.8, style={**local.params.style, "pad": 1.0})
    expected.append(local.process(x[:, 2 * BLOCK:]))
    np.testing.assert_array_equal(joined(peer.audio()), np.concatenate(expected, 1))


def test_engine_failure_answers_dry_and_the_session_recovers(debug_runtime):
    failing = FailingRuntime(debug_runtime)
    x = stereo_noise(3 * BLOCK)
    peer = FakePeer()

    async def scenario(bridge):
        bridge.handle_packet(open_packet("s", "deadline_ms", 0), peer)
        bridge.handle_packet(block_packet("s", 0, x[:, :BLOCK]), peer)  # fills the FIFO: no model call yet
        await until(lambda: len(peer.audio()) == 1)
        failing.failing.set()
        bridge.handle_packet(block_packet("s", 1, x[:, BLOCK: 2 * BLOCK]), peer)
        await until(lambda: len(peer.audio()) == 2)
        failing.failing.clear()
        bridge.handle_packet(block_packet("s", 2, x[:, 2 * BLOCK:]), peer)
        await until(lambda: len(peer.audio()) == 3)

    run_bridge(failing, scenario)
    (error,) = peer.errors()
    assert (error.name, error.session, error.seq) == ("engine_error", "s", 1)
    assert "simulated engine failure" in error.message
    _, failed, recovered = peer.audio()
    assert failed.flags == BlockFlag.ENGINE_ERROR and recovered.flags == BlockFlag.RESTARTED
    np.testing.assert_array_equal(joined([failed]), x[:, BLOCK: 2 * BLOCK])
    np.testing.assert_array_equal(joined([recovered]), local_output(debug_runtime, x[:, 2 * BLOCK:]))


def test_queue_overflow_answers_the_oldest_late_and_keeps_order(debug_runtime):
    slow = SlowRuntime(debug_runtime, 0.03)
    x = stereo_noise(10 * BLOCK)
    peer = FakePeer()

    async def scenario(bridge):
        bridge.handle_packet(open_packet("s", "deadline_ms", 0), peer)
        for seq in range(10):
            bridge.handle_packet(block_packet("s", seq, x[:, seq * BLOCK:(seq + 1) * BLOCK]), peer)
        assert peer.congested == {"s"}  # a stream transport would stop reading now
        await until(lambda: len(peer.audio()) == 10)
        assert peer.congested == set()

    run_bridge(slow, scenario, max_queued_blocks=4)
    replies = peer.audio()
    assert [r.seq for r in replies] == list(range(10))
    late = [r.seq for r in replies if r.flags & BlockFlag.LATE]
    assert 5 <= len(late) <= 6 and late == list(range(len(late)))  # the oldest went first
    assert all(not r.flags & BlockFlag.LATE for r in replies[len(late):])


def test_sessions_belong_to_their_peer_and_bad_packets_touch_nothing_else(debug_runtime):
    x = stereo_noise(3 * BLOCK)
    owner, other = FakePeer("owner"), FakePeer("other")

    async def scenario(bridge):
        bridge.handle_packet(open_packet("s", "deadline_ms", 0), owner)
        bridge.handle_packet(block_packet("s", 0, x[:, :BLOCK]), owner)
        for junk in (b"\xff" * 13, b"/lmdm/audio\0", packet("/lmdm/nope", 1), packet(CLOSE, "s"),
                     packet(PARAM, "s", "mix", 0.0), block_packet("s", 1, x[:, BLOCK: 2 * BLOCK]),
                     packet(AUDIO, "s", 1, 0, 10, b"\0" * 3)):
            bridge.handle_packet(junk, other)
        bridge.handle_packet(open_packet("s", "deadline_ms", 0), other)  # the same id, another owner: fine
        bridge.handle_packet(packet(AUDIO, "s", 0, 0, 10, b"\0" * 3), owner)  # stale: block 0 is whole, dropped
        for seq in (1, 2):
            bridge.handle_packet(block_packet("s", seq, x[:, seq * BLOCK:(seq + 1) * BLOCK]), owner)
        await until(lambda: len(owner.audio()) == 3 and len(other.replies) == 8)

    run_bridge(debug_runtime, scenario)
    assert [e.name for e in other.errors()] == ["malformed", "malformed", "unknown_address", "unknown_session",
                                                "unknown_session", "unknown_session", "unknown_session"]
    assert other.replies[7].request == OPEN
    assert owner.errors() == []
    np.testing.assert_array_equal(joined(owner.audio()), local_output(debug_runtime, x))


def test_limits_sessions_block_size_token_and_rate(debug_runtime):
    peer = FakePeer()

    async def scenario(bridge):
        bridge.handle_packet(open_packet("a", "token", "secret"), peer)
        bridge.handle_packet(open_packet("b", "token", "secret"), peer)
        bridge.handle_packet(open_packet("c", "token", "secret"), peer)
        bridge.handle_packet(open_packet("d"), peer)
        bridge.handle_packet(open_packet("e", "token", "guess"), peer)
        bridge.handle_packet(open_packet("a", "token", "secret", "mix", 0.9), peer)
        await until(lambda: len(peer.replies) == 6)
        bridge.handle_packet(open_packet("b", "token", "secret"), peer)  # the same open again: answered again
        bridge.handle_packet(packet(CLOSE, "b"), peer)
        bridge.handle_packet(open_packet("huge", "token", "secret", block=40_000), peer)
        bridge.handle_packet(packet("/lmdm/status"), peer)
        await until(lambda: len(peer.replies) == 10)
        for _ in range(30):
            bridge.handle_packet(packet("/lmdm/ping"), peer)
        await asyncio.sleep(0.05)

    run_bridge(debug_runtime, scenario, max_sessions=2, token="secret", max_packet_bytes=100_000, max_rate=20,
               rate_burst_s=1.0)
    errors = {e.session: e for e in peer.errors()}
    assert errors["c"].name == "too_many_sessions"
    assert errors["d"].name == "unauthorized" and "needs the bridge's token" in errors["d"].message
    assert errors["e"].name == "unauthorized" and "wrong token" in errors["e"].message
    assert errors["a"].name == "session_exists"
    assert [r.session for r in peer.replies if isinstance(r, InfoReply) and r.request == OPEN] == ["a", "b", "b"]
    assert errors["huge"].name == "too_large" and "at most 12468 frames per block" in errors["huge"].message
    assert [e.name for e in peer.errors() if e.session == ""] == ["unauthorized", "rate_limited"]
    pongs = [r for r in peer.replies if isinstance(r, InfoReply) and r.request == "/lmdm/ping"]
    assert 5 <= len(pongs) <= 21  # a burst of at most one second's worth (20), less what the opens spent


def test_close_and_shutdown_answer_what_is_queued(debug_runtime):
    slow = SlowRuntime(debug_runtime, 0.02)
    x = stereo_noise(3 * BLOCK)
    peer = FakePeer()

    async def scenario(bridge):
        for name in ("closed", "open"):
            bridge.handle_packet(open_packet(name, "deadline_ms", 0), peer)
            for seq in range(3):
                bridge.handle_packet(block_packet(name, seq, x[:, seq * BLOCK:(seq + 1) * BLOCK]), peer)
        bridge.handle_packet(packet(CLOSE, "closed"), peer)
        assert len(peer.audio()) < 6  # shutdown (on leaving the scenario) finds work in flight

    run_bridge(slow, scenario)
    for name in ("closed", "open"):
        mine = [r for r in peer.replies if getattr(r, "session", None) == name]
        assert [getattr(r, "seq", None) for r in mine[1:4]] == [0, 1, 2]
        assert all(r.flags == 0 for r in mine[1:4])
        assert mine[4].request == CLOSE and mine[4].values["processed"] == 3


class SpoofablePeer(FakePeer):
    """A UDP-like peer: every request about a session must carry its cookie."""

    spoofable = True


def test_a_non_ascii_cookie_is_refused_like_a_bad_one_without_a_traceback(debug_runtime, caplog):
    x = stereo_noise(2 * BLOCK)
    peer = SpoofablePeer()

    def with_cookie(seq: int, audio: np.ndarray, cookie: str) -> bytes:
        (message,) = audio_messages(AUDIO, "s", seq, audio)
        return encode_message(Message(AUDIO, message.args + (cookie,)))

    async def scenario(bridge):
        bridge.handle_packet(open_packet("s", "deadline_ms", 0), peer)  # answered with the cookie
        cookie = peer.replies[-1].values["cookie"]
        bridge.handle_packet(open_packet("s", "deadline_ms", 0, "cookie", cookie), peer)
        await until(lambda: len(peer.replies) == 2)
        forged = "é" * len(cookie)  # printable, not ASCII: hmac.compare_digest raised TypeError on it
        for junk in (with_cookie(0, x[:, :BLOCK], forged), packet(PARAM, "s", "mix", 0.0, forged),
                     packet(CLOSE, "s", forged), open_packet("t", "cookie", forged)):
            bridge.handle_packet(junk, peer)
        bridge.handle_packet(with_cookie(0, x[:, :BLOCK], "0" * len(cookie)), peer)  # a wrong cookie: dropped
        for seq in (0, 1):
            bridge.handle_packet(with_cookie(seq, x[:, seq * BLOCK:(seq + 1) * BLOCK], cookie), peer)
        await until(lambda: len(peer.audio()) == 2)
        return bridge.status(), list(bridge.sessions)

    with caplog.at_level("WARNING", logger="lmdm_bridge"):
        status, sessions = run_bridge(debug_runtime, scenario)
    errors = peer.errors()
    assert [e.name for e in errors] == ["bad_arguments"] * 4
    assert all("must be 1 to 64 printable ASCII characters" in e.message for e in errors)
    assert [e.session for e in errors] == ["s", "s", "s", "t"]
    assert status["unauthorized"] == 1 and sessions == [(peer.key, "s")]  # the session is untouched
    assert [r.seq for r in peer.audio()] == [0, 1] and all(r.flags == 0 for r in peer.audio())
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info], "a traceback was logged"


class FailingSendPeer(FakePeer):
    """Fails to send the first ``failures`` audio replies (``threadsafe``: from the worker thread, else from the event
    loop)."""

    def __init__(self, threadsafe: bool, failures: int = 1):
        super().__init__()
        self.threadsafe_sends = threadsafe
        self.failures = failures

    @property
    def failed(self) -> bool:
        return self.failures == 0

    def send_audio(self, session, seq, audio, flags):
        if self.failures:
            self.failures -= 1
            raise OSError(f"simulated send failure of block {seq}")
        super().send_audio(session, seq, audio, flags)


@pytest.mark.parametrize("threadsafe", [True, False])
def test_a_reply_that_fails_to_send_gives_its_quota_back(debug_runtime, threadsafe, caplog):
    x = stereo_noise(2 * BLOCK)
    peer = FailingSendPeer(threadsafe)

    async def scenario(bridge):
        bridge.handle_packet(open_packet("s", "deadline_ms", 0), peer)
        bridge.handle_packet(block_packet("s", 0, x[:, :BLOCK]), peer)
        total = bridge.quotas.total
        await until(lambda: peer.failed and total.queued == 0)  # answered (its reply lost) and settled
        bridge.handle_packet(block_packet("s", 1, x[:, BLOCK:]), peer)
        await until(lambda: len(peer.audio()) == 1 and total.queued == 0)
        return total.bytes, total.queued, total.sessions

    with caplog.at_level("ERROR", logger="lmdm_bridge"):
        total = run_bridge(debug_runtime, scenario)
    assert total == (0, 0, 1)  # the session is open, and the failed block holds nothing back
    assert [r.seq for r in peer.audio()] == [1]
    assert any("simulated send failure" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_replies_that_fail_to_send_while_blocks_expire_settle_every_block(debug_runtime, caplog):
    """Back-pressure answers several blocks late in one go; a send failing among them loses that reply only: the
    other blocks are answered, every block gives its quota back, and nothing is raised into the packet handler."""
    slow = SlowRuntime(debug_runtime, 0.03)
    x = stereo_noise(10 * BLOCK)
    peer = FailingSendPeer(threadsafe=False, failures=3)

    async def scenario(bridge):
        bridge.handle_packet(open_packet("s", "deadline_ms", 0), peer)
        for seq in range(10):
            bridge.handle_packet(block_packet("s", seq, x[:, seq * BLOCK:(seq + 1) * BLOCK]), peer)
        total = bridge.quotas.total
        await until(lambda: len(peer.audio()) == 7 and total.queued == 0)
        return total.bytes, total.queued, bridge.status()["unsent"]

    with caplog.at_level("ERROR", logger="lmdm_bridge"):
        total_bytes, queued, unsent = run_bridge(slow, scenario, max_queued_blocks=2)
    assert (total_bytes, queued, unsent) == (0, 0, 3)
    assert [r.seq for r in peer.audio()] == list(range(3, 10))
    assert [r.exc_info[1].args[0] for r in caplog.records if r.exc_info] == [
        f"simulated send failure of block {seq}" for seq in range(3)]
