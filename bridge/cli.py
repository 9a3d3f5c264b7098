"""``lmdm serve``: the OSC bridge on loopback (or, with --allow-remote and a token, on the network).

``add_serve_parser(subparsers)`` registers the subcommand on an argparse subparsers object; ``python -m
lmdm_bridge serve ...`` runs it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import os

TOKEN_ENV = "LMDM_BRIDGE_TOKEN"
M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does). By default every worker thread gets its own arena, and
    the audio blocks they allocate and free leave each arena fragmented: in an 8-minute soak of 4 sessions the
    server grew 28 MiB with the default and 13 MiB with two arenas, from a 70 MiB lower start
    (benchmarks/bench_bridge.py soak). Does nothing where the C library is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


def freeze_startup_heap() -> None:
    """Take what was allocated at start (the model, the runtime, the imported modules) out of the garbage
    collector's scans (``gc.freeze``): a full collection of the server's heap takes 2 to 4 ms, and would hold up
    every session each time it ran. What the server allocates while it runs is collected as usual."""
    gc.collect()
    gc.freeze()


# quotas and timeouts: (option, type, help); the BridgeSettings field is the option's name with underscores (and _s
# for seconds)
_QUOTAS = (
    ("max-stranger-rate", float, "messages per second of all peers without a session together"),
    ("max-peer-sessions", int, "sessions per peer (a TCP connection, or a UDP source address)"),
    ("max-peer-bytes", int, "bytes of audio in flight per peer, from a block's first chunk until its reply leaves"),
    ("max-bytes", int, "bytes of audio in flight, all peers together"),
    ("max-peer-queued-blocks", int, "blocks waiting per peer, all its sessions together"),
    ("max-block-cost", int, "model passes one block may ask for: steps x passes (2 with guidance) x channels x "
                            "model frames"),
    ("max-peer-load", int, "load per peer: steps x passes x channels summed over its sessions"),
    ("max-load", int, "load of all sessions together"),
    ("tcp-handshake-timeout", float, "seconds a TCP connection has to send its first whole packet"),
    ("tcp-idle-timeout", float, "seconds a TCP connection without sessions may stay silent"),
)


def _setting(option: str) -> str:
    name = option.replace("-", "_")
    return name + "_s" if name.endswith("timeout") else name


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    from lmdm_bridge.server.dispatch import BridgeSettings
    from lmdm_engine.cli.options import add_runtime_options
    from lmdm_engine.io.presets import DEFAULT_PRESET

    d = BridgeSettings()
    p = subparsers.add_parser(
        "serve", help="run the OSC bridge: DAWs and scripts send audio blocks and get processed blocks back",
        description="Run the OSC bridge (protocol: bridge/PROTOCOL.md). Prints one ready line with the ports and the "
                    "model, and shuts down cleanly on SIGINT or SIGTERM, answering what is in flight.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; anything but "
                                                        "loopback needs --allow-remote)")
    p.add_argument("--port", type=int, default=9000, help="TCP and UDP port (default 9000; 0 picks free ports)")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"preset for sessions that name none "
                                                           f"(default {DEFAULT_PRESET})")
    add_runtime_options(p)
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host; requires --token (or $%s)" % TOKEN_ENV)
    p.add_argument("--token", default=None, help=f"shared token every open must carry (default ${TOKEN_ENV})")
    p.add_argument("--max-sessions", type=int, default=d.max_sessions,
                   help=f"sessions served at once (default {d.max_sessions})")
    p.add_argument("--max-packet-bytes", type=int, default=d.max_packet_bytes,
                   help=f"largest OSC packet taken (default {d.max_packet_bytes})")
    p.add_argument("--max-rate", type=float, default=d.max_rate,
                   help=f"messages per second per peer, those inside bundles included (default {d.max_rate:g})")
    p.add_argument("--max-queued-blocks", type=int, default=d.max_queued_blocks,
                   help=f"blocks waiting per session before the oldest are answered late (default "
                        f"{d.max_queued_blocks})")
    p.add_argument("--reassembly-ms", type=float, default=d.reassembly_ms,
                   help=f"how long missing UDP chunks are waited for (default {d.reassembly_ms:g})")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                   help=f"seconds without messages before a session is closed (default {d.idle_timeout_s:g})")
    for option, kind, what in _QUOTAS:
        default = getattr(d, _setting(option))
        p.add_argument(f"--{option}", type=kind, default=default, dest=_setting(option),
                       help=f"{what} (default {default:,})")
    p.add_argument("--text", action="store_true",
                   help="load the text encoder at start-up so that hosts may send free-text prompts (needs the text "
                        "extra; without it only the presets' own prompts play)")
    p.add_argument("--no-batching", action="store_true", help="run every model call on its own, never in a batch")
    p.add_argument("--workers", type=int, default=None,
                   help="model calls (batched or not) run at once (default: one per CPU core; 1 suits a single GPU)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args) -> int:
    from lmdm_bridge.server.dispatch import BridgeSettings
    from lmdm_bridge.server.transports import BridgeServer, is_loopback, serve
    from lmdm_engine.cli.options import runtime_from_args
    from lmdm_engine.io.presets import PresetError, plugin_files, resolve_preset
    from lmdm_engine.runtime.interface import default_model_dir

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limit_malloc_arenas()  # before any worker thread allocates
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not args.allow_remote:
        raise SystemExit(f"refusing to listen on {args.host}: it is not a loopback address. Add --allow-remote "
                         f"and a --token (or ${TOKEN_ENV}) that every open must carry.")
    if args.allow_remote and not token:
        raise SystemExit(f"--allow-remote needs a shared token: --token or ${TOKEN_ENV}")
    try:
        preset = resolve_preset(args.preset)
    except PresetError as e:
        raise SystemExit(f"--preset: {e}")
    files = plugin_files(preset)
    if files:
        raise SystemExit(f"--preset {args.preset}: it loads plugin files ({', '.join(f'{w}: {f}' for w, f in files)}); "
                         "the bridge runs built-in plugins only (use lmdm process for this preset)")
    try:
        settings = BridgeSettings(
            preset=args.preset, max_sessions=args.max_sessions, max_packet_bytes=args.max_packet_bytes,
            max_rate=args.max_rate, max_queued_blocks=args.max_queued_blocks, reassembly_ms=args.reassembly_ms,
            idle_timeout_s=args.idle_timeout, token=token,
            **{_setting(option): getattr(args, _setting(option)) for option, _, _ in _QUOTAS})
    except ValueError as e:
        raise SystemExit(str(e))
    if args.workers is not None and args.workers < 1:
        raise SystemExit(f"--workers = {args.workers} must be at least 1")
    try:
        runtime = runtime_from_args(args)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"cannot load the model: {e}")
    if args.text:
        from lmdm_engine.core.conditioning import load_text_encoder

        if not runtime.config.text_dim:
            raise SystemExit("--text: this model takes no text prompts (its config has text_dim 0)")
        try:
            load_text_encoder(runtime.config.text_encoder)
        except ValueError as e:  # TextExtraMissing: the text extra is not installed
            raise SystemExit(f"--text: {e}")
    server = BridgeServer(runtime, settings, args.host, args.port, batching=not args.no_batching,
                          workers=args.workers, model=args.model or default_model_dir())
    freeze_startup_heap()
    try:
        asyncio.run(serve(server))
    except OSError as e:
        raise SystemExit(f"cannot listen on {args.host}:{args.port}: {e}")
    return 0
