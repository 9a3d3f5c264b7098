"""Command-line options more than one command takes (the engine's, the bridge's ``serve``), declared once."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmdm_engine.runtime.interface import BACKENDS, DEFAULT_BACKEND, Runtime, load_runtime


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text}")
    return value


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--runtime`` and ``--provider``: which model runs, and on what."""
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--runtime", default=DEFAULT_BACKEND, choices=BACKENDS, help=f"default {DEFAULT_BACKEND}")
    parser.add_argument("--provider", default=None, help="ONNX Runtime execution provider, e.g. cpu or cuda")


def check_model_folder(args) -> None:
    """ValueError when ``--model`` names no folder."""
    if args.model is not None and not Path(args.model).is_dir():
        raise ValueError(f"--model {args.model}: no such model folder")


def runtime_from_args(args) -> Runtime:
    """The runtime the runtime options ask for."""
    check_model_folder(args)
    return load_runtime(args.model, backend=args.runtime, provider=args.provider)
