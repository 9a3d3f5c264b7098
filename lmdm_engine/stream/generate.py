"""Text-to-music and sketch-to-music: a piece generated block by block with the KV cache.

    audio = generate(runtime, 30.0, "a tight drum groove", guidance=2.5)
    audio = generate(runtime, None, "bright glassy bells", sketch=hummed, strength=0.5)  # SDEdit on a sketch
    for block in iter_generate(runtime, 600.0, "warm pad", prompt_changes=[(300.0, "dark drone")]):
        ...                                                                              # constant memory

Each block is generated against the cache of the piece's previous blocks and then appended to it (the context is
the output itself), so memory and per-block time stay flat however long the piece. Without a sketch a block
starts from noise; with one it starts from the sketch's latents of the same time span noised to ``strength``
(SDEdit: low strength keeps the sketch's structure, high strength is free), so the output is time-aligned with
the sketch. Output is mono float32 at the model rate, with the codec latency trimmed. A prompt change
cross-fades the conditioning over PROMPT_CROSSFADE_BLOCKS blocks, as in the Session.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from lmdm_engine.core.audio import channels_first
from lmdm_engine.core.codec import StreamingCodec
from lmdm_engine.core.conditioning import ConditioningFade, prompt_conditioning
from lmdm_engine.core.sampling import get_sampler, time_schedule
from lmdm_engine.runtime.interface import Runtime
from lmdm_engine.runtime.latent_stream import LatentStream


def _vector(runtime: Runtime, prompt: str | None, style: dict | None) -> np.ndarray:
    """The conditioning vector [1, cond_dim] of a prompt (None or "": no prompt) and style tags."""
    return prompt_conditioning(runtime.config, style, prompt or "")[None]


def iter_generate(runtime: Runtime, seconds: float | None, prompt: str | None = None, *, style: dict | None = None,
                  guidance: float = 1.0, steps: int = 4, sampler: str = "pingpong", seed: int = 0,
                  sketch: np.ndarray | None = None, strength: float = 0.6,
                  prompt_changes: Sequence[tuple[float, str]] = (), progress: bool = False) -> Iterator[np.ndarray]:
    """:func:`generate` as a stream of mono float32 blocks (model rate) that add up to its output. Arguments are
    checked and prompts embedded here, before the first block (ValueError, TextExtraMissing)."""
    cfg = runtime.config
    if sketch is not None:
        sketch = channels_first(sketch, 1, "sketch")[0].astype(np.float32, copy=False)
        if not np.isfinite(sketch).all():
            raise ValueError("sketch holds NaN or Inf samples")
        total = sketch.shape[0]
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
    else:
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a number >= 0 (or give a sketch), got {seconds}")
        total = int(round(seconds * cfg.sample_rate))
    if not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite number, got {guidance}")
    get_sampler(sampler)
    time_schedule(steps)
    block = cfg.block_frames * cfg.hop
    first = _vector(runtime, prompt, style)
    changes = {}  # block index -> vector: a change applies from the first block that starts at or after its time
    last = -math.inf
    for at, text in prompt_changes:
        if not (math.isfinite(at) and last < at < total / cfg.sample_rate):
            raise ValueError(f"prompt change at {at} s: times must increase and lie inside the piece "
                             f"(0 to {total / cfg.sample_rate:.3f} s)")
        last = at
        changes[math.ceil(round(at * cfg.sample_rate) / block)] = _vector(runtime, text, style)
    return _stream(runtime, total, first, changes, guidance, steps, sampler, seed, sketch,
                   strength if sketch is not None else 1.0, progress)


def _stream(runtime, total, first, changes, guidance, steps, sampler, seed, sketch, strength, progress):
    cfg = runtime.config
    block = cfg.block_frames * cfg.hop
    scale = runtime.latent_scale[None, None, :]
    blocks = math.ceil((total + cfg.codec_latency) / block) if total else 0  # the codec delays by its latency
    stream = LatentStream(runtime, 1)
    codec = StreamingCodec(runtime.codec, 1)
    sketch_codec = StreamingCodec(runtime.codec, 1) if sketch is not None else None
    fade = ConditioningFade(cfg, first)
    rng = np.random.default_rng(seed)
    noise = lambda x: rng.standard_normal(x.shape, np.float32)
    start = np.zeros((1, cfg.block_frames, cfg.latent_dim), np.float32)
    # the loudness each block is re-levelled to (LatentStream.step): its sketch block's (strength < 1), else the
    # block before it's, the first block's the codec's typical level (alone the model starts near the corpus mean
    # spectrum, 26 dB quieter than real clips)
    typical = runtime.codec.typical_level
    level = None if typical is None else np.array([typical])
    drop, left = cfg.codec_latency, total
    for k in tqdm(range(blocks), desc="generating", unit="block", disable=not progress):
        if k in changes:
            fade.set(changes[k])
        if sketch_codec is not None:
            piece = np.zeros((1, block), np.float32)
            part = sketch[k * block:(k + 1) * block]
            piece[0, :part.shape[0]] = part
            start = sketch_codec.encode(piece) / scale
            if strength < 1.0:  # strength 1 ignores the sketch, its loudness too
                level = stream.level(start)
        latents = np.asarray(stream.step(start, fade.next(), noise, strength=strength, steps=steps, sampler=sampler,
                                         guidance=guidance, level=level), np.float32)
        if k + 1 < blocks:
            stream.append(latents)
            level = stream.level(latents)
        audio = codec.decode(latents * scale)[0]
        cut = min(drop, audio.shape[0])
        drop -= cut
        audio = audio[cut:cut + left]
        left -= audio.shape[0]
        if audio.shape[0]:
            yield audio


def generate(runtime: Runtime, seconds: float | None, prompt: str | None = None, *, style: dict | None = None,
             guidance: float = 1.0, steps: int = 4, sampler: str = "pingpong", seed: int = 0,
             sketch: np.ndarray | None = None, strength: float = 0.6,
             prompt_changes: Sequence[tuple[float, str]] = (), progress: bool = False) -> np.ndarray:
    """Generate ``seconds`` of music (mono float32 at ``runtime.config.sample_rate``, exactly round(seconds * rate)
    samples) from a prompt and/or style tags, streamed block by block with the KV cache.

    ``guidance``: classifier-free guidance scale (1 = off). ``sketch``: mono float32 audio at the model rate that
    each block starts from, noised to ``strength`` (0 = the sketch's reconstruction, 1 = free); the output has the
    sketch's length and ``seconds`` is ignored. ``prompt_changes``: ``[(at_seconds, prompt)]``, increasing times
    inside the piece; each change cross-fades in from the first block starting at or after its time."""
    parts = list(iter_generate(runtime, seconds, prompt, style=style, guidance=guidance, steps=steps,
                               sampler=sampler, seed=seed, sketch=sketch, strength=strength,
                               prompt_changes=prompt_changes, progress=progress))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
