"""The ``lmdm export`` subcommand (an entry point of the ``lmdm.commands`` group, pyproject.toml)."""

from __future__ import annotations

import time
from pathlib import Path


def cmd_export(args) -> int:
    from lmdm_engine.core.codec import Codec
    from lmdm_engine.core.config import ConfigError
    from lmdm_engine.core.model import Denoiser

    from .exporter import default_output, export_model
    from .verify import format_checks, verify_export

    source = Path(args.checkpoint)
    try:
        model = Denoiser.from_pretrained(source)
        codec = Codec.load(source, model.config)
    except (ConfigError, FileNotFoundError) as e:
        raise SystemExit(f"lmdm export: {e}")
    out = Path(args.output) if args.output else default_output(source)
    start = time.time()
    manifest = export_model(model, codec, out, source=source.name)
    size = sum(f.stat().st_size for f in out.glob("*.onnx")) / 2**20
    print(f"exported {source} -> {out} ({size:.1f} MB of ONNX, {time.time() - start:.1f} s); manifest {manifest}")
    if not args.verify:
        return 0
    checks = verify_export(model, out, blocks=args.blocks)
    print(format_checks(checks))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        print(f"verification FAILED: {', '.join(failed)}")
        return 1
    print("verification passed")
    return 0


def add_export_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a model to ONNX (denoiser step with explicit KV cache, codec, manifest)")
    p.add_argument("checkpoint", help="model folder (config.json + model.safetensors)")
    p.add_argument("-o", "--output", default=None, help="output folder (default: CHECKPOINT/onnx)")
    p.add_argument("--verify", action="store_true", help="compare ONNX Runtime with torch (step 1e-4, session 1e-3)")
    p.add_argument("--blocks", type=int, default=20, help="blocks in the verification session")
    p.set_defaults(func=cmd_export)
