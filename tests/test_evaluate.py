"""Evaluation: rollouts use the streaming path and equal the block-causal forward; the real-audio reference beats
noise."""

import numpy as np
import torch

from lmdm_engine.core.audio import tone
from lmdm_engine.core.codec import encode_clip
from lmdm_engine.core.sampling import time_schedule
from lmdm_engine.train.data import LatentClips
from lmdm_engine.train.evaluate import evaluate, evaluation_table, rollout

from conftest import debug_torch_runtime, random_model


def test_rollout_matches_the_block_causal_forward(debug_runtime):
    """Each block of a rollout (streamed with the KV cache) equals the velocity of the full block-causal forward
    (``velocity_sequence`` over the context and the blocks before it) integrated from the same noise."""
    cfg, model = debug_runtime.config, debug_runtime.model
    length, blocks, steps = cfg.block_frames, 3, 2
    context = np.random.default_rng(0).standard_normal((2, 2 * length, cfg.latent_dim)).astype(np.float32)
    cond = np.eye(2, cfg.cond_dim, dtype=np.float32)
    out = rollout(debug_runtime, context, blocks, length, steps, "euler", cond, seed=0)
    assert out.shape == (2, blocks * length, cfg.latent_dim) and np.isfinite(out).all()
    again = rollout(debug_runtime, context, blocks, length, steps, "euler", cond, seed=0)
    np.testing.assert_array_equal(out, again)

    scale = debug_runtime.latent_scale
    clean = torch.from_numpy(np.concatenate([context, out], 1) / scale)  # model space: the stream as it went
    rng = np.random.default_rng(0)  # the rollout's noise: one draw per block (strength 1, Euler)
    for j in range(blocks):
        x = torch.from_numpy(rng.standard_normal((2, length, cfg.latent_dim)).astype(np.float32))
        at = slice(context.shape[1] + j * length, context.shape[1] + (j + 1) * length)
        schedule = time_schedule(steps)
        for t, t_next in zip(schedule[:-1], schedule[1:]):
            noisy = torch.zeros_like(clean)
            noisy[:, at] = x
            t_blocks = torch.full((2, clean.shape[1] // length), float(t))
            with torch.no_grad():
                v = model.velocity_sequence(clean, noisy, t_blocks, torch.from_numpy(cond), length)[:, at]
            x = x + float(t_next - t) * v
        np.testing.assert_allclose(out[:, j * length:(j + 1) * length] / scale, x.numpy(), atol=1e-4)


def test_evaluate_references(debug_runtime):
    cfg = debug_runtime.config
    audio = [tone(1.0, cfg.sample_rate, 1, seed=i)[0] for i in range(6)]
    lat = np.stack([encode_clip(debug_runtime.codec, a) for a in audio])
    clips = LatentClips(lat.astype(np.float16), np.zeros((6, cfg.cond_dim), np.float32), [str(i) for i in range(6)])
    untrained = debug_torch_runtime(random_model(seed=3))
    result = evaluate(debug_runtime, clips, untrained, blocks=2, steps=2, max_clips=6)
    for key in ("model", "repeat_last_block", "noise_latents", "shaped_noise", "untrained"):
        assert np.isfinite(result[key]) and result[key] >= 0
    assert result["repeat_last_block"] < result["noise_latents"]
    assert "repeat_last_block" in evaluation_table(result)
