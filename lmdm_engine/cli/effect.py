"""The ``lmdm`` command: process, generate, presets, corpus, train, eval, serve (bridge/), export (export/)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from lmdm_engine.runtime.interface import BACKENDS, DEFAULT_BACKEND

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
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text}")
    return value


def _usage_error(message: str) -> int:
    print(f"lmdm process: {message}", file=sys.stderr)
    return 2


def cmd_process(args) -> int:
    """Exit code 0: every output written (or skipped, existing); 1: a file failed (or, with --dry-run, cannot be
    used); 2: nothing run (bad request); 128 + signal number: interrupted (partial files removed; rerun with
    --skip-existing to go on)."""
    import dataclasses
    import signal
    from contextlib import closing

    from lmdm_engine.io.batch import (BatchSettings, Interrupted, OutputFormat, PlanError, batch_report, discard_stale_partials,
                        plan_jobs, plan_listing, raise_interrupted, run_batch, skipped_result, summary_table,
                        write_report)
    from lmdm_engine.io.chains import ChainError, parse_plugin_text
    from lmdm_engine.core.conditioning import TextExtraMissing
    from lmdm_engine.io.effect import GenerativeDelay
    from lmdm_engine.io.presets import DEFAULT_PRESET, PresetError, load_preset, preset_from_dict

    overrides = _parse_set(args.set)
    for field in ("prompt", "guidance", "mode"):
        if getattr(args, field) is not None:
            if field in overrides:
                return _usage_error(f"give {field} with --{field} or with --set {field}=..., not both")
            overrides[field] = getattr(args, field)
    try:
        for field, texts in (("pre", args.pre), ("post", args.post)):
            if texts and field in overrides:
                return _usage_error(f"give the {field} chain with --{field} or with --set {field}=..., not both")
            if texts:
                overrides[field] = [parse_plugin_text(text) for text in texts]
        base = load_preset(args.preset or DEFAULT_PRESET)
        preset = preset_from_dict({**dataclasses.asdict(base), **overrides}, source=f"preset {base.name!r}")
        GenerativeDelay(preset)  # builds the chains (loading any VST3) to report a bad plugin now; no model yet
        if args.model is not None and not Path(args.model).is_dir():
            return _usage_error(f"--model {args.model}: no such model folder")
        _check_conditioning(preset, args.model, args.runtime)
        plan = plan_jobs(args.inputs, args.output, args.format, args.spectrogram, args.skip_existing)
        settings = BatchSettings(preset, OutputFormat(plan.container, args.bit_depth), args.model, args.runtime,
                                 args.provider, args.tail, args.buffer)
    except (PresetError, ChainError, PlanError, ValueError, TextExtraMissing) as e:
        return _usage_error(str(e))
    if args.dry_run:
        print(plan_listing(plan))
        return 1 if plan.failed else 0

    discard_stale_partials(plan.skipped)
    results = plan.failed + [skipped_result(job) for job in plan.skipped]
    interrupted = None
    start = time.perf_counter()
    previous_handler = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        with closing(run_batch(plan.jobs, settings, args.jobs, show_progress=not args.quiet)) as finished:
            results.extend(finished)
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = e
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    wall = time.perf_counter() - start
    results.sort(key=lambda r: r.source)
    print(summary_table(results, wall))
    if args.report:
        report = batch_report(results, settings, args.jobs, wall, interrupted=interrupted is not None)
        print(f"report: {write_report(args.report, report)}")
    if interrupted is not None:
        print("interrupted: partial files removed; run the same command with --skip-existing to go on",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(interrupted, Interrupted) else signal.SIGINT)
    return 1 if any(r.status == "failed" for r in results) else 0


def _check_conditioning(preset, model: str | None, backend: str) -> None:
    """Raise now (ValueError, TextExtraMissing) when the model cannot play the preset's prompt or mode, rather than
    in every file's worker."""
    from lmdm_engine.core.conditioning import embed_prompt
    from lmdm_engine.core.config import ModelConfig
    from lmdm_engine.io.presets import unplayable_reason
    from lmdm_engine.runtime.interface import default_model_dir

    if not preset.prompt and preset.mode != "jam":
        return
    folder = Path(model) if model is not None else default_model_dir()
    if backend == "onnx":
        from lmdm_engine.runtime.onnx import read_manifest

        config = read_manifest(folder, check_files=False)["config"]
    else:
        config = ModelConfig.load(folder)
    reason = unplayable_reason(preset, config)
    if reason:
        raise ValueError(f"preset {preset.name!r} on the model in {folder}: {reason}")
    if preset.prompt:
        try:
            embed_prompt(preset.prompt, config)
        except ValueError as e:
            raise ValueError(f"prompt {preset.prompt!r}: {e}") from None


