"""A fixed test vector for hosts outside Python (export/node/host.mjs): input audio, the noise a Session drew,
and the Session's output, all at the model rate, so a host that follows the manifest's loop can prove it matches.

    vector.json      parameters, shapes, file names and the tolerance
    audio.f32        [channels, blocks * block_frames * hop] float32 little-endian
    noise.f32        [draws, block_frames, latent_dim]: the noise draws in order (shared by all channels)
    expected.f32     [channels, (blocks - 1) * block_frames * hop]: the echoes of blocks 0 .. blocks-2 (the wet path)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmdm_engine.core.audio import tone
from lmdm_engine.io.presets import load_preset
from lmdm_engine.runtime.onnx import OnnxRuntime
from lmdm_engine.stream.session import Session

HOST_TOLERANCE = 1e-3


class _RecordingRng:
    """Stands in for a Session's numpy Generator and keeps every draw (hosts get the same noise from the file)."""

    def __init__(self, seed: int):
        self._rng, self.draws = np.random.default_rng(seed), []

    def standard_normal(self, shape, dtype):
        draw = self._rng.standard_normal(shape, dtype)
        self.draws.append(draw)
        return draw


def write_host_vector(export_dir: str | Path, out_dir: str | Path, blocks: int = 6, preset: str = "glass_bells",
                      channels: int = 2) -> Path:
    runtime = OnnxRuntime(export_dir, provider="cpu")
    cfg = runtime.config
    session = Session(runtime, cfg.sample_rate, channels, load_preset(preset).params.replace(mix=1.0))
    frames = session.block_frames
    samples = blocks * frames * cfg.hop
    audio = tone(samples / cfg.sample_rate + 0.1, cfg.sample_rate, channels, seed=100)[:, :samples]
    session._rng = _RecordingRng(session.params.seed)  # record the noise the session draws, in order
    wet = session.process(audio)
    expected = wet[:, frames * cfg.hop:]  # the first block of the wet path is silence (no echo yet)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    audio.astype("<f4").tofile(out / "audio.f32")
    np.concatenate(session._rng.draws, 0).astype("<f4").tofile(out / "noise.f32")
    expected.astype("<f4").tofile(out / "expected.f32")
    p = session.params
    vector = {
        "channels": channels, "blocks": blocks, "block_frames": frames, "strength": p.strength, "steps": p.steps,
        "sampler": p.sampler, "guidance": p.guidance, "feedback": p.feedback, "cond": session.conditioning.tolist(),
        "noise_draws": len(session._rng.draws), "tolerance": HOST_TOLERANCE,
        "files": {"audio": "audio.f32", "noise": "noise.f32", "expected": "expected.f32"},
        "shapes": {"audio": list(audio.shape), "noise": [len(session._rng.draws), frames, cfg.latent_dim],
                   "expected": list(expected.shape)},
    }
    (out / "vector.json").write_text(json.dumps(vector, indent=1) + "\n")
    return out
