"""Sound quality: the benchmark every model change is judged by (one table; docs/SOUND.md).

Rows, on held-out clips of the procedural corpus (the model's own sample rate, mono):

- ``continuation``: from each of ``--clips`` clips, the first ``context_frames`` latent frames are the context and
  the model streams 2 blocks from noise (strength 1) with its KV cache under the clip's conditioning, ``--steps``
  ping-pong steps; decoded together with its context, compared with the clips' real continuations. References in
  the same protocol: ``real (other clips)`` (the real continuations of as many other held-out clips: the floor this
  number of frames allows), ``repeat last block`` (the context's last block again: real audio, no novelty),
  ``codec round trip`` (the real continuation through the codec: the oracle decoder), ``shaped noise`` (Gaussian
  latents with the model's per-channel scale);
- ``echo: PRESET``: each delay preset's wet signal (a Session with mix 1, the preset's own steps) on
  ``--echo-clips`` clips, aligned by ``latency_samples`` and compared with the input it echoes; ``timbre``, the
  share the timbre classifier hears as the preset's heaviest timbre tag; ``jam: PRESET``, the same for a jam
  preset's part;
- ``pitch``: the default preset's echo at strength 0.2, 0.5 and 0.75 (feedback 0) on pitched clips: the share of
  the input's voiced frames whose pitch the echo keeps within 50 cents (YIN, metrics.pitch_kept);
- ``generate, guidance G``: ``lmdm generate`` (3 s from silence) for ``--prompts`` prompts per timbre family
  (captions.timbre_prompts, the training phrasings): the timbre classifier's share for the prompted timbre, and
  level, flatness and harmonicity against real held-out clips of that timbre;
- ``sketch``: hummed sketches (bench_sketch.make_sketch) rendered at strength 0.5: pitch kept against the sketch;
- ``drift``: ``--drift-contexts`` (64) free rollouts of 64 blocks: the Fréchet distance of blocks 33-64 against
  all held-out audio, relative to that of blocks 1-8 (+20% = 1.2 times as far). Fewer contexts hide drift: the
  distance of a small set of frames is biased up, the more so for the shorter early span (the shipped model
  scored +41% on 16 contexts and +120% on 64).

Columns: ``FD``, the Fréchet distance between log-mel statistics (64 bands; metrics.py) of the row's audio and the
real audio it is compared with; ``level``, its RMS level minus the real audio's, dB, median over clips; ``flat``, its spectral
flatness (50 Hz-10 kHz, median over active frames) over the real audio's, median over pitched clips; ``harm``,
its harmonicity on pitched clips (real audio scores about 0.89); ``pitch``, ``timbre``, ``drift`` as above.
``--baseline FILE`` adds the rows of an earlier run (its ``--json``) after the model's, labelled ``before:``.

    python benchmarks/bench_sound.py [--model DIR] [--runtime onnx|torch] [--data data/corpus] [--clips 64]
        [--echo-clips 24] [--steps 2] [--prompts 4] [--sketches 8] [--drift-contexts 64] [--sections ...]
        [--baseline benchmarks/sound_baseline.json] [--spectrograms DIR] [--markdown] [--json OUT]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np

from _common import machine, print_table
from bench_sketch import PROMPTS as SKETCH_PROMPTS, make_sketch
from lmdm_engine.core.codec import decode_clip, encode_clip
from lmdm_engine.core.conditioning import conditioning_vectors
from lmdm_engine.core.config import TIMBRES
from lmdm_engine.core.metrics import (frechet_distance, harmonicity, level_db, log_mel, mel_statistics, pitch_kept,
                                      spectral_flatness)
from lmdm_engine.io.plots import save_spectrograms
from lmdm_engine.io.presets import DEFAULT_PRESET, list_presets, resolve_preset
from lmdm_engine.runtime.interface import default_model_dir, load_runtime
from lmdm_engine.stream.generate import generate
from lmdm_engine.stream.session import Session
from lmdm_engine.train.captions import timbre_prompts
from lmdm_engine.train.corpus import read_metadata, style_vector
from lmdm_engine.train.data import corpus_captions, read_audio_mono
from lmdm_engine.train.evaluate import rollout
from timbre_classifier import DEFAULT_CACHE, load_or_train

SECTIONS = ("continuation", "echo", "pitch", "generate", "sketch", "drift")
PITCH_STRENGTHS = (0.2, 0.5, 0.75)
GUIDANCES = (1.0, 4.0)
DRIFT_BLOCKS = 64
COLUMNS = ("FD", "level", "flat", "harm", "pitch", "timbre", "drift")


# ---- measures over sets of clips -----------------------------------------------------------------------------
def fd(clips, references, sr: int) -> float:
    stats = [mel_statistics(np.concatenate([log_mel(c, sr) for c in group])) for group in (clips, references)]
    return frechet_distance(*stats[0], *stats[1])


def tonal(clips, references, pitched, sr: int) -> dict:
    """Level error, flatness ratio and harmonicity: medians over the clips (the pitched clips for the last two; a
    mean of level errors would be ruled by the clips whose reference falls silent)."""
    flat = [spectral_flatness(clips[i], sr) / spectral_flatness(references[i], sr) for i in pitched]
    return {"level": float(np.median([level_db(c) - level_db(r) for c, r in zip(clips, references)])),
            "flat": float(np.nanmedian(flat)) if flat else float("nan"),
            "harm": float(np.nanmedian([harmonicity(clips[i], sr) for i in pitched])) if pitched else float("nan")}


def measured(clips, references, pitched, sr: int) -> dict:
    return {"FD": fd(clips, references, sr), **tonal(clips, references, pitched, sr)}


# ---- held-out data -------------------------------------------------------------------------------------------
class Heldout:
    """Held-out corpus clips: audio at the model rate, metadata, conditioning vectors."""

    def __init__(self, data: Path, runtime):
        cfg = runtime.config
        self.rows = [r for r in read_metadata(data) if r["split"] == "heldout"]
        self.audio = [read_audio_mono(data / r["file"], cfg.sample_rate) for r in self.rows]
        tags = np.stack([style_vector(r["tags"], cfg.style_vocab) for r in self.rows])
        prompts = corpus_captions(data, self.rows, cfg.text_encoder, "heldout")[:, 0] if cfg.text_dim else None
        self.conditioning = conditioning_vectors(cfg, tags, prompts)
        self.pitched = [i for i, r in enumerate(self.rows) if r["info"]["timbre"] != "drums"]

    def timbre(self, i: int) -> str:
        return self.rows[i]["info"]["timbre"]


# ---- sections --------------------------------------------------------------------------------------------------
def continuation(runtime, held: Heldout, n: int, steps: int, seed: int) -> tuple[dict, dict]:
    """The model's free continuations and the references (see the module docstring)."""
    cfg = runtime.config
    c, L = cfg.context_frames, cfg.block_frames
    span = slice(c * cfg.hop, (c + 2 * L) * cfg.hop)
    idx, other = np.arange(n), np.arange(n, 2 * n) % len(held.audio)
    latents = np.stack([encode_clip(runtime.codec, held.audio[i]) for i in idx])
    context = latents[:, :c]
    real = [held.audio[i][span] for i in idx]
    pitched = [k for k, i in enumerate(idx) if i in set(held.pitched)]

    def decoded(tails):  # decode after the context, keep the continuation's span
        return [decode_clip(runtime.codec, np.concatenate([ctx, t]).astype(np.float32))[span] for ctx, t in zip(context, tails)]

    rng = np.random.default_rng(seed)
    model = rollout(runtime, context, 2, L, steps, "pingpong", held.conditioning[idx], seed)
    candidates = {
        "continuation": decoded(model),
        "real (other clips)": [held.audio[i][span] for i in other],
        "repeat last block": decoded(np.tile(context[:, -L:], (1, 2, 1))),
        "codec round trip": decoded(latents[:, c:c + 2 * L]),
        "shaped noise": decoded(rng.standard_normal(model.shape).astype(np.float32) * runtime.latent_scale),
    }
    rows = {}
    for name, clips in candidates.items():
        # other clips have no pairing: their tonal columns compare each with its own continuation
        refs = real if name != "real (other clips)" else clips
        rows[name] = {"FD": fd(clips, real, cfg.sample_rate), **tonal(clips, refs, pitched, cfg.sample_rate)}
    return rows, {"input": real[0], "continuation": candidates["continuation"][0]}


