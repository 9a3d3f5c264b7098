"""``lmdm process``, ``lmdm generate`` and ``lmdm presets``: the effect on files, generation, and the presets."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .options import add_runtime_options, check_model_folder, non_negative_float, positive_int, runtime_from_args


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
def _usage_error(message: str) -> int:
    print(f"lmdm process: {message}", file=sys.stderr)
    return 2


def _ray_address(text: str) -> str:
    """--ray's address, checked as it is parsed: ``lmdm process --ray stems/ -o out`` reads stems/ as the address."""
    import argparse

    from lmdm_engine.io.ray_batch import RayUnavailable, check_address

    try:
        return check_address(text)
    except RayUnavailable as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_process(args) -> int:
    """Exit code 0: every output written (or skipped, existing); 1: a file failed (or, with --dry-run, cannot be
    used); 2: nothing run (bad request); 128 + signal number: interrupted (partial files removed; rerun with
    --skip-existing to go on)."""
    import signal
    from contextlib import closing

    from lmdm_engine.core.conditioning import TextExtraMissing
    from lmdm_engine.io.batch import (BatchSettings, Interrupted, OutputFormat, PlanError, batch_report,
                                      discard_stale_partials, plan_jobs, plan_listing, raise_interrupted, run_batch,
                                      skipped_result, summary_table, write_report)
    from lmdm_engine.io.chains import ChainError, parse_plugin_text
    from lmdm_engine.io.effect import GenerativeDelay
    from lmdm_engine.io.presets import PresetError, plugin_files, resolve_preset, shipped_presets

    if args.ray is not None:  # the plain runner never imports Ray
        from lmdm_engine.io import ray_batch

        try:
            ray_batch.require_ray()
        except ray_batch.RayUnavailable as e:
            return _usage_error(str(e))
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
        preset = resolve_preset(args.preset, overrides)
        files = plugin_files(preset)
        if files and (args.preset not in (None, *shipped_presets()) or args.pre or args.post):
            # plugin files run their own code in this process: say which, before loading any
            print(f"lmdm process: preset {preset.name!r} loads plugin files: "
                  + ", ".join(f"{where} {os.path.abspath(file)}" for where, file in files), file=sys.stderr)
        GenerativeDelay(preset)  # builds the chains (loading any VST3) to report a bad plugin now; no model yet
        check_model_folder(args)
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
    ray_run, jobs = None, args.jobs or 1
    if args.ray is not None and plan.jobs:
        try:
            ray_run = ray_batch.RayRun(settings, args.ray, args.jobs, show_progress=not args.quiet)  # Ray's start-up
        except ray_batch.RayUnavailable as e:
            return _usage_error(str(e))
        jobs = ray_run.actors
    interrupted = None
    start = time.perf_counter()
    previous_handler = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        run = ray_run.run(plan.jobs) if ray_run else run_batch(plan.jobs, settings, jobs, show_progress=not args.quiet)
        with closing(run) as finished:
            results.extend(finished)
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = e
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        wall = time.perf_counter() - start
        if ray_run:
            ray_run.close()  # after the clock: stopping Ray is not the run's time
    results.sort(key=lambda r: r.source)
    print(summary_table(results, wall))
    report_failed = False
    if args.report:
        report = batch_report(results, settings, jobs, wall, interrupted=interrupted is not None,
                              runner=ray_run.report() if ray_run else None)
        try:
            print(f"report: {write_report(args.report, report)}")
        except OSError as e:  # a full or read-only disk: nothing of the report is left behind
            print(f"lmdm process: cannot write the report {args.report}: {e.strerror or e}", file=sys.stderr)
            report_failed = True
    if interrupted is not None:
        print("interrupted: partial files removed; run the same command with --skip-existing to go on",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(interrupted, Interrupted) else signal.SIGINT)
    return 1 if report_failed or any(r.status == "failed" for r in results) else 0