# ---- generate ---------------------------------------------------------------------------------------
def _generate_error(message: str) -> int:
    print(f"lmdm generate: {message}", file=sys.stderr)
    return 2


def _read_sketch(path: str, sample_rate: int):
    """The sketch file as mono float32 at the model rate (channels averaged), and its duration in seconds."""
    import pedalboard.io

    try:
        with pedalboard.io.AudioFile(path) as f:
            seconds = f.frames / f.samplerate
            with f.resampled_to(sample_rate) as r:
                audio = r.read(r.frames)
    except Exception as e:  # pedalboard raises several types for unreadable files
        raise ValueError(f"--sketch {path}: cannot read it as audio ({e})") from None
    return audio.mean(0).astype("float32"), seconds


def _write_stream(path: Path, blocks, source_rate: int, target_rate: int, frames: int) -> None:
    """Write mono model-rate blocks to ``path`` at ``target_rate`` (exactly ``frames`` frames) through a .partial
    file renamed at the end."""
    import numpy as np
    import soundfile as sf
    from pedalboard.io import StreamResampler

    from lmdm_engine.io.batch import PARTIAL_SUFFIX

    fmt = {".wav": "WAV", ".flac": "FLAC"}[path.suffix.lower()]
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    resampler = StreamResampler(source_rate, target_rate, 1) if source_rate != target_rate else None
    written = 0
    try:
        with sf.SoundFile(partial, "w", target_rate, 1, subtype="PCM_24", format=fmt) as f:
            def write(audio):
                nonlocal written
                audio = audio[: frames - written]
                f.write(audio)
                written += audio.shape[0]

            for block in blocks:
                write(resampler.process(block[None])[0] if resampler else block)
            if resampler:
                write(resampler.process()[0])
            write(np.zeros(frames - written, np.float32))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def cmd_generate(args) -> int:
    """Exit code 0: written; 1: generation failed; 2: bad request (nothing written)."""
    from lmdm_engine.core.conditioning import TextExtraMissing
    from lmdm_engine.stream.generate import iter_generate
    from lmdm_engine.runtime.interface import load_runtime

    output = Path(args.output)
    if output.suffix.lower() not in (".wav", ".flac"):
        return _generate_error(f"-o {output}: write a .wav or .flac file")
    if args.sketch is None and args.seconds is None:
        return _generate_error("give --seconds (or a --sketch to follow)")
    changes = []
    for at, text in args.then or []:
        try:
            changes.append((float(at), text))
        except ValueError:
            return _generate_error(f"--then {at} {text!r}: {at!r} is not a number of seconds")
    try:
        style = {tag: float(w) for tag, w in (item.split("=", 1) for item in args.style or [])}
    except ValueError:
        return _generate_error(f"--style expects TAG=WEIGHT, got {args.style}")
    if args.model is not None and not Path(args.model).is_dir():
        return _generate_error(f"--model {args.model}: no such model folder")
    runtime = load_runtime(args.model, backend=args.runtime, provider=args.provider)
    rate = runtime.config.sample_rate
    try:
        sketch, seconds = _read_sketch(args.sketch, rate) if args.sketch else (None, args.seconds)
        blocks = iter_generate(runtime, seconds, args.prompt, style=style, guidance=args.guidance, steps=args.steps,
                               sampler=args.sampler, seed=args.seed, sketch=sketch, strength=args.strength,
                               prompt_changes=changes, progress=not args.quiet)
    except (ValueError, TextExtraMissing) as e:
        return _generate_error(str(e))
    frames = int(round(seconds * args.sample_rate))
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_stream(output, blocks, rate, args.sample_rate, frames)
    print(f"wrote {output} ({frames / args.sample_rate:.2f} s at {args.sample_rate} Hz)")
    return 0