def wet_signal(runtime, audio: np.ndarray, preset, **overrides) -> np.ndarray:
    """The Session's wet signal (mix 1) for ``audio``, aligned with it by the reported latency."""
    params = resolve_preset(preset, {**overrides, "mix": 1.0}).params
    session = Session(runtime, runtime.config.sample_rate, 1, params)
    lag = session.latency_samples
    out = session.process(np.concatenate([audio, np.zeros(lag, np.float32)])[None])[0]
    return out[lag:lag + audio.shape[0]]


def preset_timbre(preset) -> str | None:
    """The timbre family a preset asks for: its heaviest timbre tag."""
    weights = {t: w for t, w in preset.style.items() if t in TIMBRES and w > 0}
    return max(weights, key=weights.get) if weights else None


def echoes(runtime, held: Heldout, n: int, classifier) -> tuple[dict, dict]:
    """Each preset's wet signal; ``timbre``: the share heard as the preset's timbre (its jam part, in jam mode)."""
    sr = runtime.config.sample_rate
    idx = list(range(n))
    inputs = [held.audio[i] for i in idx]
    pitched = [k for k, i in enumerate(idx) if i in set(held.pitched)]
    rows, pictures = {}, {}
    for preset in list_presets():
        wet = [wet_signal(runtime, a, preset) for a in inputs]
        row = measured(wet, inputs, pitched, sr)
        timbre = preset_timbre(preset)
        if timbre and classifier is not None:
            row["timbre"] = float(np.mean([h == timbre for h in classifier.predict(wet, sr)]))
        rows[f"{'jam' if preset.mode == 'jam' else 'echo'}: {preset.name}"] = row
        pictures[f"echo {preset.name}"] = wet[pitched[0] if pitched else 0]
    return rows, pictures