def _check_conditioning(preset, model: str | None, backend: str) -> None:
    """Raise now (ValueError, TextExtraMissing) when the model cannot play the preset's prompt or mode, rather than
    in every file's worker."""
    from lmdm_engine.core.conditioning import embed_prompt
    from lmdm_engine.core.config import ModelConfig
    from lmdm_engine.runtime.interface import default_model_dir
    from lmdm_engine.stream.params import unplayable_reason

    if not preset.prompt and preset.mode != "jam":
        return
    folder = Path(model) if model is not None else default_model_dir()
    if backend == "onnx":
        from lmdm_engine.runtime.onnx import read_manifest

        config = read_manifest(folder, check_files=False)["config"]
    else:
        config = ModelConfig.load(folder)
    reason = unplayable_reason(preset.params, config)
    if reason:
        raise ValueError(f"preset {preset.name!r} on the model in {folder}: {reason}")
    if preset.prompt:
        embed_prompt(preset.prompt, config)


# ---- generate ---------------------------------------------------------------------------------------
def _generate_error(message: str) -> int:
    print(f"lmdm generate: {message}", file=sys.stderr)
    return 2


def _read_sketch(path: str, sample_rate: int):
    """The sketch file as mono float32 at the model rate (channels averaged), and its duration in seconds."""
    import pedalboard.io

    from lmdm_engine.core.resample import resample

    try:
        with pedalboard.io.AudioFile(path) as f:
            seconds, rate = f.frames / f.samplerate, int(round(f.samplerate))
            audio = f.read(f.frames)
    except Exception as e:  # pedalboard raises several types for unreadable files
        raise ValueError(f"--sketch {path}: cannot read it as audio ({e})") from None
    return resample(audio.mean(0), rate, sample_rate), seconds


def _write_stream(path: Path, blocks, source_rate: int, target_rate: int, frames: int) -> None:
    """Write mono model-rate blocks to ``path`` at ``target_rate`` (exactly ``frames`` frames), atomically."""
    import numpy as np
    import soundfile as sf

    from lmdm_engine.core.files import atomic_write
    from lmdm_engine.core.resample import Resampler

    fmt = {".wav": "WAV", ".flac": "FLAC"}[path.suffix.lower()]
    resampler = Resampler(source_rate, target_rate)
    written = 0
    # opened by Python first: libsndfile would report a read-only folder as "System error."
    with atomic_write(path) as partial, open(partial, "wb") as raw, \
            sf.SoundFile(raw, "w", target_rate, 1, subtype="PCM_24", format=fmt) as f:
        def write(audio):
            nonlocal written
            audio = audio[: frames - written]
            f.write(audio)
            written += audio.shape[0]

        for block in blocks:
            write(resampler.process(block[None])[0])
        write(resampler.flush()[0])
        write(np.zeros(frames - written, np.float32))


def cmd_generate(args) -> int:
    """Exit code 0: written; 1: generation failed; 2: bad request (nothing written)."""
    from lmdm_engine.core.conditioning import TextExtraMissing
    from lmdm_engine.stream.generate import iter_generate
    from lmdm_engine.stream.params import PARAM_SPECS

    output = Path(args.output)
    if output.suffix.lower() not in (".wav", ".flac"):
        return _generate_error(f"-o {output}: write a .wav or .flac file")
    if args.sketch is None and args.seconds is None:
        return _generate_error("give --seconds (or a --sketch to follow)")
    if args.sketch is None and not args.seconds > 0:
        return _generate_error(f"--seconds {args.seconds:g}: give a length above 0 s")
    if args.sketch is not None and output.resolve() == Path(args.sketch).resolve():
        return _generate_error(f"-o {output} is the sketch: refusing to overwrite it; write another file")
    checked = ["guidance", "steps"] + (["strength"] if args.sketch is not None else [])  # strength only shapes a sketch
    for name in checked:
        value, spec = getattr(args, name), PARAM_SPECS[name]
        if not spec.low <= value <= spec.high:
            return _generate_error(f"--{name} {value:g} is out of range [{spec.low:g}, {spec.high:g}]")
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
    try:
        runtime = runtime_from_args(args)
    except ValueError as e:
        return _generate_error(str(e))
    rate = runtime.config.sample_rate
    try:
        sketch, seconds = _read_sketch(args.sketch, rate) if args.sketch else (None, args.seconds)
        blocks = iter_generate(runtime, seconds, args.prompt, style=style, guidance=args.guidance, steps=args.steps,
                               sampler=args.sampler, seed=args.seed, sketch=sketch, strength=args.strength,
                               prompt_changes=changes, progress=not args.quiet)
    except (ValueError, TextExtraMissing) as e:
        return _generate_error(str(e))
    frames = int(round(seconds * args.sample_rate))
    if frames == 0:
        return _generate_error(f"--sketch {args.sketch}: it holds no audio")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        _write_stream(output, blocks, rate, args.sample_rate, frames)
    except OSError as e:  # a read-only or full disk (nothing of the file is left behind)
        print(f"lmdm generate: cannot write -o {output}: {e.strerror or e}", file=sys.stderr)
        return 1
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


