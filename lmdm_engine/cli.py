"""The ``lmdm`` command: process, presets, corpus, train, eval."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_CORPUS = Path("data/corpus")


def _parse_set(items: list[str]) -> dict:
    """``--set key=value`` pairs as preset fields (values parsed as JSON when they can be)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# ---- process ----------------------------------------------------------------------------------------
def cmd_process(args) -> int:
    import numpy as np
    import soundfile as sf
    from tqdm import tqdm

    from .presets import PresetError
    from .runtime import load_runtime
    from .session import Session

    src, dst = Path(args.input), Path(args.output)
    if src.resolve() == dst.resolve():
        raise SystemExit(f"refusing to overwrite the input {src}: choose another output path")
    try:
        info = sf.info(str(src))
    except Exception as e:
        raise SystemExit(f"{src}: cannot read audio ({e})")
    if info.channels not in (1, 2):
        raise SystemExit(f"{src}: {info.channels} channels; lmdm process takes mono or stereo files")
    runtime = load_runtime(args.model, backend=args.runtime)
    try:
        session = Session(runtime, info.samplerate, info.channels, args.preset, **_parse_set(args.set))
    except (PresetError, ValueError) as e:
        raise SystemExit(str(e))
    if dst.suffix.lower() not in (".wav", ".flac"):
        raise SystemExit(f"{dst}: write .wav or .flac")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    dry, wet = [], []
    start = time.time()
    try:
        with sf.SoundFile(str(src)) as fin, sf.SoundFile(str(tmp), "w", info.samplerate, info.channels,
                                                         subtype=args.subtype, format=dst.suffix[1:].upper()) as fout:
            with tqdm(total=info.frames, unit="frame", unit_scale=True, desc=src.name, disable=args.quiet) as bar:
                for chunk in fin.blocks(blocksize=args.buffer, dtype="float32", always_2d=True):
                    out = session.process(chunk.T)  # [frames, ch] -> [ch, frames]
                    fout.write(out.T)
                    bar.update(chunk.shape[0])
                    if args.spectrogram:
                        dry.append(chunk.mean(1))
                        wet.append(out.mean(0))
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written output behind
        raise
    tmp.replace(dst)
    seconds = info.frames / info.samplerate
    elapsed = time.time() - start
    print(f"wrote {dst} ({seconds:.1f} s, preset {session.params.name}, echo latency "
          f"{session.latency_samples / info.samplerate * 1000:.0f} ms, {seconds / max(elapsed, 1e-9):.1f}x real time)")
    if args.spectrogram:
        from .plots import save_spectrograms

        path = save_spectrograms(args.spectrogram, [("Input", np.concatenate(dry)), ("Output", np.concatenate(wet))],
                                 info.samplerate)
        print(f"wrote {path}")
    return 0


# ---- presets ----------------------------------------------------------------------------------------
def cmd_presets(args) -> int:
    from .presets import describe_schema, list_presets

    if args.schema:
        print(describe_schema())
        return 0
    for p in list_presets():
        style = ", ".join(f"{k} {v:g}" for k, v in p.style.items()) or "-"
        print(f"{p.name:16s} delay {p.delay_seconds:.2f} s  strength {p.strength:.2f}  feedback {p.feedback:.2f}  "
              f"mix {p.mix:.2f}  steps {p.steps:2d}  {p.sampler:8s} style: {style}")
        print(f"{'':16s} {p.description}")
    return 0


# ---- corpus / train / eval --------------------------------------------------------------------------
def cmd_corpus(args) -> int:
    from .corpus import write_corpus

    path = write_corpus(args.output, args.clips, seconds=args.seconds, seed=args.seed, jobs=args.jobs)
    print(f"corpus ready in {path}")
    return 0


def _ensure_data(args) -> Path:
    if args.data:
        return Path(args.data)
    from .corpus import write_corpus

    return write_corpus(DEFAULT_CORPUS, args.corpus_clips, jobs=2)


def cmd_train(args) -> int:
    from .config import ModelConfig
    from .train import TrainOptions, train

    data = _ensure_data(args)
    options = TrainOptions(stage=args.stage, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           seed=args.seed, max_minutes=args.max_minutes)
    config = ModelConfig.load(args.config) if args.config else (None if args.init else ModelConfig())
    model_dir = train(args.output, data, options, config=config, init=args.init, device=args.device)
    print(f"model written to {model_dir}")
    return 0


def cmd_eval(args) -> int:
    import torch

    from .data import load_clips
    from .evaluate import evaluate, evaluation_table, write_result
    from .model import Denoiser
    from .runtime import default_model_dir, load_runtime
    from .runtime_torch import TorchRuntime

    model = Path(args.model) if args.model else default_model_dir()
    runtime = load_runtime(model, backend="torch")
    clips = load_clips(_ensure_data(args), runtime.config, "heldout")
    torch.manual_seed(args.seed)
    untrained = TorchRuntime(Denoiser(runtime.config.replace(extra={})))
    result = evaluate(runtime, clips, untrained, blocks=args.blocks, steps=args.steps, sampler=args.sampler,
                      max_clips=args.clips, seed=args.seed)
    result["model_dir"] = str(model)
    print(evaluation_table({k: v for k, v in result.items() if k != "model_dir"}))
    if args.output:
        print(f"wrote {write_result(result, args.output)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmdm", description="Live Music Diffusion Models: the generative delay")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("process", help="run an audio file through the generative delay, block by block")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--preset", default=None, help="shipped preset name or .toml path (see `lmdm presets`)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a preset field, e.g. --set mix=0.8")
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--runtime", default="torch", choices=["torch"])
    p.add_argument("--buffer", type=int, default=4096, help="host buffer size in frames (output does not depend on it)")
    p.add_argument("--subtype", default="PCM_24", help="soundfile subtype of the output (PCM_16, PCM_24, FLOAT)")
    p.add_argument("--spectrogram", default=None, help="also write a PNG of input against output")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_process)

    p = sub.add_parser("presets", help="list the shipped presets")
    p.add_argument("--schema", action="store_true", help="print the preset file schema instead")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("corpus", help="render the procedural training corpus")
    p.add_argument("-o", "--output", default=str(DEFAULT_CORPUS))
    p.add_argument("--clips", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.set_defaults(func=cmd_corpus)

    def data_args(p):
        p.add_argument("--data", default=None,
                       help=f"procedural corpus or any folder of audio files (default: render {DEFAULT_CORPUS})")
        p.add_argument("--corpus-clips", type=int, default=2000)

    p = sub.add_parser("train", help="train a stage: outpaint (bidirectional baseline) or lmdm (block-causal)")
    p.add_argument("--stage", required=True, choices=["outpaint", "lmdm"])
    p.add_argument("-o", "--output", required=True, help="run folder (resumes if it holds training state)")
    p.add_argument("--init", default=None, help="model folder to start from (lmdm: the outpaint model)")
    p.add_argument("--config", default=None, help="folder with a config.json for a fresh model")
    data_args(p)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop and save after this long (0: no limit)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="Frechet distance of continuations against held-out audio, with references")
    p.add_argument("--model", default=None)
    data_args(p)
    p.add_argument("--clips", type=int, default=128)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--sampler", default="pingpong", choices=["euler", "pingpong"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default=None, help="write the figures as JSON")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
