"""Batch processing with ``lmdm process``: throughput on a folder of stems, and peak memory against file length.

Throughput: ``--stems`` stems of ``--seconds`` each (default 8 x 60 s, stereo, 48 kHz, 24-bit) are processed by
``lmdm process FOLDER -o OUT --jobs N`` for each N of ``--jobs`` (default 2), with the default preset. Wall time
is the whole command (worker start-up and model loading included); the real-time factor is audio s / wall s.

Peak memory: one stem of each length in ``--memory-minutes`` (default 1 and 20) is processed by a fresh
``lmdm process FILE -o OUT.wav --spectrogram OUT.png`` (one process, --jobs 1), and the peak resident memory of that
process is its own high-water mark (VmHWM). Streaming should keep it flat whatever the length.

    python benchmarks/bench_batch.py [--stems 8] [--seconds 60] [--jobs 1 2] [--memory-minutes 1 20] [--markdown]

The test files are written once into ``--workdir`` (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
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
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.workdir or scratch)
        stems = work / "stems"
        stems.mkdir(parents=True, exist_ok=True)
        for i in range(args.stems):
            write_stem(stems / f"stem{i}.wav", args.seconds, args.sample_rate, args.channels, seed=i)
        rows = []
        for jobs in args.jobs:
            wall, _, report = run_lmdm([str(stems), "-o", str(work / f"out_jobs{jobs}"), "--jobs", str(jobs), *common])
            audio = report["totals"]["audio_seconds"]
            rows.append([f"throughput, --jobs {jobs}", f"{args.stems} x {args.seconds:g} s", f"{audio:.0f}",
                         f"{wall:.1f}", f"{audio / wall:.1f}x", "-"])
        for minutes in args.memory_minutes:
            source = work / f"long_{minutes:g}min.wav"
            write_stem(source, 60 * minutes, args.sample_rate, args.channels, seed=99)
            out = work / f"long_{minutes:g}min_out"
            wall, peak, report = run_lmdm([str(source), "-o", str(out.with_suffix(".wav")), "--spectrogram",
                                           str(out.with_suffix(".png")), *common])
            audio = report["totals"]["audio_seconds"]
            rows.append(["peak memory, --jobs 1", f"1 x {minutes:g} min", f"{audio:.0f}", f"{wall:.1f}",
                         f"{audio / wall:.1f}x", f"{peak:.0f}"])
        preset = report["settings"]["preset"]["name"]

    print(f"machine: {machine()}; runtime {args.runtime}; preset {preset}; stems {args.sample_rate} Hz, "
          f"{args.channels} ch, 24-bit")
    print_table(["run", "files", "audio s", "wall s", "x real time", "peak RSS MiB"], rows, args.markdown)


if __name__ == "__main__":
    main()
