"""Render the short examples in docs/examples: the shipped riff through a few presets, and free continuations of
held-out corpus clips, each with a spectrogram PNG.

    python scripts/render_examples.py [--model DIR] [--data data/corpus] [--out docs/examples]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from lmdm_engine.core.codec import decode_clip
from lmdm_engine.io.plots import save_spectrograms
from lmdm_engine.io.presets import load_preset
from lmdm_engine.runtime.interface import load_runtime
from lmdm_engine.stream.session import Session
from lmdm_engine.train.data import load_clips
from lmdm_engine.train.evaluate import rollout

PRESETS = ("glass_bells", "dark_pad_wash", "dream_keys", "tape_echo")


def render_presets(runtime, source: Path, out: Path) -> None:
    audio, sr = sf.read(source, dtype="float32", always_2d=True)
    for name in PRESETS:
        session = Session(runtime, sr, audio.shape[1], load_preset(name).params)
        wet = np.concatenate([session.process(audio[i:i + 512].T) for i in range(0, audio.shape[0], 512)], 1)
        sf.write(out / f"riff_{name}.flac", wet.T, sr)
        save_spectrograms(out / f"riff_{name}.png", [("Input", audio.mean(1)), (f"Output ({name})", wet.mean(0))], sr)
        print(f"wrote {out / f'riff_{name}.flac'}")


def render_continuations(runtime, data: Path, out: Path, count: int, blocks: int) -> None:
    cfg = runtime.config
    codec = runtime.codec
    clips = load_clips(data, codec, "heldout")
    picks = np.linspace(0, len(clips) - 1, count).astype(int)
    lat = clips.latents[picks].astype(np.float32)
    c = cfg.context_frames
    generated = rollout(runtime, lat[:, :c], blocks, cfg.block_frames, 2, "pingpong", clips.conditioning(cfg, picks),
                        seed=0)
    for i, idx in enumerate(picks):
        real = decode_clip(codec, lat[i])
        fake = decode_clip(codec, np.concatenate([lat[i, :c], generated[i]]))
        sf.write(out / f"continuation_{i}.flac", fake, cfg.sample_rate)
        save_spectrograms(out / f"continuation_{i}.png",
                          [(f"Held-out clip {clips.names[idx]} (real)", real),
                           (f"First {c * cfg.hop / cfg.sample_rate:.1f} s as context, then generated", fake)],
                          cfg.sample_rate)
        print(f"wrote {out / f'continuation_{i}.flac'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default="data/corpus")
    parser.add_argument("--source", default="examples/riff.wav")
    parser.add_argument("--out", default="docs/examples")
    parser.add_argument("--continuations", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runtime = load_runtime(args.model)
    render_presets(runtime, Path(args.source), out)
    render_continuations(runtime, Path(args.data), out, args.continuations, args.blocks)


if __name__ == "__main__":
    main()