# ---- the subcommands (entry points of the lmdm.commands group) ---------------------------------------
def add_process_parser(subparsers) -> None:
    """``lmdm process``."""
    p = subparsers.add_parser("process",
                              help="run audio files, folders or globs through the generative delay and its chains",
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
    add_runtime_options(p)
    p.add_argument("--format", default=None, choices=["wav", "flac"],
                   help="output format (default: the -o file's suffix, else wav)")
    p.add_argument("--bit-depth", type=int, default=24, choices=[8, 16, 24, 32],
                   help="output bit depth: integer, or 32 for 32-bit float (wav only); default 24")
    p.add_argument("--tail", type=non_negative_float, default=0.0, metavar="SECONDS",
                   help="add this much silence after each input so the echoes ring out")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="files processed at once: worker processes (default 1), or with --ray actors (default: one "
                        "per CPU of the cluster)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS", type=_ray_address,
                   help="process on Ray actors: no ADDRESS (or 'local') starts a Ray instance on this machine; 'auto' "
                        "or ray://HOST:PORT joins a cluster, whose nodes must see the inputs and outputs at the same "
                        'paths (needs the ray extra: pip install "lmdm[ray]")')
    p.add_argument("--skip-existing", action="store_true", help="leave outputs that exist alone (resume a run)")
    p.add_argument("--dry-run", action="store_true", help="list what would be done, and do nothing")
    p.add_argument("--report", default=None, metavar="JSON", help="write a JSON report of the run here")
    p.add_argument("--buffer", type=positive_int, default=4096,
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


def add_generate_parser(subparsers) -> None:
    """``lmdm generate``."""
    p = subparsers.add_parser("generate", help="generate music from a text prompt (and a sketch to follow) into a file",
                       description="Generate a piece block by block with the KV cache (constant memory, any "
                                   "length), from a prompt and/or style tags, optionally following a sketch "
                                   "(SDEdit: --strength 0 keeps it, 1 ignores it). Exit code: 0 written, 2 bad "
                                   "request.")
    p.add_argument("--prompt", default=None, help="text prompt (text models), e.g. 'bright glassy bells'")
    p.add_argument("--then", nargs=2, action="append", metavar=("SECONDS", "TEXT"),
                   help="switch to prompt TEXT at SECONDS (cross-faded over two blocks); repeat for more")
    p.add_argument("--seconds", type=non_negative_float, default=None, help="length (ignored with --sketch)")
    p.add_argument("-o", "--output", required=True, help="output .wav or .flac file (mono, 24-bit)")
    p.add_argument("--sketch", default=None, metavar="AUDIO", help="audio file whose structure to follow")
    p.add_argument("--strength", type=float, default=0.6,
                   help="with --sketch: how far each block is re-generated, 0 (the sketch) to 1 (free); default 0.6")
    p.add_argument("--guidance", type=float, default=4.0,
                   help="classifier-free guidance scale (1 = off; default 4: without it prompts are barely heard, "
                        "docs/PROMPTS.md)")
    p.add_argument("--steps", type=positive_int, default=4, help="denoising steps per block (default 4)")
    p.add_argument("--sampler", default="pingpong", choices=["euler", "pingpong"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", action="append", metavar="TAG=WEIGHT", help="style tag weight, e.g. --style bell=0.8")
    p.add_argument("--sample-rate", type=positive_int, default=44100,
                   help="output sample rate (default 44100; resampled from the model's rate)")
    add_runtime_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)


def add_presets_parser(subparsers) -> None:
    """``lmdm presets``."""
    p = subparsers.add_parser("presets",
                              help="list the shipped presets; `lmdm presets embed` rebuilds their prompt store")
    p.add_argument("action", nargs="?", choices=["embed"],
                   help="embed: embed every shipped preset's prompt into presets/prompts.safetensors (needs the "
                        "text extra)")
    p.add_argument("--schema", action="store_true", help="print the preset file schema instead")
    p.set_defaults(func=cmd_presets)
