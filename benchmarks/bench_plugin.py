"""The DAW plugin's audio thread: how long its process call takes when a host calls it at real speed.

The CLAP build runs in the project's small CLAP host (bridge/plugin/tools/clap_host.cpp), which calls it from its
own audio thread once per host buffer, paced at the audio's speed like a live DAW, and times every call. The plugin
streams through `lmdm serve` (the shipped model, or ``--model``) on loopback. Reported per run: the process calls'
p50, p99 and max, in wall time (what a DAW's deadline sees; the host's audio thread asks for SCHED_FIFO priority, as
a DAW's does, and the table says whether it got it), the share of the plugin's blocks played wet (the rest came
back too late and played dry), and how many replies the plugin waited for (from its log: it waits in an offline
render only, so a live run must show 0).

    python benchmarks/bench_plugin.py [--seconds 30] [--buffer 512] [--rate 48000] [--channels 2] [--markdown]

Runs: "server" (the normal case), "no server" (the dry path: nothing listens on the port) and, for scale, the
same with buffers of 64 frames. The target is a slowest call under 0.5 ms.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "bridge" / "plugin"


def test_signal(seconds: float, rate: int, channels: int) -> np.ndarray:
    """Decaying notes plus a little noise, [frames, channels] float32 (interleaved, as the host reads it)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.01 * rng.standard_normal(t.shape)
    for start in np.arange(0, seconds, 0.5):
        f = rng.uniform(150, 900)
        x += 0.3 * np.where(t >= start, np.exp(-4 * (t - start)), 0) * np.sin(2 * np.pi * f * (t - start))
    return np.stack([x * (1 - 0.2 * c) for c in range(channels)], 1).astype(np.float32)


def serve(model: str | None) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "lmdm_bridge", "serve", "--port", "0"] + (["--model", model] if model else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    match = re.search(r"tcp 127\.0\.0\.1:(\d+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"lmdm serve did not start: {line!r}")
    return process, int(match.group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(clap: Path, x: np.ndarray, rate: int, buffer: int, port: int, folder: Path) -> dict:
    channels = x.shape[1]
    x.tofile(folder / "in.f32")
    done = subprocess.run([str(PLUGIN / "build" / "tools" / "clap_host"), str(clap), "--rate", str(rate),
                           "--channels", str(channels), "--in", str(folder / "in.f32"), "--out",
                           str(folder / "out.f32"), "--buffers", str(buffer), "--realtime", "--timings",
                           str(folder / "times")], capture_output=True, text=True,
                          env={**os.environ, "LMDM_BRIDGE_PORT": str(port)})
    if done.returncode:
        raise SystemExit(f"clap_host failed: {done.stderr[-2000:]}")
    info = {k: float(v) for k, v in (line.split() for line in done.stdout.splitlines())}
    # the plugin's own account (its log): replies it waited for, as it does in an offline render only
    waits = sum(int(n) for n in re.findall(r"(\d+) offline waits for a reply", done.stderr))
    times = np.fromfile(folder / "times", np.float64) * 1000.0
    out = np.fromfile(folder / "out.f32", np.float32).reshape(-1, channels)
    latency = int(info["latency_end"])
    # a block is wet where the output is not the dry input delayed by the latency
    dry = np.zeros_like(out)
    dry[latency:] = x[:-latency]
    block = 2048 if rate <= 50000 else 4096 if rate <= 100000 else 8192
    played = out[latency:]
    differs = np.abs(played - dry[latency:]).max(1) > 0
    blocks = [differs[i: i + block].any() for i in range(0, len(differs) - block, block)]
    return {"calls": len(times), "p50": np.percentile(times, 50), "p99": np.percentile(times, 99),
            "max": times.max(), "wet": float(np.mean(blocks)) if blocks else 0.0, "latency": latency,
            "rt": bool(info["rt_priority"]), "waits": waits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--buffer", type=int, default=512)
    parser.add_argument("--rate", type=int, default=48000)
    parser.add_argument("--channels", type=int, choices=(1, 2), default=2)
    parser.add_argument("--model", help="model folder for lmdm serve (default: the shipped model)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    built = subprocess.run(["make", "-C", str(PLUGIN), "-j2"], capture_output=True, text=True)
    if built.returncode:
        raise SystemExit(f"make -C bridge/plugin failed (needs Debian's dpf-source):\n{built.stderr[-2000:]}")
    clap = PLUGIN / "build" / "bin" / ("lmdm.clap" if args.channels == 2 else "lmdm_mono.clap")
    x = test_signal(args.seconds, args.rate, args.channels)
    server, port = serve(args.model)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, buffer, where in (("server", args.buffer, port), ("no server", args.buffer, free_port()),
                                        ("server", 64, port)):
                r = run(clap, x, args.rate, buffer, where, Path(tmp))
                rows.append([name, str(buffer), "yes" if r["rt"] else "no", str(r["calls"]), f"{r['p50']:.4f}",
                             f"{r['p99']:.4f}", f"{r['max']:.4f}", f"{100 * r['wet']:.1f}%", str(r["waits"]),
                             str(r["latency"])])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    print(f"machine: {machine()}")
    print(f"plugin: {clap.name} in tools/clap_host, {args.rate} Hz, {args.channels} ch, {args.seconds:g} s per run "
          f"at real speed; lmdm serve {args.model or '(shipped model)'}, preset tape_echo")
    print_table(["run", "buffer", "RT priority", "calls", "p50 ms", "p99 ms", "max ms", "blocks wet", "waits",
                 "latency"], rows, args.markdown)


if __name__ == "__main__":
    main()
