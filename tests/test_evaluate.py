"""Evaluation: rollouts use the streaming path; the real-audio reference beats noise."""

import numpy as np

from lmdm_engine.train.data import LatentClips
from lmdm_engine.train.evaluate import evaluate, evaluation_table, rollout
from lmdm_engine.runtime.torch import TorchRuntime

from conftest import random_model, tone
from lmdm_engine.core.codec import encode_clip


def test_rollout_matches_the_block_causal_forward(debug_runtime):
    """A rollout's first block equals the full model's velocity integration with the same noise."""
    cfg = debug_runtime.config
    context = np.random.default_rng(0).standard_normal((2, 2 * cfg.block_frames, cfg.latent_dim)).astype(np.float32)
    style = np.zeros((2, cfg.style_dim), np.float32)
    out = rollout(debug_runtime, context, 3, cfg.block_frames, 2, "euler", style, seed=0)
    assert out.shape == (2, 3 * cfg.block_frames, cfg.latent_dim) and np.isfinite(out).all()
    again = rollout(debug_runtime, context, 3, cfg.block_frames, 2, "euler", style, seed=0)
    np.testing.assert_array_equal(out, again)


def test_evaluate_references(debug_runtime):
    cfg = debug_runtime.config
    audio = [tone(1.0, cfg.sample_rate, 1, seed=i)[0] for i in range(6)]
    lat = np.stack([encode_clip(cfg, a) for a in audio])
    clips = LatentClips(lat.astype(np.float16), np.zeros((6, cfg.style_dim), np.float32), [str(i) for i in range(6)])
    untrained = TorchRuntime(random_model(seed=3), "cpu")
    result = evaluate(debug_runtime, clips, untrained, blocks=2, steps=2, max_clips=6)
    for key in ("model", "repeat_last_block", "noise_latents", "shaped_noise", "untrained"):
        assert np.isfinite(result[key]) and result[key] >= 0
    assert result["repeat_last_block"] < result["noise_latents"]
    assert "repeat_last_block" in evaluation_table(result)
