"""``python -m lmdm_bridge serve ...``: the bridge's command on its own (``lmdm serve`` runs the same)."""

import argparse

from .cli import add_serve_parser


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m lmdm_bridge", description="The LMDM OSC bridge.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(subparsers)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
