"""``lmdm export``: a model folder -> ONNX graphs + manifest.json, the one export path.

    DIR/denoiser_step.onnx   the fused streaming step with explicit KV-cache inputs and outputs
    DIR/codec_encode.onnx    audio -> model-space latents, streaming state in and out
    DIR/codec_decode.onnx    model-space latents -> audio, streaming state in and out
    DIR/codec_level.onnx     model-space latents -> their loudness per channel (the echo is re-levelled to it)
    DIR/manifest.json        everything a host needs (shapes, names, schedule, presets, the host loop)
    DIR/codec.safetensors    the codec basis (the codec graphs hold it too), for the numpy codec of the runtime

The manifest (less the file digests) is also stored in every graph's ONNX metadata under ``lmdm.manifest``.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from lmdm_engine.core.codec import LEVEL_PASSES, Codec
from lmdm_engine.core.conditioning import prompt_conditioning
from lmdm_engine.core.config import ModelConfig
from lmdm_engine.core.files import atomic_write
from lmdm_engine.core.model import Denoiser, cache_names
from lmdm_engine.io.presets import list_presets
from lmdm_engine.runtime.latent_stream import GUIDANCE_RESCALE
from lmdm_engine.runtime.onnx import (EXPORT_SUBDIR, MANIFEST_NAME, MANIFEST_SCHEMA, MANIFEST_VERSION, file_digest,
                                      present_name)
from lmdm_engine.stream.params import unplayable_reason

from .codec_graphs import OPSET, build_decoder, build_encoder, build_level

STEP_INPUTS = ("latents", "time", "cond", "context")

HOST_LOOP = """\
# Model rate only: resample the host's audio to sample_rate first. One channel = one batch row.
# B = channels, L = block_frames (the delay in frames), D = latent_dim. All states start at zeros
# (context_valid: false); `state` maps each state input to the present.* output that replaces it.
# cond [B, conditioning.cond_dim]: a preset's cond_vector (it holds the prompt's embedding), per row.
# amplitude [B]: the echo's loudness, zeros at first (a feedback delay's: level.doc).
for each block of L * hop samples `audio` [B, L*hop]:
    heard, enc_state = codec_encode(audio, enc_state)                     # [B, L, D] model-space latents
    context = (1 - feedback) * heard + feedback * echo                    # echo: the previous block's output (zeros at first)
    amplitude = max(exp(codec_level(heard)), feedback * amplitude)         # per row; jam mode: feedback 0 here
    delayed = context                                                     # the last L frames of the context stream
    times = [shift * u / (1 + (shift - 1) * u) for u = strength * (1 - i / steps), i = 0..steps]
    x = (1 - strength) * delayed + strength * noise()                     # one noise draw [L, D], shared by channels
    for i in 0..steps-1:
        # the first step also slides the finished context into the cache (one fused pass); later steps pass
        # a context of 0 frames and keep the cache
        v, present = denoiser_step(latents=x, time=[times[i]] * B, cond, context=(context if i == 0 else zeros[B, 0, D]), cache)
        if i == 0: cache = present
        guidance g != 1: v_u, _ = denoiser_step(latents=x, time, cond=unconditional(cond), context=zeros[B, 0, D], cache)
                         v_g = v_u + g * (v - v_u); x0_c = x - times[i] * v; x0_g = x - times[i] * v_g
                         x0 = x0_g * (1 - r + r * rms(x0_c) / (rms(x0_g) + 1e-6)), rms per row, r = guidance_rescale
                         v = (x - x0) / times[i]
        ping-pong: denoised = x - times[i] * v
                   x = denoised if times[i+1] == 0 else (1 - times[i+1]) * denoised + times[i+1] * noise()
        euler:     x = x + (times[i+1] - times[i]) * v
    (strength 0: no sampling; x = delayed, and the context is slid in by a step with latents of 0 frames)
    (jam mode: context = codec_encode(audio + the jam part that played during this block); x starts from noise)
    repeat level.passes times: x = x + (log(amplitude) - codec_level(x))[:, None, None] * level.shift[None, None, :]
    echo = x
    out, dec_state = codec_decode(echo, dec_state)                        # plays during the next block
    output (1 - mix) * dry + mix * out: the wet path is one block + codec_latency_samples late"""


class DenoiserStep(nn.Module):
    """The export wrapper: positional tensors in the manifest's order around :meth:`Denoiser.step`."""

    def __init__(self, model: Denoiser):
        super().__init__()
        self.model = model
        self.state_names = cache_names(model.config)

    def forward(self, latents, time, cond, context, *state):
        velocity, present = self.model.step(dict(zip(self.state_names, state)), context, latents, time, cond)
        return (velocity, *[present[name] for name in self.state_names])


