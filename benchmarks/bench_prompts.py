"""Prompt adherence: does a generation asked for a timbre sound like that timbre?

For each of the eight timbre families of the procedural corpus (config.TIMBRES), ``--prompts`` prompts from
``captions.timbre_prompts(timbre, n, seed, phrasing)`` in the phrasings used in training ("seen") and in phrasings
never trained on ("unseen"); each prompt is generated ``--seeds`` times (``--seconds`` s each, ``generate.generate``
from silence, the KV-cache streaming path) with classifier-free guidance off (scale 1) and on (``--guidance``), and
each generation is classified by the timbre classifier (timbre_classifier.py: a small CNN over log-mel frames
trained on the corpus, cached in runs/timbre_classifier/). The score is the share of generations assigned to the
prompted timbre, per timbre and overall, for seen/unseen x guidance off/on; chance is 1/8, and the classifier's own
held-out accuracy bounds what the score can show. Seeds are paired: prompt j of every timbre, phrasing and guidance
uses generation seed ``--seed + s`` for its s-th generation, so the cells differ by the condition only. The
optional ``tags`` cell asks by the style tag ``{timbre: 1}`` instead of a prompt (the pre-text conditioning; the only
cell for a model without text prompts), with ``--prompts x --seeds`` seeds of its own per timbre. The
``unprompted`` column is the model's prior: the share of ``--prompts x --seeds`` generations without any prompt
that the classifier assigns to each timbre (noise-like output tends to land in one class, which inflates that
timbre's row; compare each row with it, not only with 1/8).

    python benchmarks/bench_prompts.py [--model DIR] [--runtime torch|onnx] [--prompts 8] [--seeds 2]
        [--seconds 3] [--guidance 3.0] [--steps 4] [--sampler pingpong] [--timbres keys pad ...]
        [--phrasings seen unseen tags]
        [--no-unprompted] [--threads 1] [--save-audio DIR] [--markdown] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from lmdm_engine.core.config import TIMBRES
from lmdm_engine.runtime.interface import default_model_dir, load_runtime
from lmdm_engine.stream.generate import generate
from lmdm_engine.train.captions import PHRASINGS, timbre_prompts

from _common import machine, print_table
from timbre_classifier import DEFAULT_CACHE, DEFAULT_DATA, load_or_train, report_lines

UNSURE = 0.5  # a generation whose top class probability is below this is counted as "unsure" (noise, smears)
TAGS = "tags"  # the reference cell: the style tag {timbre: 1} instead of a text prompt


def cell_key(phrasing: str, guidance: float) -> str:
    return f"{phrasing}/g{guidance:g}"


def run(runtime, classifier, timbres, phrasings, guidances, n_prompts, n_seeds, seconds, steps, sampler, seed,
        save_audio: Path | None = None) -> dict:
    """Generate and classify every (timbre, phrasing, prompt, seed, guidance); the per-generation records."""
    sr = runtime.config.sample_rate
    records = []
    start = time.perf_counter()
    total = len(timbres) * len(phrasings) * n_prompts * n_seeds * len(guidances)
    for ti, timbre in enumerate(timbres):
        for phrasing in phrasings:
            t0 = time.perf_counter()
            tags = phrasing == TAGS
            prompts = [None] * n_prompts if tags else timbre_prompts(timbre, n_prompts, seed, phrasing)
            style = {timbre: 1.0} if tags else None
            audio, batch = [], []
            for j, prompt in enumerate(prompts):
                for s in range(n_seeds):
                    # a text prompt's seeds are paired across timbres, phrasings and guidance; the style tags
                    # have one "prompt" per timbre, so each of its generations gets a seed of its own
                    gen_seed = seed + j * n_seeds + s if tags else seed + s
                    for g in guidances:
                        clip = generate(runtime, seconds, prompt, style=style, guidance=g, steps=steps,
                                        sampler=sampler, seed=gen_seed)
                        audio.append(clip)
                        batch.append({"timbre": timbre, "phrasing": phrasing, "prompt": prompt, "style": style,
                                      "prompt_index": j, "seed": gen_seed, "guidance": g})
                        if save_audio is not None:
                            name = f"{timbre}_{phrasing}_p{j}_s{seed + s}_g{g:g}.wav"
                            sf.write(save_audio / name, clip, sr, subtype="FLOAT")
            probs = classifier.probabilities(audio, sr)
            for rec, p, clip in zip(batch, probs, audio):
                rec["predicted"] = classifier.timbres[int(p.argmax())]
                rec["p_prompted"] = float(p[classifier.timbres.index(rec["timbre"])])
                rec["p_max"] = float(p.max())
                rec["rms"] = float(np.sqrt(np.mean(np.square(clip, dtype=np.float64))))
            records += batch
            hits = {g: np.mean([r["predicted"] == timbre for r in batch if r["guidance"] == g]) for g in guidances}
            done = len(records)
            print(f"[{done}/{total}] {timbre:>6} {phrasing:>6}: {len(batch)} generations in "
                  f"{time.perf_counter() - t0:.1f} s; on target "
                  + ", ".join(f"g={g:g} {h:.0%}" for g, h in hits.items())
                  + f" ({time.perf_counter() - start:.0f} s so far)", flush=True)
    return records


def unprompted(runtime, classifier, n, seconds, steps, sampler, seed) -> dict:
    """The prior: what ``n`` generations without prompt or tags are classified as (share per timbre)."""
    t0 = time.perf_counter()
    sr = runtime.config.sample_rate
    audio = [generate(runtime, seconds, None, steps=steps, sampler=sampler, seed=seed + k) for k in range(n)]
    probs = classifier.probabilities(audio, sr)
    predicted = [classifier.timbres[i] for i in probs.argmax(1)]
    share = {t: sum(p == t for p in predicted) / n for t in TIMBRES}
    print(f"unprompted: {n} generations in {time.perf_counter() - t0:.1f} s; classified as "
          + ", ".join(f"{t} {v:.0%}" for t, v in share.items() if v), flush=True)
    return {"generations": n, "share": share, "predicted": predicted,
            "unsure": float(np.mean(probs.max(1) < UNSURE))}


def summarise(records: list[dict], timbres, phrasings, guidances) -> dict:
    """Share on target (and mean classifier probability of the prompted timbre) per cell and timbre."""
    out = {}
    for phrasing in phrasings:
        for g in guidances:
            cell = [r for r in records if r["phrasing"] == phrasing and r["guidance"] == g]
            per_timbre = {}
            for t in timbres:
                rs = [r for r in cell if r["timbre"] == t]
                per_timbre[t] = {"on_target": float(np.mean([r["predicted"] == t for r in rs])),
                                 "p_prompted": float(np.mean([r["p_prompted"] for r in rs])),
                                 "predicted": {u: sum(r["predicted"] == u for r in rs) for u in TIMBRES},
                                 "generations": len(rs)}
            out[cell_key(phrasing, g)] = {
                "phrasing": phrasing, "guidance": g,
                "on_target": float(np.mean([r["predicted"] == r["timbre"] for r in cell])),
                "p_prompted": float(np.mean([r["p_prompted"] for r in cell])),
                "unsure": float(np.mean([r["p_max"] < UNSURE for r in cell])),
                "generations": len(cell), "per_timbre": per_timbre}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model_dir()), help="a text model folder (default: shipped)")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                        help="torch (default: a fresh run folder has no ONNX export) or onnx")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per timbre and phrasing")
    parser.add_argument("--seeds", type=int, default=2, help="generations (noise seeds) per prompt")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each generation (2-4 s suits the "
                                                                    "classifier)")
    parser.add_argument("--guidance", type=float, default=3.0, help="the guided scale (compared with 1 = off)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sampler", default="pingpong", choices=["euler", "pingpong"])
    parser.add_argument("--timbres", nargs="+", default=list(TIMBRES), choices=list(TIMBRES))
    parser.add_argument("--phrasings", nargs="+", default=None, choices=[*PHRASINGS, TAGS],
                        help="prompt phrasings: seen, unseen, and tags (the style tag of the timbre instead of a "
                             "prompt; models without text take only this). Default: seen unseen, or tags")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed and first generation seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core CPU)")
    parser.add_argument("--classifier", default=str(DEFAULT_CACHE), help="timbre classifier cache (trained when "
                                                                         "missing)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="corpus the classifier trains on")
    parser.add_argument("--no-unprompted", action="store_true",
                        help="skip the unprompted reference (--prompts x --seeds generations without a prompt)")
    parser.add_argument("--save-audio", default=None, metavar="DIR", help="also write every generation as WAV")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", default=None, metavar="JSON")
    args = parser.parse_args()
    if args.prompts < 1 or args.seeds < 1 or args.seconds < 0.5:
        parser.error("need --prompts >= 1, --seeds >= 1 and --seconds >= 0.5")

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    classifier = load_or_train(args.classifier, args.data, threads=args.threads)
    torch.set_num_threads(args.threads)
    runtime = load_runtime(args.model, backend=args.runtime)
    text = bool(runtime.config.text_dim)
    if args.phrasings is None:
        args.phrasings = list(PHRASINGS) if text else [TAGS]
        if not text:
            print(f"{args.model} takes no text prompts (text_dim 0): measuring its style tags only", flush=True)
    elif not text and set(args.phrasings) - {TAGS}:
        parser.error(f"{args.model} takes no text prompts (text_dim 0): pass a text model with --model, or "
                     f"--phrasings tags")
    save_audio = Path(args.save_audio) if args.save_audio else None
    if save_audio is not None:
        save_audio.mkdir(parents=True, exist_ok=True)
    guidances = [1.0] if args.guidance == 1.0 else [1.0, args.guidance]
    n = len(args.timbres) * len(args.phrasings) * args.prompts * args.seeds * len(guidances)
    print(f"{n} generations of {args.seconds:g} s ({args.runtime}, {args.steps} {args.sampler} steps)", flush=True)
    prior = None if args.no_unprompted else unprompted(runtime, classifier, args.prompts * args.seeds,
                                                        args.seconds, args.steps, args.sampler, args.seed)
    records = run(runtime, classifier, args.timbres, args.phrasings, guidances, args.prompts, args.seeds,
                  args.seconds, args.steps, args.sampler, args.seed, save_audio)
    summary = summarise(records, args.timbres, args.phrasings, guidances)
    wall = time.perf_counter() - start

    cells = list(summary)
    chance = 1 / len(classifier.timbres)
    print(f"\nmachine: {machine()}; {args.threads} thread(s); runtime {args.runtime}; model {args.model}")
    print(f"{args.prompts} prompts x {args.seeds} seeds per timbre and phrasing ({', '.join(args.phrasings)}), "
          f"{args.seconds:g} s each, "
          f"{args.steps} {args.sampler} steps; {n} generations in {wall:.0f} s")
    print(f"{report_lines(classifier)}")
    print(f"share of generations classified as the prompted timbre (chance {chance:.1%}; g = guidance scale, "
          f"1 = off)" + ("; unprompted: share of generations without a prompt classified as that timbre (the "
                         "model's prior: a timbre's own chance level)" if prior is not None else ""))
    headers = ["timbre"] + [f"{summary[c]['phrasing']} g={summary[c]['guidance']:g}" for c in cells]
    rows = [[t] + [f"{summary[c]['per_timbre'][t]['on_target']:.0%}" for c in cells] for t in args.timbres]
    if prior is not None:
        headers.append("unprompted")
        for row, t in zip(rows, args.timbres):
            row.append(f"{prior['share'][t]:.0%}")
    rows.append(["all"] + [f"**{summary[c]['on_target']:.1%}**" if args.markdown else f"{summary[c]['on_target']:.1%}"
                           for c in cells])
    rows.append(["mean p(prompted)"] + [f"{summary[c]['p_prompted']:.2f}" for c in cells])
    rows.append([f"unsure (top p < {UNSURE:g})"] + [f"{summary[c]['unsure']:.0%}" for c in cells])
    rows.append(["chance"] + [f"{chance:.1%}"] * len(cells))
    if prior is not None:
        rows[-4].append(f"{sum(prior['share'][t] for t in args.timbres) / len(args.timbres):.1%}")
        rows[-3].append("")
        rows[-2].append(f"{prior['unsure']:.0%}")
        rows[-1].append("")
    print_table(headers, rows, args.markdown)

    print("\nwhat the generations were classified as (all cells pooled; rows: prompted timbre):")
    pooled = {t: {u: sum(summary[c]["per_timbre"][t]["predicted"][u] for c in cells) for u in TIMBRES}
              for t in args.timbres}
    print_table(["prompted \\ heard", *TIMBRES], [[t, *(str(pooled[t][u]) for u in TIMBRES)] for t in args.timbres],
                args.markdown)
    silent = sum(r["rms"] < 1e-3 for r in records)
    if silent:
        print(f"note: {silent} of {len(records)} generations are near-silent (RMS < -60 dBFS); the classifier "
              f"still assigns them a timbre")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("markdown", "json", "save_audio")}
        out = {"machine": machine(), "settings": settings, "wall_seconds": round(wall, 1), "chance": chance,
               "classifier": {"heldout_accuracy": classifier.heldout_accuracy,
                              "heldout_per_class": classifier.report["heldout"]["per_class"],
                              "cache": args.classifier},
               "summary": summary, "unprompted": prior, "generations": records}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
