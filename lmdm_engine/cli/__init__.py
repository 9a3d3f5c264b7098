"""The ``lmdm`` command. Its subcommands are the entry points of the ``lmdm.commands`` group (pyproject.toml): each
names a function that adds its subparser. The engine registers its own (effect.py, train.py), and the bridge
(``serve``) and the exporter (``export``) theirs, so the engine imports neither of them."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

COMMANDS = "lmdm.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmdm", description="Live Music Diffusion Models: the generative delay")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for entry in entry_points(group=COMMANDS):
        entry.load()(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="lmdm: %(message)s")  # e.g. the runtime's provider line
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