def _io(name: str, shape: list, dtype: str) -> dict:
    return {"name": name, "shape": shape, "dtype": dtype}


def step_signature(config: ModelConfig) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of the step graph: names, shapes (strings are dynamic axes) and dtypes."""
    d, s = config.latent_dim, config.cond_dim
    cache = ["batch", config.heads, config.context_frames, config.head_dim]
    inputs = [_io("latents", ["batch", "block_frames", d], "float32"), _io("time", ["batch"], "float32"),
              _io("cond", ["batch", s], "float32"), _io("context", ["batch", "context_frames_in", d], "float32")]
    outputs = [_io("velocity", ["batch", "block_frames", d], "float32")]
    for name in cache_names(config):
        shape, dtype = (["batch", config.context_frames], "bool") if name == "context_valid" else (cache, "float32")
        inputs.append(_io(name, shape, dtype))
        outputs.append(_io(present_name(name), shape, dtype))
    return inputs, outputs


def codec_signature(config: ModelConfig) -> dict:
    bins, hop, d = config.n_fft // 2 + 1, config.hop, config.latent_dim
    enc_state = [("encoder_history", ["channels", hop], "float32")]
    dec_state = [("decoder_overlap", ["channels", hop], "float32"), ("decoder_phase", ["channels", bins], "float64"),
                 ("decoder_frequency", ["channels", bins], "float64")]
    audio, latents = ("audio", ["channels", "samples"], "float32"), ("latents", ["channels", "frames", d], "float32")
    return {
        "codec_encode": ([_io(*audio)] + [_io(*e) for e in enc_state],
                         [_io(*latents)] + [_io(present_name(n), sh, dt) for n, sh, dt in enc_state]),
        "codec_decode": ([_io(*latents)] + [_io(*e) for e in dec_state],
                         [_io(*audio)] + [_io(present_name(n), sh, dt) for n, sh, dt in dec_state]),
        "codec_level": ([_io(*latents)], [_io("level", ["channels"], "float32")]),
    }


def export_step(model: Denoiser, path: Path) -> None:
    """Trace the fused step to ONNX. The TorchScript exporter keeps every axis symbolic, 0 frames included."""
    cfg = model.config
    inputs, outputs = step_signature(cfg)
    b, n, length = 2, 3, 5
    with torch.no_grad():
        cache = model.append_context(model.empty_cache(b), torch.randn(b, 2, cfg.latent_dim))
    example = (torch.randn(b, length, cfg.latent_dim), torch.rand(b), torch.rand(b, cfg.cond_dim),
               torch.randn(b, n, cfg.latent_dim), *[cache[name] for name in cache_names(cfg)])
    dynamic = {io["name"]: {i: dim for i, dim in enumerate(io["shape"]) if isinstance(dim, str)}
               for io in inputs + outputs}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter warns about its own deprecation and traced shapes
        torch.onnx.export(DenoiserStep(model).eval(), example, str(path), input_names=[i["name"] for i in inputs],
                          output_names=[o["name"] for o in outputs], dynamic_axes=dynamic, opset_version=OPSET,
                          dynamo=False)


def build_manifest(config: ModelConfig, codec: Codec, latent_scale: np.ndarray, parameters: int, source: str) -> dict:
    step_in, step_out = step_signature(config)
    graphs = {"denoiser_step": {"file": "denoiser_step.onnx", "inputs": step_in, "outputs": step_out}}
    for name, (inputs, outputs) in codec_signature(config).items():
        graphs[name] = {"file": f"{name}.onnx", "inputs": inputs, "outputs": outputs}
    state = {io["name"]: present_name(io["name"]) for io in step_in if io["name"] not in STEP_INPUTS}
    return {
        "schema": MANIFEST_SCHEMA,
        "schema_version": MANIFEST_VERSION,
        "source": source,
        "parameters": parameters,
        "opset": OPSET,
        "sample_rate": config.sample_rate,
        "n_fft": config.n_fft,
        "hop": config.hop,
        "codec_latency_samples": config.codec_latency,
        "latent_dim": config.latent_dim,
        "block_frames": {"default": config.block_frames, "min": config.min_block_frames, "max": config.max_block_frames},
        "window": {"blocks": config.window_blocks, "context_frames": config.context_frames},
        "layers": config.depth,
        "heads": config.heads,
        "head_dim": config.head_dim,
        "style_vocab": list(config.style_vocab),
        "conditioning": {
            "cond_dim": config.cond_dim,
            "layout": {name: list(span) for name, span in config.cond_layout.items()},
            "text_encoder": config.text_encoder or None,
            "unconditional": "zeros, except the accompaniment flag, which is kept",
            "guidance": "g != 1: v = v_uncond + g * (v_cond - v_uncond), v_cond first (it folds the context in); "
                        "the clean estimate rescaled to the conditional one's RMS (see the host loop)",
            "guidance_rescale": GUIDANCE_RESCALE,
        },
        "graphs": graphs,
        "state": {"denoiser_step": state,
                  **{name: {io["name"]: present_name(io["name"]) for io in inputs[1:]}
                     for name, (inputs, _) in codec_signature(config).items()},
                  "initial": "zeros (context_valid: false)"},
        "sampler": {
            "schedule": "times[i] = shift * u / (1 + (shift - 1) * u), u = strength * (1 - i / steps), i = 0..steps",
            "shift": 1.0,
            "velocity": "x_t = (1 - t) * x0 + t * noise, velocity = noise - x0",
            "pingpong": "denoised = x - t * v; x = (1 - t_next) * denoised + t_next * noise (x = denoised at t_next = 0)",
            "euler": "x = x + (t_next - t) * v",
        },
        "presets": {p.name: {**p.to_dict(), "cond_vector": _preset_vector(config, p)}
                    for p in list_presets()},
        "level": {
            "doc": "the echo is re-levelled to a feedback delay's loudness: RMS amplitude the larger of the block "
                   "heard's and feedback times the echo before's (a phrase echoes at its own level from its first "
                   "block, a tail decays by feedback a block); shift: the model-space direction of a constant "
                   "log-magnitude offset, each pass closes most of the gap (see the host loop)",
            "passes": LEVEL_PASSES,
            "shift": [float(v) for v in codec.level_shift / latent_scale],
        },
        "host_loop": HOST_LOOP.splitlines(),
        "latent_scale": [float(v) for v in latent_scale],
        "config": config.to_dict(),
    }


def _preset_vector(config: ModelConfig, preset) -> list[float] | None:
    """The preset's conditioning vector for this model (its prompt from the shipped embeddings), or None when
    the model cannot play the preset (a prompt or jam mode it was not trained for)."""
    if unplayable_reason(preset.params, config):
        return None
    return [float(v) for v in prompt_conditioning(config, preset.style, preset.prompt, preset.mode == "jam")]


def _stamp(path: Path, graph: str, manifest: dict) -> None:
    """Declare the manifest's shapes on the graph's inputs and outputs (the tracer leaves the fixed window axis
    symbolic on present.*) and write the manifest into the graph's metadata."""
    model = onnx.load(str(path))
    entry = manifest["graphs"][graph]
    for values, listed in ((model.graph.input, entry["inputs"]), (model.graph.output, entry["outputs"])):
        shapes = {io["name"]: io["shape"] for io in listed}
        for value in values:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                if isinstance(size, str):
                    dim.dim_param = size
                else:
                    dim.dim_value = size
    flat = {"lmdm.manifest": json.dumps(manifest), "lmdm.sample_rate": str(manifest["sample_rate"]),
            "lmdm.hop": str(manifest["hop"]), "lmdm.block_frames": str(manifest["block_frames"]["default"]),
            "lmdm.context_frames": str(manifest["window"]["context_frames"]),
            "lmdm.latent_dim": str(manifest["latent_dim"])}
    del model.metadata_props[:]
    for key, value in flat.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def export_model(model: Denoiser, codec: Codec, out_dir: str | Path, source: str = "") -> Path:
    """Write the four graphs, the codec basis and the manifest for ``model`` into ``out_dir``; returns the
    manifest path.

    Files are written under temporary names and renamed at the end, so a failed export leaves no half folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    cfg = model.config
    latent_scale = model.latent_scale.detach().cpu().numpy().astype(np.float32)
    parameters = sum(p.numel() for p in model.parameters())
    manifest = build_manifest(cfg, codec, latent_scale, parameters, source)
    # the graphs under their partial names first, renamed together, then the manifest: no half folder
    with contextlib.ExitStack() as renames:
        for name, entry in manifest["graphs"].items():
            partial = renames.enter_context(atomic_write(out / entry["file"]))
            if name == "denoiser_step":
                export_step(model, partial)
            else:
                build = {"codec_encode": build_encoder, "codec_decode": build_decoder, "codec_level": build_level}[name]
                onnx.save(build(codec, latent_scale), str(partial))
            _stamp(partial, name, manifest)
            entry["sha256"] = file_digest(partial)
    codec.save(out)
    path = out / MANIFEST_NAME
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def default_output(model_folder: str | Path) -> Path:
    return Path(model_folder) / EXPORT_SUBDIR
