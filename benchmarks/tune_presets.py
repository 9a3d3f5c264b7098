"""Preset tuning by measurement: each delay preset's echo under a few candidate settings (docs/SOUND.md).

For every shipped delay preset (or ``--presets``), each candidate of the grid below replaces the preset's own
values (the preset as it ships is always the first candidate); the wet signal (mix 1) of ``--clips`` held-out
clips is measured as in bench_sound.py's echo rows: the timbre classifier's share for the preset's timbre tag,
level against the input, flatness ratio, harmonicity, pitch kept (strength as set) and the Fréchet distance to the
input. A preset's character is audible when its timbre is heard (or, without a timbre tag, when the echo stays
close to what was played) at a level within 3 dB of the input's and a harmonicity of 0.8 or more.

The last table is each preset's pick (:func:`pick`): with a timbre tag, the candidate whose timbre is heard most
often among those with a harmonicity of at least ``HARMONIC`` or at least the preset's own (ties: the more
harmonic); without one, the candidate that stays closest to what was played (the most pitch kept). The Session
re-levels every echo to its input (docs/SOUND.md), so the level no longer decides: it did before, when lower
strengths were the louder ones.

    python benchmarks/tune_presets.py [--model DIR] [--data data/corpus] [--clips 16] [--presets NAME ...]
        [--strengths 0.5 0.75] [--guidances 1 3] [--markdown] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from _common import machine, print_table
from bench_sound import Heldout, measured, preset_timbre, wet_signal
from lmdm_engine.core.metrics import pitch_kept
from lmdm_engine.io.presets import list_presets
from lmdm_engine.runtime.interface import default_model_dir, load_runtime
from timbre_classifier import DEFAULT_CACHE, load_or_train


HARMONIC = 0.75  # the harmonicity a pick keeps (pitched clips; real audio 0.80 on this corpus, docs/SOUND.md)


def candidates(preset, strengths, guidances) -> list[dict]:
    """The preset as it ships, then each (strength, guidance) of the grid that differs from it."""
    grid = [{"strength": s, "guidance": g} for s, g in itertools.product(strengths, guidances)]
    own = {"strength": preset.strength, "guidance": preset.guidance}
    return [own] + [c for c in grid if c != own]


def pick(rows: list[dict]) -> dict:
    """The chosen candidate of one preset's rows (the first row is the preset as it ships; see the docstring)."""
    if np.isnan(rows[0]["timbre"]):
        return max(rows, key=lambda r: r["pitch"])
    harmonic = [r for r in rows if r["harm"] >= min(HARMONIC, rows[0]["harm"])]
    return max(harmonic, key=lambda r: (r["timbre"], r["harm"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model_dir()))
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "torch"])
    parser.add_argument("--data", default="data/corpus")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--presets", nargs="+")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.5, 0.75])
    parser.add_argument("--guidances", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--classifier", default=str(DEFAULT_CACHE))
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()

    start = time.perf_counter()
    runtime = load_runtime(args.model, backend=args.runtime)
    sr = runtime.config.sample_rate
    held = Heldout(Path(args.data), runtime)
    classifier = load_or_train(args.classifier, Path(args.data), progress=False)
    inputs = [held.audio[i] for i in range(args.clips)]
    pitched = [i for i in range(args.clips) if i in set(held.pitched)]
    presets = [p for p in list_presets() if p.mode != "jam" and (not args.presets or p.name in args.presets)]
    rows, table = [], []
    for preset in presets:
        timbre = preset_timbre(preset)
        for settings in candidates(preset, args.strengths, args.guidances):
            wet = [wet_signal(runtime, a, preset, **settings) for a in inputs]
            row = measured(wet, inputs, pitched, sr)
            row["pitch"] = float(np.nanmean([pitch_kept(inputs[i], wet[i], sr) for i in pitched]))
            row["timbre"] = (float(np.mean([h == timbre for h in classifier.predict(wet, sr)]))
                             if timbre else float("nan"))
            rows.append({"preset": preset.name, **settings, **row})
            table.append([preset.name, f"{settings['strength']:g}", f"{settings['guidance']:g}",
                          "-" if np.isnan(row["timbre"]) else f"{100 * row['timbre']:.0f}% {timbre}",
                          f"{row['level']:+.1f} dB", f"{row['harm']:.2f}", f"{100 * row['pitch']:.0f}%",
                          f"{row['flat']:.2f}x", f"{row['FD']:.0f}"])
            print(f"{preset.name} {settings}: {time.perf_counter() - start:.0f} s", flush=True)
    print(f"# preset tuning: {args.model} ({args.runtime}), {args.clips} clips, {machine()}, "
          f"{time.perf_counter() - start:.0f} s")
    print_table(["preset", "strength", "guidance", "timbre heard", "level", "harm", "pitch", "flat", "FD"], table,
                args.markdown)
    picks = [pick([r for r in rows if r["preset"] == p.name]) for p in presets]
    print_table(["preset", "pick: strength", "guidance", "level", "timbre", "FD"],
                [[r["preset"], f"{r['strength']:g}", f"{r['guidance']:g}", f"{r['level']:+.1f} dB",
                  "-" if np.isnan(r["timbre"]) else f"{100 * r['timbre']:.0f}%", f"{r['FD']:.0f}"] for r in picks],
                args.markdown)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "settings": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