# ---- presets ----------------------------------------------------------------------------------------
def cmd_presets(args) -> int:
    from lmdm_engine.io.presets import describe_schema, list_presets

    if args.action == "embed":
        from lmdm_engine.core.conditioning import write_prompt_store

        prompts = sorted({p.prompt for p in list_presets() if p.prompt})
        path = write_prompt_store(prompts)
        print(f"embedded {len(prompts)} preset prompt(s) into {path}")
        return 0
    if args.schema:
        print(describe_schema())
        return 0
    for p in list_presets():
        style = ", ".join(f"{k} {v:g}" for k, v in p.style.items()) or "-"
        print(f"{p.name:16s} delay {p.delay_seconds:.2f} s  strength {p.strength:.2f}  feedback {p.feedback:.2f}  "
              f"mix {p.mix:.2f}  steps {p.steps:2d}  {p.sampler:8s} style: {style}")
        extra = [f"mode {p.mode}"] if p.mode != "delay" else []
        extra += [f"prompt {p.prompt!r}"] if p.prompt else []
        extra += [f"guidance {p.guidance:g}"] if p.guidance != 1.0 else []
        if extra:
            print(f"{'':16s} {'  '.join(extra)}")
        print(f"{'':16s} {p.description}")
    return 0


# ---- corpus / train / eval --------------------------------------------------------------------------
def cmd_corpus(args) -> int:
    from lmdm_engine.train.corpus import write_corpus

    path = write_corpus(args.output, args.clips, seconds=args.seconds, seed=args.seed, jobs=args.jobs)
    print(f"corpus ready in {path}")
    return 0


def _ensure_data(args) -> Path:
    if args.data:
        return Path(args.data)
    from lmdm_engine.train.corpus import write_corpus

    return write_corpus(DEFAULT_CORPUS, args.corpus_clips, jobs=2)


# TrainOptions fields the train command passes on only when given (otherwise TrainOptions' defaults hold)
OPTIONAL_TRAIN_OPTIONS = ("threads", "ema_decay", "rollout_blocks", "max_sampling_steps", "sampler", "disc_lr",
                          "disc_layer", "disc_context_blocks", "contrastive_weight", "text_dropout", "style_dropout",
                          "jam_fraction")


def cmd_train(args) -> int:
    from lmdm_engine.core.config import ModelConfig
    from lmdm_engine.train.loop import TrainOptions, train

    data = _ensure_data(args)
    given = {name: getattr(args, name) for name in OPTIONAL_TRAIN_OPTIONS if getattr(args, name) is not None}
    options = TrainOptions(stage=args.stage, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           seed=args.seed, max_minutes=args.max_minutes, **given)
    conditioning = {}
    if args.text_encoder:
        from lmdm_engine.core.conditioning import TEXT_ENCODER_DIMS

        conditioning.update(text_encoder=args.text_encoder, text_dim=TEXT_ENCODER_DIMS[args.text_encoder])
    if args.accompaniment:
        conditioning["accompaniment"] = True
    config = ModelConfig.load(args.config) if args.config else (None if args.init else ModelConfig())
    if config is not None and conditioning:
        config = config.replace(**conditioning)
    model_dir = train(args.output, data, options, config=config, init=args.init, device=args.device,
                      conditioning=conditioning or None)
    print(f"model written to {model_dir}")
    return 0


