"""Batch processing with ``lmdm process``: throughput on a folder of stems, and peak memory against file length.

Throughput: ``--stems`` stems of ``--seconds`` each (default 8 x 60 s, stereo, 48 kHz, 24-bit) are processed by
``lmdm process FOLDER -o OUT --jobs N`` for each N of ``--jobs`` (default 2), with the default preset, and with
``--ray`` also by ``lmdm process FOLDER -o OUT --ray --jobs N`` (N actors on a local Ray instance, started afresh by
each command). "run s" is the run as its report times it: worker processes or actors started, models loaded, files
processed; the real-time factor is audio s / run s. "Ray start-up s" (ray.init: starting the instance) is shown
apart; "command s" is the whole command, Python's start-up, planning and stopping Ray included. With ``--repeats``
the runs are taken round robin (a busy spell on a shared machine hits every kind) and the table shows medians.

Peak memory: one stem of each length in ``--memory-minutes`` (default 1 and 20) is processed by a fresh
``lmdm process FILE -o OUT.wav --spectrogram OUT.png`` (one process, --jobs 1), and the peak resident memory of that
process is its own high-water mark (VmHWM). Streaming should keep it flat whatever the length.

    python benchmarks/bench_batch.py [--stems 8] [--seconds 60] [--jobs 1 2] [--ray] [--repeats 3]
                                     [--memory-minutes 1 20] [--markdown]

The test files are written once into ``--workdir`` (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from lmdm_engine.runtime.interface import BACKENDS, DEFAULT_BACKEND

from _common import machine, print_table, run_measured

NOTES_HZ = (220.0, 277.2, 329.6, 440.0, 392.0)
WRITE_CHUNK_SECONDS = 10.0


def stem_signal(start: int, frames: int, rate: int, channels: int, seed: int) -> np.ndarray:
    """[frames, channels] float32 from sample ``start``: a decaying note every 0.5 s plus a little noise."""
    t = (start + np.arange(frames)) / rate
    onset = np.floor(t / 0.5)
    since = t - onset * 0.5
    freq = np.asarray(NOTES_HZ)[(onset.astype(int) + seed) % len(NOTES_HZ)]
    notes = 0.4 * np.sin(2 * np.pi * freq * since) * np.exp(-6.0 * since)
    noise = 0.01 * np.random.default_rng(seed * 1_000_003 + start).standard_normal((frames, channels))
    return (notes[:, None] + noise).astype(np.float32)


def write_stem(path: Path, seconds: float, rate: int, channels: int, seed: int) -> None:
    """Write a stem chunk by chunk (constant memory, so a 20-minute stem is cheap to make)."""
    if path.exists() and sf.info(path).frames == int(seconds * rate):
        return
    total, chunk = int(seconds * rate), int(WRITE_CHUNK_SECONDS * rate)
    with sf.SoundFile(path, "w", rate, channels, subtype="PCM_24") as f:
        for start in range(0, total, chunk):
            f.write(stem_signal(start, min(chunk, total - start), rate, channels, seed))


def run_lmdm(arguments: list[str]) -> tuple[float, float, dict]:
    """Run ``lmdm process`` with a JSON report; returns wall seconds, peak RSS (MiB) of that process, the report."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [sys.executable, "-m", "lmdm_engine.cli", "process", *arguments, "--quiet", "--report", str(report)]
        wall, peak_mib = run_measured(command)
        return wall, peak_mib, json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stems", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each stem for the throughput run")
    parser.add_argument("--jobs", type=int, nargs="+", default=[2], help="--jobs values to time")
    parser.add_argument("--ray", action="store_true", help="also time --ray --jobs N (needs the ray extra)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="throughput runs of each kind, taken round robin; the table shows their medians")
    parser.add_argument("--memory-minutes", type=float, nargs="*", default=[1.0, 20.0],
                        help="file lengths for the peak-memory runs (none: skip them)")
    parser.add_argument("--sample-rate", type=int, default=48000)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--preset", default=None, help="preset (default: the default preset)")
    parser.add_argument("--runtime", default=DEFAULT_BACKEND, choices=BACKENDS)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--workdir", default=None, help="keep the test stems here between runs")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    common = ["--runtime", args.runtime] + (["--preset", args.preset] if args.preset else []) \
        + (["--model", args.model] if args.model else [])
    load_before = os.getloadavg()[0]  # the machine may be shared: the figures say how busy it was
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.workdir or scratch)
        stems = work / "stems"
        stems.mkdir(parents=True, exist_ok=True)
        for i in range(args.stems):
            write_stem(stems / f"stem{i}.wav", args.seconds, args.sample_rate, args.channels, seed=i)
        rows = []
        runs = list(itertools.product([False, True] if args.ray else [False], args.jobs))
        measured = {run: [] for run in runs}  # (command s, run s, Ray start-up s) of each repeat
        for _, (ray, jobs) in itertools.product(range(args.repeats), runs):  # round robin: a busy spell hits all
            option = ["--ray"] if ray else []
            out = work / f"out_{'ray' if ray else 'local'}_jobs{jobs}"
            shutil.rmtree(out, ignore_errors=True)
            wall, _, report = run_lmdm([str(stems), "-o", str(out), "--jobs", str(jobs), *option, *common])
            audio = report["totals"]["audio_seconds"]
            measured[ray, jobs].append((wall, report["totals"]["wall_seconds"],
                                        report["runner"]["startup_seconds"] if ray else None))
        for (ray, jobs), values in measured.items():
            wall, run, startup = (statistics.median(v) if v[0] is not None else None for v in zip(*values))
            rows.append([f"throughput, {'--ray ' if ray else ''}--jobs {jobs}", f"{args.stems} x {args.seconds:g} s",
                         f"{audio:.0f}", f"{run:.1f}", f"{audio / run:.1f}x", "-" if startup is None else
                         f"{startup:.1f}", f"{wall:.1f}", "-"])
        for minutes in args.memory_minutes:
            source = work / f"long_{minutes:g}min.wav"
            write_stem(source, 60 * minutes, args.sample_rate, args.channels, seed=99)
            out = work / f"long_{minutes:g}min_out"
            wall, peak, report = run_lmdm([str(source), "-o", str(out.with_suffix(".wav")), "--spectrogram",
                                           str(out.with_suffix(".png")), *common])
            audio, run = report["totals"]["audio_seconds"], report["totals"]["wall_seconds"]
            rows.append(["peak memory, --jobs 1", f"1 x {minutes:g} min", f"{audio:.0f}", f"{run:.1f}",
                         f"{audio / run:.1f}x", "-", f"{wall:.1f}", f"{peak:.0f}"])
        preset = report["settings"]["preset"]["name"]

    print(f"machine: {machine()}; runtime {args.runtime}; preset {preset}; stems {args.sample_rate} Hz, "
          f"{args.channels} ch, 24-bit; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print_table(["run", "files", "audio s", "run s", "x real time", "Ray start-up s", "command s", "peak RSS MiB"],
                rows, args.markdown)


if __name__ == "__main__":
    main()