def pitch(runtime, held: Heldout, n: int) -> dict:
    sr = runtime.config.sample_rate
    clips = [held.audio[i] for i in held.pitched[:n]]
    kept = {}
    for s in PITCH_STRENGTHS:
        wet = [wet_signal(runtime, a, DEFAULT_PRESET, strength=s, feedback=0.0) for a in clips]
        kept[s] = float(np.nanmean([pitch_kept(a, w, sr) for a, w in zip(clips, wet)]))
    return {f"pitch: {DEFAULT_PRESET}, feedback 0": {"pitch": " / ".join(f"{100 * kept[s]:.0f}%" for s in kept),
                                                   "pitch_by_strength": kept}}


def generations(runtime, held: Heldout, classifier, n_prompts: int, steps: int, seed: int) -> tuple[dict, dict]:
    sr = runtime.config.sample_rate
    rows, pictures = {}, {}
    real_by_timbre = {t: [held.audio[i] for i, r in enumerate(held.rows) if r["info"]["timbre"] == t] for t in TIMBRES}
    for g in GUIDANCES:
        clips, refs, asked = [], [], []
        for t in TIMBRES:
            for j, prompt in enumerate(timbre_prompts(t, n_prompts, seed, "seen")):
                clips.append(generate(runtime, 3.0, prompt, guidance=g, steps=steps, seed=seed + j))
                refs.append(real_by_timbre[t][j % len(real_by_timbre[t])][: clips[-1].shape[0]])
                asked.append(t)
        pitched = [k for k, t in enumerate(asked) if t != "drums"]
        heard = classifier.predict(clips, sr)
        row = measured(clips, refs, pitched, sr)
        row["timbre"] = float(np.mean([h == a for h, a in zip(heard, asked)]))
        rows[f"generate, guidance {g:g}"] = row
        pictures[f"generate g{g:g} {asked[0]}"] = clips[0]
    return rows, pictures


def sketches(runtime, n: int, steps: int, seed: int) -> dict:
    sr = runtime.config.sample_rate
    kept, outs, sks = [], [], []
    for i in range(n):
        sketch, _, _ = make_sketch("hum", seed + i, sr, 4.0)
        _, prompt = SKETCH_PROMPTS[i % len(SKETCH_PROMPTS)]
        out = generate(runtime, None, prompt, sketch=sketch, strength=0.5, steps=steps, seed=seed + i)
        kept.append(pitch_kept(sketch, out, sr))
        outs.append(out)
        sks.append(sketch)
    row = {"FD": fd(outs, sks, sr), **tonal(outs, sks, list(range(n)), sr)}
    row["pitch"] = f"{100 * float(np.nanmean(kept)):.0f}% @0.5"
    return {"sketch (hummed, strength 0.5)": row}