def cmd_eval(args) -> int:
    import torch

    from lmdm_engine.train.data import load_clips
    from lmdm_engine.train.evaluate import evaluate, evaluation_table, write_result
    from lmdm_engine.core.model import Denoiser
    from lmdm_engine.runtime.interface import default_model_dir, load_runtime
    from lmdm_engine.runtime.torch import TorchRuntime

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

    p = sub.add_parser("process", help="run audio files, folders or globs through the generative delay and its chains",
                       description="Process files, folders (recursively) and glob patterns through the preset's pre "
                                   "chain, the generative delay and its post chain, streamed in constant memory. "
                                   "Outputs mirror the inputs' names and folders; each keeps its input's sample rate "
                                   "and channels (3 or more channels: each channel is processed as a mono track). "
                                   "Exit code: 0 all written or skipped, 1 a file failed, 2 bad request.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders, or quoted glob patterns")
    p.add_argument("-o", "--output", required=True,
                   help="output folder; or an output .wav/.flac file when INPUT is one file")
    p.add_argument("--preset", default=None, help="shipped preset name or .toml path (see `lmdm presets`)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a preset field, e.g. --set mix=0.8")
    p.add_argument("--pre", action="append", metavar="PLUGIN",
                   help="plugin before the model, replacing the preset's pre chain; repeat for several, e.g. "
                        "--pre 'HighpassFilter(cutoff_frequency_hz=80)' or --pre '/path/Plugin.vst3(mix=0.5)'")
    p.add_argument("--post", action="append", metavar="PLUGIN",
                   help="plugin after the model, replacing the preset's post chain, e.g. "
                        "--post 'Reverb(room_size=0.7)'")
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--runtime", default=DEFAULT_BACKEND, choices=BACKENDS, help=f"default {DEFAULT_BACKEND}")
    p.add_argument("--provider", default=None, help="ONNX Runtime execution provider, e.g. cpu or cuda")
    p.add_argument("--format", default=None, choices=["wav", "flac"],
                   help="output format (default: the -o file's suffix, else wav)")
    p.add_argument("--bit-depth", type=int, default=24, choices=[8, 16, 24, 32],
                   help="output bit depth: integer, or 32 for 32-bit float (wav only); default 24")
    p.add_argument("--tail", type=_non_negative_float, default=0.0, metavar="SECONDS",
                   help="add this much silence after each input so the echoes ring out")
    p.add_argument("--jobs", type=_positive_int, default=1, help="files processed at once, in worker processes")
    p.add_argument("--skip-existing", action="store_true", help="leave outputs that exist alone (resume a run)")
    p.add_argument("--dry-run", action="store_true", help="list what would be done, and do nothing")
    p.add_argument("--report", default=None, metavar="JSON", help="write a JSON report of the run here")
    p.add_argument("--buffer", type=_positive_int, default=4096,
                   help="frames read and processed at a time (the output does not depend on it)")
    p.add_argument("--spectrogram", default=None, metavar="PNG",
                   help="also draw input against output (the start of each file): a .png for one file, "
                        "else a folder of PNGs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--prompt", default=None, help="text prompt for the echoes (text models; = --set prompt=...)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale, 1 (off) to 8 (= --set guidance=...)")
    p.add_argument("--mode", default=None, choices=["delay", "jam"],
                   help="jam: the model plays a part accompanying the input (jamming models; = --set mode=...)")
    p.set_defaults(func=cmd_process)

    p = sub.add_parser("generate", help="generate music from a text prompt (and a sketch to follow) into a file",
                       description="Generate a piece block by block with the KV cache (constant memory, any "
                                   "length), from a prompt and/or style tags, optionally following a sketch "
                                   "(SDEdit: --strength 0 keeps it, 1 ignores it). Exit code: 0 written, 2 bad "
                                   "request.")
    p.add_argument("--prompt", default=None, help="text prompt (text models), e.g. 'bright glassy bells'")
    p.add_argument("--then", nargs=2, action="append", metavar=("SECONDS", "TEXT"),
                   help="switch to prompt TEXT at SECONDS (cross-faded over two blocks); repeat for more")
    p.add_argument("--seconds", type=_non_negative_float, default=None, help="length (ignored with --sketch)")
    p.add_argument("-o", "--output", required=True, help="output .wav or .flac file (mono, 24-bit)")
    p.add_argument("--sketch", default=None, metavar="AUDIO", help="audio file whose structure to follow")
    p.add_argument("--strength", type=float, default=0.6,
                   help="with --sketch: how far each block is re-generated, 0 (the sketch) to 1 (free); default 0.6")
    p.add_argument("--guidance", type=float, default=4.0,
                   help="classifier-free guidance scale (1 = off; default 4: without it prompts are barely heard, "
                        "docs/PROMPTS.md)")
    p.add_argument("--steps", type=_positive_int, default=4, help="denoising steps per block (default 4)")
    p.add_argument("--sampler", default="pingpong", choices=["euler", "pingpong"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", action="append", metavar="TAG=WEIGHT", help="style tag weight, e.g. --style bell=0.8")
    p.add_argument("--sample-rate", type=_positive_int, default=44100,
                   help="output sample rate (default 44100; resampled from the model's rate)")
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--runtime", default=DEFAULT_BACKEND, choices=BACKENDS, help=f"default {DEFAULT_BACKEND}")
    p.add_argument("--provider", default=None, help="ONNX Runtime execution provider, e.g. cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("presets", help="list the shipped presets; `lmdm presets embed` rebuilds their prompt store")
    p.add_argument("action", nargs="?", choices=["embed"],
                   help="embed: embed every shipped preset's prompt into presets/prompts.safetensors (needs the "
                        "text extra)")
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

    p = sub.add_parser("train", help="train a stage: outpaint (bidirectional baseline), lmdm (block-causal) or "
                                     "arc-forcing (adversarial post-training on the model's own rollouts)")
    p.add_argument("--stage", required=True, choices=["outpaint", "lmdm", "arc-forcing"])
    p.add_argument("-o", "--output", required=True, help="run folder (resumes if it holds training state)")
    p.add_argument("--init", default=None,
                   help="model folder to start from (lmdm: the outpaint model; arc-forcing: the lmdm model)")
    p.add_argument("--config", default=None, help="folder with a config.json for a fresh model")
    data_args(p)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4,
                   help="peak learning rate (arc-forcing: the generator's; scripts/train_arc_forcing.sh uses 1e-5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop and save after this long (0: no limit)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="decay of the saved EMA weights (default: lmdm_engine.train.TrainOptions)")
    cond = p.add_argument_group("conditioning (added to --init's model, or set on a fresh one)")
    cond.add_argument("--text-encoder", default=None, choices=["all-MiniLM-L6-v2"],
                      help="condition on text prompts embedded by this encoder (needs the text extra)")
    cond.add_argument("--accompaniment", action="store_true",
                      help="also learn jamming: generate one stem of a two-part clip given the mix so far")
    cond.add_argument("--text-dropout", type=float, default=None,
                      help="share of examples trained without their caption (classifier-free guidance)")
    cond.add_argument("--style-dropout", type=float, default=None, help="share of examples trained without tags")
    cond.add_argument("--jam-fraction", type=float, default=None,
                      help="share of training sequences that are jamming examples (with --accompaniment)")
    arc = p.add_argument_group("arc-forcing (defaults: lmdm_engine.train.TrainOptions)")
    arc.add_argument("--rollout-blocks", type=int, default=None,
                     help="blocks the model streams on its own outputs per training step")
    arc.add_argument("--max-sampling-steps", type=int, default=None,
                     help="sampling steps per rollout block are drawn from 1..this")
    arc.add_argument("--sampler", default=None, choices=["euler", "pingpong"], help="rollout sampler")
    arc.add_argument("--disc-lr", type=float, default=None, help="discriminator learning rate")
    arc.add_argument("--disc-layer", type=int, default=None,
                     help="DiT blocks the discriminator's backbone keeps (0: half the depth)")
    arc.add_argument("--disc-context-blocks", type=int, default=None,
                     help="clean blocks of the stream the discriminator sees before each block it scores")
    arc.add_argument("--contrastive-weight", type=float, default=None,
                     help="weight of the mismatched-style contrastive term in the discriminator loss")
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

    from lmdm_bridge.cli import add_serve_parser
    from lmdm_export.cli import add_export_parser

    add_serve_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="lmdm: %(message)s")  # e.g. the runtime's provider line
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
