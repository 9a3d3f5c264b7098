"""Jamming: does the part the model plays along with an input sound like what it was asked for, and how loud is it?

For ``--clips`` freshly rendered pitched clips without drums (corpus.render_clip_parts, seeds the corpus never used),
a Session in jam mode (preset ``--preset``, default jam_drums: "a tight drum groove", tag drums) plays along with the
clip; the jam part alone (mix 1) from its second block on is classified by the timbre classifier
(timbre_classifier.py). Reported per guidance scale: the share of parts heard as the asked-for timbre (``--want``,
default drums), the share heard as the input's own timbre (the model copying what it hears instead of
accompanying it), the part's level against the input's, and how often the part's onsets line up with the input's
(the share of the part's onset-strength peaks within 50 ms of an input onset; chance is shown as the same share for
the part against an unrelated clip).

    python benchmarks/bench_jam.py [--model DIR] [--runtime onnx|torch] [--clips 24] [--seconds 6]
        [--guidance 1 4] [--steps N] [--preset jam_drums] [--want drums] [--markdown] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from lmdm_engine.io.presets import resolve_preset
from lmdm_engine.runtime.interface import BACKENDS, DEFAULT_BACKEND, default_model_dir, load_runtime
from lmdm_engine.stream.session import Session
from lmdm_engine.train.corpus import render_clip_parts

from _common import machine, print_table
from timbre_classifier import DEFAULT_CACHE, DEFAULT_DATA, load_or_train

FIRST_SEED = 31_000_000  # far from the corpus's seeds


def input_clips(n: int, sample_rate: int, seconds: float) -> list:
    clips, seed = [], FIRST_SEED
    while len(clips) < n:
        clip = render_clip_parts(seed, sample_rate, seconds)
        seed += 1
        if not clip.info["drums"]:
            clips.append(clip)
    return clips


def onsets(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Onset times (s): peaks of the positive spectral flux of 512-sample frames above its median + 2 MAD."""
    hop = 256
    frames = np.lib.stride_tricks.sliding_window_view(audio, 1024)[::hop] * np.hanning(1024)
    mag = np.log1p(np.abs(np.fft.rfft(frames, axis=1)))
    flux = np.maximum(np.diff(mag, axis=0), 0).sum(1)
    med = np.median(flux)
    threshold = med + 2 * np.median(np.abs(flux - med))
    peaks = [i for i in range(1, len(flux) - 1) if flux[i] > threshold and flux[i] >= flux[i - 1]
             and flux[i] > flux[i + 1]]
    return (np.array(peaks) + 1) * hop / sample_rate


def onset_agreement(part: np.ndarray, reference: np.ndarray, sample_rate: int, tolerance: float = 0.05) -> float:
    got, ref = onsets(part, sample_rate), onsets(reference, sample_rate)
    if len(got) == 0 or len(ref) == 0:
        return 0.0
    return float(np.mean(np.min(np.abs(got[:, None] - ref[None, :]), 1) <= tolerance))


def level_db(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(audio, dtype=np.float64))) + 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--runtime", default=DEFAULT_BACKEND, choices=BACKENDS)
    parser.add_argument("--preset", default="jam_drums")
    parser.add_argument("--want", default="drums", help="the timbre the preset asks for")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the preset's)")
    parser.add_argument("--classifier", default=str(DEFAULT_CACHE))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", default=None, metavar="OUT")
    args = parser.parse_args()

    model = args.model or str(default_model_dir())
    runtime = load_runtime(model, backend=args.runtime)
    classifier = load_or_train(args.classifier, args.data)
    sr = runtime.config.sample_rate
    clips = input_clips(args.clips, sr, args.seconds)
    results = {}
    start = time.perf_counter()
    for guidance in args.guidance:
        heard, levels, agreement, chance = [], [], [], []
        for k, clip in enumerate(clips):
            steps = {"steps": args.steps} if args.steps else {}
            preset = resolve_preset(args.preset, dict(mix=1.0, guidance=guidance, **steps))
            session = Session(runtime, sr, 1, preset.params)
            block = session.block_frames * runtime.config.hop
            part = session.process(clip.audio[None])[0][block:]  # the part, from its first played block on
            heard.append(classifier.predict([part], sr)[0])
            levels.append(level_db(part) - level_db(clip.audio))
            agreement.append(onset_agreement(part, clip.audio[block:], sr))
            chance.append(onset_agreement(part, clips[(k + 1) % len(clips)].audio[block:], sr))
        results[str(guidance)] = {
            "asked_for": float(np.mean([h == args.want for h in heard])),
            "input_timbre": float(np.mean([h == c.info["timbre"] for h, c in zip(heard, clips)])),
            "heard": {t: heard.count(t) for t in sorted(set(heard))},
            "level_db_vs_input": float(np.median(levels)),
            "onsets_on_input": float(np.mean(agreement)),
            "onsets_on_unrelated": float(np.mean(chance)),
        }
        print(f"guidance {guidance:g}: {time.perf_counter() - start:.0f} s", flush=True)

    print(f"\nmachine: {machine()}; model {model} ({runtime.name}); preset {args.preset}"
          f"{f', {args.steps} steps' if args.steps else ''}; {args.clips} pitched clips "
          f"of {args.seconds:g} s (no drums); classifier held-out accuracy {classifier.heldout_accuracy:.1%}")
    headers = ["guidance", f"heard as {args.want}", "heard as the input's timbre", "level vs input (dB, median)",
               "part onsets on input onsets", "same, unrelated clip (chance)", "heard as (counts)"]
    rows = [[g, f"{r['asked_for']:.0%}", f"{r['input_timbre']:.0%}", f"{r['level_db_vs_input']:+.1f}",
             f"{r['onsets_on_input']:.0%}", f"{r['onsets_on_unrelated']:.0%}",
             ", ".join(f"{t} {n}" for t, n in r["heard"].items())] for g, r in results.items()]
    print_table(headers, rows, args.markdown)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model, "preset": args.preset, "clips": args.clips, "results": results}, f, indent=1)
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