def drift(runtime, held: Heldout, n: int, steps: int, seed: int) -> float:
    """FD of blocks 33-64 over FD of blocks 1-8 of free rollouts, against all held-out audio."""
    cfg = runtime.config
    c, L = cfg.context_frames, cfg.block_frames
    idx = np.arange(n)
    context = np.stack([encode_clip(runtime.codec, held.audio[i])[:c] for i in idx])
    out = rollout(runtime, context, DRIFT_BLOCKS, L, steps, "pingpong", held.conditioning[idx], seed)
    audio = [decode_clip(runtime.codec, np.concatenate([ctx, z]).astype(np.float32))[c * cfg.hop:] for ctx, z in zip(context, out)]
    real = mel_statistics(np.concatenate([log_mel(a, cfg.sample_rate) for a in held.audio]))
    block = L * cfg.hop

    def part(first, last):  # blocks first..last, 1-based, inclusive
        frames = np.concatenate([log_mel(a[(first - 1) * block:last * block], cfg.sample_rate) for a in audio])
        return frechet_distance(*mel_statistics(frames), *real)

    early, late = part(1, 8), part(33, 64)
    return late / early - 1.0


# ---- table ---------------------------------------------------------------------------------------------------
def cell(row: dict, column: str) -> str:
    v = row.get(column)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if isinstance(v, str):
        return v
    return {"FD": f"{v:.1f}", "level": f"{v:+.1f} dB", "flat": f"{v:.2f}x", "harm": f"{v:.2f}",
            "timbre": f"{100 * v:.0f}%", "drift": f"{100 * v:+.0f}%"}[column]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model_dir()))
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "torch"])
    parser.add_argument("--data", default="data/corpus", help="the procedural corpus (lmdm corpus)")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--echo-clips", type=int, default=24)
    parser.add_argument("--steps", type=int, default=2, help="sampling steps outside the presets")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per timbre family")
    parser.add_argument("--sketches", type=int, default=8)
    parser.add_argument("--drift-contexts", type=int, default=64)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier", default=str(DEFAULT_CACHE), help="timbre classifier cache")
    parser.add_argument("--baseline", help="an earlier run's --json, shown as 'before:' rows")
    parser.add_argument("--spectrograms", help="folder for the spectrogram PNGs")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()

    start = time.perf_counter()
    runtime = load_runtime(args.model, backend=args.runtime)
    data = Path(args.data)
    held = Heldout(data, runtime)
    rows, pictures = {}, {}
    timed = {}
    classifier = functools.cache(lambda: load_or_train(args.classifier, data, progress=False))
    for section in args.sections:
        t0 = time.perf_counter()
        if section == "continuation":
            part, pics = continuation(runtime, held, args.clips, args.steps, args.seed)
        elif section == "echo":
            part, pics = echoes(runtime, held, args.echo_clips, classifier())
        elif section == "pitch":
            part, pics = pitch(runtime, held, args.echo_clips), {}
        elif section == "generate":
            part, pics = generations(runtime, held, classifier(), args.prompts, args.steps, args.seed)
        elif section == "sketch":
            part, pics = sketches(runtime, args.sketches, args.steps, args.seed), {}
        else:
            rows.setdefault("continuation", {})["drift"] = drift(runtime, held, args.drift_contexts, args.steps, args.seed)
            part, pics = {}, {}
        rows.update(part)
        pictures.update(pics)
        timed[section] = round(time.perf_counter() - t0, 1)

    shown = dict(rows)
    if args.baseline:
        before = json.loads(Path(args.baseline).read_text())
        shown.update({f"before: {name}": row for name, row in before["rows"].items()})
    print(f"# sound quality: {args.model} ({args.runtime}), {machine()}, {time.perf_counter() - start:.0f} s")
    print_table(["row", *COLUMNS], [[name, *(cell(row, c) for c in COLUMNS)] for name, row in shown.items()],
                args.markdown)
    if args.spectrograms and pictures:
        folder = Path(args.spectrograms)
        folder.mkdir(parents=True, exist_ok=True)
        for name, audio in pictures.items():
            save_spectrograms(folder / (name.replace(" ", "_").replace(":", "") + ".png"), [(name, audio)],
                              runtime.config.sample_rate)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "runtime": args.runtime, "machine": machine(),
                                               "settings": vars(args), "seconds": timed, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
