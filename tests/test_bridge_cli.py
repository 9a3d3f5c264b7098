"""``serve`` end to end: a real server process, its ready line, and a clean shutdown on SIGINT and SIGTERM that
answers every block in flight."""

import argparse
import re
import signal
import subprocess
import sys

import pytest

from lmdm_bridge import BridgeClient, BridgeError
from lmdm_bridge.cli import add_serve_parser, cmd_serve

from test_bridge_support import DELAY, stereo_noise

READY = re.compile(r"^lmdm bridge ready: tcp ([\d.]+):(\d+) .*, udp ([\d.]+):(\d+); model (\S+) \(torch")


def serve(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmdm_bridge", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_prints_a_ready_line_and_stops_cleanly_answering_what_is_in_flight(debug_model_dir, stop):
    process = serve("--model", str(debug_model_dir), "--port", "0", "--runtime", "torch")
    try:
        ready = process.stdout.readline()
        match = READY.match(ready)
        assert match, f"not a ready line: {ready!r}; stderr: {process.stderr.read() if process.poll() else ''}"
        assert match.group(5) == str(debug_model_dir)
        client = BridgeClient(match.group(1), int(match.group(2)))
        client.open("track", 48000, 2, 4800, "tape_echo", deadline_ms=0, delay_seconds=DELAY, steps=50)  # slow
        x = stereo_noise(4800 * 40)
        seqs = [client.send_block("track", x[:, i: i + 4800]) for i in range(0, x.shape[1], 4800)]
        process.send_signal(stop)
        answered, refused = 0, 0
        for seq in seqs:  # every block gets its answer: processed, or refused because the bridge is stopping
            try:
                assert client.receive_block("track", seq).audio.shape == (2, 4800)
                answered += 1
            except BridgeError as e:
                assert e.name == "shutting_down"
                refused += 1
        assert answered + refused == 40 and answered > 0
        assert process.wait(timeout=30) == 0
        out = process.stdout.read()
        assert re.search(rf"lmdm bridge stopped: {answered} blocks answered", out), out
        client.close_connection()
    finally:
        process.kill()
        process.wait()


def test_serve_refuses_remote_addresses_without_allow_remote_and_a_token(debug_model_dir, monkeypatch):
    monkeypatch.delenv("LMDM_BRIDGE_TOKEN", raising=False)
    refused = serve("--model", str(debug_model_dir), "--host", "0.0.0.0", "--port", "0")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode != 0 and "refusing to listen on 0.0.0.0" in err and "--allow-remote" in err
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--allow-remote"])
    assert args.func is cmd_serve
    with pytest.raises(SystemExit, match="--allow-remote needs a shared token"):
        args.func(args)
    args = parser.parse_args(["serve", "--preset", "no_such_preset"])
    with pytest.raises(SystemExit, match="unknown preset 'no_such_preset'"):
        args.func(args)
    args = parser.parse_args(["serve", "--max-sessions", "0"])
    with pytest.raises(SystemExit, match="max_sessions = 0 must be positive"):
        args.func(args)
    assert (args.host, args.port) == ("127.0.0.1", 9000)  # loopback by default


def test_the_startup_heap_is_frozen_out_of_garbage_collection():
    """lmdm serve freezes what it allocated at start, so that full collections do not scan the model's objects."""
    import gc

    from lmdm_bridge.cli import freeze_startup_heap

    gc.unfreeze()
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
