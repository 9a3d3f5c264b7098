"""Sketch fidelity: does sketch-to-music keep the melody of a hummed (or roughly played) sketch?

Sketches are made procedurally and seeded (no recordings needed):

- ``hum``: a voice-like source, a sine with a few weak harmonics, vibrato (5-6.5 Hz, 15-40 cents, fading in after
  each note's onset), slow pitch drift, scoops between notes (40-90 ms glides), slow attacks (60-150 ms), breath
  noise and rests; a random melody in a random key and scale, in a voice range (C3-A4), at 60-140 bpm;
- ``played``: the same kind of melody typed on a cheap keyboard with one finger: exact pitches, decaying
  harmonic tones, no vibrato, no glides.

For each strength of ``--strengths``, ``generate(runtime, None, prompt, sketch=sketch, strength=s)`` renders the
sketch (SDEdit per block: 0 keeps the sketch, 1 ignores it) with a prompt that asks for a melodic timbre (lead,
keys, pluck, bell, organ in turn; style tags for a model without text prompts). The f0 of sketch and output is
estimated with librosa's pYIN (60-1100 Hz, frames of 93 ms every 11.6 ms) and compared frame by frame:

- ``pitch``: share of the frames voiced in the sketch whose output is voiced and within 50 cents of the sketch;
- ``pitch (octave ok)``: the same, octave errors forgiven (the pitch class within 50 cents);
- ``voicing``: share of all frames where sketch and output agree on voiced / unvoiced;
- ``timbre``: share of outputs the timbre classifier (timbre_classifier.py) assigns to the prompted timbre.

Reference rows: ``unrelated`` compares each sketch with another sketch of the same kind (chance agreement);
``pYIN vs truth`` compares pYIN on the sketch with the f0 the sketch was synthesised with (the estimator's own
ceiling); strength 0 (the sketch's codec reconstruction) is run when listed in ``--strengths``.

    python benchmarks/bench_sketch.py [--model DIR] [--runtime torch|onnx] [--hummed 16] [--played 8]
        [--seconds 4] [--strengths 0.2 0.4 0.6 0.8 1.0] [--guidance 1.0] [--steps 4] [--no-timbre]
        [--threads 1] [--save-audio DIR] [--markdown] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from lmdm_engine.runtime.interface import default_model_dir, load_runtime
from lmdm_engine.stream.generate import generate

from _common import machine, print_table

KINDS = ("hum", "played")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10), "pentatonic": (0, 2, 4, 7, 9)}
VOICE_RANGE = (48, 69)  # C3-A4: where people hum
PROMPTS = (("lead", "a lead synth playing a melody"), ("keys", "electric piano playing a melody"),
           ("pluck", "a plucked synth melody"), ("bell", "bells playing a melody"), ("organ", "organ playing a melody"))
F0_MIN, F0_MAX = 60.0, 1100.0
FRAME_SECONDS, HOP_SECONDS = 2048 / 22050, 256 / 22050
VOICED_LEVEL = 0.3  # the synthesis truth: a frame is voiced where the note envelope is above this


# ---- sketches ----------------------------------------------------------------------------------------------------
def _midi_hz(m):
    return 440.0 * 2.0 ** ((np.asarray(m, np.float64) - 69.0) / 12.0)


def _lowpass_noise(rng, n, sr, hz):
    """Smooth random curve [n] of unit-order amplitude (white noise through a one-pole low-pass)."""
    from scipy.signal import lfilter

    a = np.exp(-2 * np.pi * hz / sr)
    x = lfilter([1 - a], [1, -a], rng.standard_normal(n))
    return x / max(np.std(x), 1e-9)


def _melody(rng, seconds):
    """Notes (start s, duration s, midi or None for a rest) in a random key, scale and tempo, and the settings."""
    tempo = float(rng.uniform(60, 140))
    beat = 60.0 / tempo
    root = int(rng.integers(12))
    scale_name = str(rng.choice(list(SCALES)))
    pitches = np.array([p for p in range(VOICE_RANGE[0], VOICE_RANGE[1] + 1) if (p - root) % 12 in SCALES[scale_name]])
    i = int(rng.integers(len(pitches) // 4, 3 * len(pitches) // 4))
    notes, t = [], 0.0
    while t < seconds:
        dur = beat * float(rng.choice((0.5, 1.0, 1.5, 2.0), p=(0.3, 0.4, 0.15, 0.15)))
        if notes and notes[-1][2] is not None and rng.random() < 0.15:
            notes.append((t, beat * float(rng.choice((0.5, 1.0))), None))  # a rest (breath)
        else:
            i = int(np.clip(i + rng.choice((-3, -2, -1, -1, 0, 1, 1, 2, 3)), 0, len(pitches) - 1))
            notes.append((t, dur, int(pitches[i])))
        t += notes[-1][1]
    return notes, {"tempo": round(tempo, 1), "key": int(root), "scale": scale_name}


def make_sketch(kind: str, seed: int, sr: int, seconds: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """A sketch (mono float32 at ``sr``, -20 dBFS RMS), its true f0 per sample (0 = unvoiced) and its settings."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    notes, info = _melody(rng, seconds)
    midi = np.full(n, np.nan)
    amp = np.zeros(n)
    since_onset = np.zeros(n)
    for start, dur, m in notes:
        a, b = int(start * sr), min(int((start + dur) * sr), n)
        if m is None or a >= n:
            continue
        midi[a:b] = m
        k = np.arange(b - a) / sr
        since_onset[a:b] = k
        if kind == "hum":
            attack, release = rng.uniform(0.06, 0.15), min(0.06, dur / 3)
            gap = rng.uniform(0.03, 0.08) if rng.random() < 0.3 else 0.0  # a breath before the next note
            env = np.minimum(1.0, k / attack) * np.clip((dur - gap - k) / release, 0.0, 1.0)
            env *= 1.0 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * k)  # uneven loudness
        else:
            env = np.exp(-k / rng.uniform(0.4, 0.9)) * np.minimum(1.0, k / 0.005) * np.clip((dur - k) / 0.02, 0, 1)
        amp[a:b] = env
    voiced = ~np.isnan(midi)
    # fill rests with the neighbouring pitch so glides and the oscillator stay continuous
    idx = np.where(voiced, np.arange(n), 0)
    np.maximum.accumulate(idx, out=idx)
    first = np.argmax(voiced) if voiced.any() else 0
    contour = np.where(voiced, midi, midi[np.maximum(idx, first)] if voiced.any() else 60.0)
    contour = np.nan_to_num(contour, nan=float(np.nanmean(midi)) if voiced.any() else 60.0)
    if kind == "hum":
        from scipy.signal import lfilter

        glide = rng.uniform(0.04, 0.09)
        a1 = np.exp(-1.0 / (glide / 3 * sr))
        contour = lfilter([1 - a1], [1, -a1], contour - contour[0]) + contour[0]  # scoops between notes
        rate, depth = rng.uniform(5.0, 6.5), rng.uniform(0.15, 0.4)  # semitones
        fade_in = np.clip((since_onset - 0.2) / 0.3, 0.0, 1.0)
        contour = contour + depth * fade_in * np.sin(2 * np.pi * rate * np.arange(n) / sr)
        contour = contour + 0.1 * _lowpass_noise(rng, n, sr, 2.0)  # slow drift, about 10 cents
        harmonics = np.array([1.0, 0.35, 0.15, 0.08, 0.04]) * rng.uniform(0.7, 1.3, 5)
        harmonics[0] = 1.0
    else:
        harmonics = 1.0 / np.arange(1, 9) ** 1.2
    f0 = _midi_hz(contour)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tone = sum(h * np.sin((k + 1) * phase) for k, h in enumerate(harmonics) if (k + 1) * f0.max() < sr / 2)
    audio = tone * amp
    if kind == "hum":
        from scipy.signal import butter, sosfilt

        sos = butter(2, [800 / (sr / 2), min(5000, 0.45 * sr) / (sr / 2)], "bandpass", output="sos")
        breath = sosfilt(sos, rng.standard_normal(n)) * (0.02 + 0.1 * amp) * rng.uniform(0.5, 1.5)
        audio = audio + breath
    audio = (0.1 * audio / max(np.sqrt(np.mean(audio ** 2)), 1e-9)).astype(np.float32)
    true_f0 = np.where(voiced & (amp > VOICED_LEVEL), f0, 0.0)
    return audio, true_f0, {"kind": kind, "seed": int(seed), **info,
                            "notes": [[round(s, 3), round(d, 3), m] for s, d, m in notes]}


