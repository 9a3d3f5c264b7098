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
    out = rollout(debug_runtime, context, blocks, length, steps, "euler", cond, seed=0, follow_level=False)
    assert out.shape == (2, blocks * length, cfg.latent_dim) and np.isfinite(out).all()
    again = rollout(debug_runtime, context, blocks, length, steps, "euler", cond, seed=0, follow_level=False)
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


def test_rollout_blocks_keep_the_level_of_the_context(debug_runtime):
    """With ``follow_level`` (the default) every block plays at the loudness of the context's last block, a loud
    context and a quiet one alike; a block differs from the unlevelled one only by a constant log-magnitude offset."""
    cfg, codec = debug_runtime.config, debug_runtime.codec
    length = cfg.block_frames
    audio = [tone(1.0, cfg.sample_rate, 1, seed=i)[0] * gain for i, gain in enumerate((1.0, 0.01))]
    context = np.stack([encode_clip(codec, a)[:2 * length] for a in audio])
    cond = np.zeros((2, cfg.cond_dim), np.float32)
    out = rollout(debug_runtime, context, 3, length, 2, "pingpong", cond, seed=0)
    raw = rollout(debug_runtime, context, 1, length, 2, "pingpong", cond, seed=0, follow_level=False)
    target = codec.level(context[:, -length:])
    assert abs(target[0] - target[1]) > 3.0  # the two contexts lie more than 26 dB apart
    for j in range(3):
        np.testing.assert_allclose(codec.level(out[:, j * length:(j + 1) * length]), target, atol=0.01)
    moved = (out[:, :length] - raw).reshape(-1, cfg.latent_dim)  # every frame moved by a multiple of one latent:
    direction = np.ones(codec.encoder.shape[0]) @ codec.encoder  # that of a constant log-magnitude offset
    amount = moved @ direction / (direction @ direction)
    np.testing.assert_allclose(moved, amount[:, None] * direction, atol=1e-4)
    assert np.abs(amount).min() > 0.1


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