# ---- pitch -------------------------------------------------------------------------------------------------------
def f0_frames(audio: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """pYIN f0 [frames] (Hz, best guess also where unvoiced) and voiced flags [frames], frame t centred on
    sample t * hop (hop about 11.6 ms)."""
    import librosa

    hop = max(1, round(HOP_SECONDS * sr))
    frame = int(round(FRAME_SECONDS * sr))
    f0, voiced, _ = librosa.pyin(np.asarray(audio, np.float32), fmin=F0_MIN, fmax=min(F0_MAX, sr / 4), sr=sr,
                                 frame_length=frame, hop_length=hop, fill_na=None, center=True)
    return f0, voiced.astype(bool)


def truth_frames(true_f0: np.ndarray, sr: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    hop = max(1, round(HOP_SECONDS * sr))
    centre = np.minimum(np.arange(frames) * hop, len(true_f0) - 1)
    f0 = true_f0[centre]
    return np.where(f0 > 0, f0, 1.0), f0 > 0


def agreement(ref_f0, ref_voiced, est_f0, est_voiced) -> dict:
    """Frame counts for the pitch scores: est against ref over ref's voiced frames."""
    m = min(len(ref_f0), len(est_f0))
    ref_f0, ref_voiced, est_f0, est_voiced = ref_f0[:m], ref_voiced[:m], est_f0[:m], est_voiced[:m]
    cents = 1200 * np.log2(np.maximum(est_f0, 1e-3) / np.maximum(ref_f0, 1e-3))
    folded = (cents + 600) % 1200 - 600
    both = ref_voiced & est_voiced
    return {"frames": int(m), "ref_voiced": int(ref_voiced.sum()),
            "pitch": int((both & (np.abs(cents) <= 50)).sum()),
            "pitch_octave": int((both & (np.abs(folded) <= 50)).sum()),
            "voicing": int((ref_voiced == est_voiced).sum()), "est_voiced": int(both.sum())}


def scores(counts: list[dict]) -> dict:
    """Pooled shares over all frames of a row."""
    total = {k: sum(c[k] for c in counts) for k in counts[0]}
    voiced = max(total["ref_voiced"], 1)
    return {"pitch": total["pitch"] / voiced, "pitch_octave": total["pitch_octave"] / voiced,
            "voicing": total["voicing"] / max(total["frames"], 1), "voiced_recall": total["est_voiced"] / voiced,
            "frames": total["frames"], "sketch_voiced_frames": total["ref_voiced"]}


# ---- the benchmark -----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model_dir()), help="model folder (default: shipped)")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                        help="torch (default: a fresh run folder has no ONNX export) or onnx")
    parser.add_argument("--hummed", type=int, default=16, help="hummed sketches")
    parser.add_argument("--played", type=int, default=8, help="one-finger keyboard sketches")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance (1 = off)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sampler", default="pingpong", choices=["euler", "pingpong"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-timbre", action="store_true", help="skip the timbre classifier column")
    parser.add_argument("--classifier", default=None, help="timbre classifier cache (default runs/timbre_classifier)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-audio", default=None, metavar="DIR", help="also write sketches and outputs as WAV")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", default=None, metavar="JSON")
    args = parser.parse_args()
    if any(not 0.0 <= s <= 1.0 for s in args.strengths) or args.seconds < 1.0:
        parser.error("strengths must lie in [0, 1] and --seconds be at least 1")

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    classifier = None
    if not args.no_timbre:
        from timbre_classifier import DEFAULT_CACHE, load_or_train

        classifier = load_or_train(args.classifier or DEFAULT_CACHE, threads=args.threads)
        torch.set_num_threads(args.threads)
    runtime = load_runtime(args.model, backend=args.runtime)
    sr = runtime.config.sample_rate
    text = bool(runtime.config.text_dim)
    save = Path(args.save_audio) if args.save_audio else None
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)

    sketches = []  # (kind, index, audio, true f0, info, timbre, prompt)
    for kind, count in (("hum", args.hummed), ("played", args.played)):
        for i in range(count):
            seed = int(np.random.SeedSequence((args.seed, KINDS.index(kind), i)).generate_state(1)[0])
            audio, true_f0, info = make_sketch(kind, seed, sr, args.seconds)
            timbre, prompt = PROMPTS[(i + KINDS.index(kind)) % len(PROMPTS)]
            sketches.append({"kind": kind, "index": i, "audio": audio, "true_f0": true_f0, "info": info,
                             "timbre": timbre, "prompt": prompt})
            if save is not None:
                sf.write(save / f"{kind}{i}_sketch.wav", audio, sr, subtype="FLOAT")
    print(f"{len(sketches)} sketches of {args.seconds:g} s x {len(args.strengths)} strengths "
          f"({args.runtime}, {args.steps} {args.sampler} steps, guidance {args.guidance:g}; "
          f"{'prompts' if text else 'style tags: the model takes no text'})", flush=True)
    t0 = time.perf_counter()
    for s in sketches:
        s["f0"], s["voiced"] = f0_frames(s["audio"], sr)
    print(f"pYIN on the sketches: {time.perf_counter() - t0:.1f} s (the first call compiles)", flush=True)

    rows = {}  # (kind, label) -> list of agreement counts
    timbre_hits: dict[tuple[str, str], list[bool]] = {}
    per_output = []
    for s in sketches:
        t_f0, t_voiced = truth_frames(s["true_f0"], sr, len(s["f0"]))
        rows.setdefault((s["kind"], "pYIN vs truth"), []).append(agreement(t_f0, t_voiced, s["f0"], s["voiced"]))
        same = [o for o in sketches if o["kind"] == s["kind"]]
        if len(same) > 1:
            other = same[(same.index(s) + 1) % len(same)]
            rows.setdefault((s["kind"], "unrelated"), []).append(
                agreement(s["f0"], s["voiced"], other["f0"], other["voiced"]))
    done, total = 0, len(sketches) * len(args.strengths)
    for strength in args.strengths:
        t0 = time.perf_counter()
        outputs = []
        for s in sketches:
            prompt, style = (s["prompt"], None) if text else (None, {s["timbre"]: 1.0})
            out = generate(runtime, None, prompt, style=style, guidance=args.guidance, steps=args.steps,
                           sampler=args.sampler, seed=args.seed + s["index"], sketch=s["audio"], strength=strength)
            f0, voiced = f0_frames(out, sr)
            counts = agreement(s["f0"], s["voiced"], f0, voiced)
            rows.setdefault((s["kind"], f"strength {strength:g}"), []).append(counts)
            outputs.append(out)
            per_output.append({"kind": s["kind"], "index": s["index"], "strength": strength, "prompt": prompt,
                               "style": style, "timbre": s["timbre"], **scores([counts])})
            if save is not None:
                sf.write(save / f"{s['kind']}{s['index']}_s{strength:g}.wav", out, sr, subtype="FLOAT")
            done += 1
        if classifier is not None:
            predicted = classifier.predict(outputs, sr)
            for s, p, rec in zip(sketches, predicted, per_output[-len(sketches):]):
                timbre_hits.setdefault((s["kind"], f"strength {strength:g}"), []).append(p == s["timbre"])
                rec["predicted_timbre"] = p
        print(f"[{done}/{total}] strength {strength:g}: {len(sketches)} outputs in {time.perf_counter() - t0:.1f} s; "
              f"pitch within 50 cents "
              + ", ".join(f"{k} {scores(rows[(k, f'strength {strength:g}')])['pitch']:.0%}"
                          for k in KINDS if (k, f"strength {strength:g}") in rows)
              + f" ({time.perf_counter() - start:.0f} s so far)", flush=True)
    wall = time.perf_counter() - start

    results = []
    for (kind, label), counts in rows.items():
        r = {"kind": kind, "row": label, **scores(counts), "sketches": len(counts)}
        hits = timbre_hits.get((kind, label))
        r["timbre"] = float(np.mean(hits)) if hits else None
        results.append(r)
    order = {"pYIN vs truth": -2, "unrelated": -1}
    results.sort(key=lambda r: (KINDS.index(r["kind"]), order.get(r["row"], 0),
                                float(r["row"].split()[-1]) if r["row"].startswith("strength") else 0))
    print(f"\nmachine: {machine()}; {args.threads} thread(s); runtime {args.runtime}; model {args.model}")
    print(f"{args.hummed} hummed + {args.played} played sketches of {args.seconds:g} s, {args.steps} {args.sampler} "
          f"steps, guidance {args.guidance:g}; {total} generations in {wall:.0f} s")
    print("pitch: output within 50 cents of the sketch over the sketch's voiced frames (pYIN on both); octave ok: "
          "the same modulo octaves; voicing: frames where both agree on voiced/unvoiced; voiced: share of the "
          "sketch's voiced frames voiced in the output; timbre: outputs classified as the prompted timbre")
    headers = ["sketch", "row", "pitch", "pitch (octave ok)", "voicing", "voiced", "timbre"]
    table = [[r["kind"], r["row"], f"{r['pitch']:.1%}", f"{r['pitch_octave']:.1%}", f"{r['voicing']:.1%}",
              f"{r['voiced_recall']:.1%}", "-" if r["timbre"] is None else f"{r['timbre']:.0%}"] for r in results]
    print_table(headers, table, args.markdown)
    if classifier is not None:
        from timbre_classifier import report_lines

        print(report_lines(classifier))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("markdown", "json", "save_audio")}
        out = {"machine": machine(), "settings": settings, "wall_seconds": round(wall, 1), "text_prompts": text,
               "results": results, "outputs": per_output,
               "sketches": [{k: v for k, v in s.items() if k not in ("audio", "true_f0", "f0", "voiced")}
                            for s in sketches]}
        if classifier is not None:
            out["classifier_heldout_accuracy"] = classifier.heldout_accuracy
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
