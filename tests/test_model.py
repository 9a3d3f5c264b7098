"""Denoiser: streaming with the KV cache equals the full block-causal forward; cache exactness and bounds."""

import pytest
import torch

from lmdm_engine.core.config import ConfigError, debug_config
from lmdm_engine.core.model import Denoiser, cache_names, sequence_mask

from conftest import random_model


def stream(model, clean, noisy, t, cond, block):
    """Block by block: the target against the cache, then the clean block into the cache."""
    cache, out = model.empty_cache(clean.shape[0]), []
    for i in range(clean.shape[1] // block):
        sl = slice(i * block, (i + 1) * block)
        out.append(model.velocity_cached(cache, noisy[:, sl], t[:, i], cond))
        cache = model.append_context(cache, clean[:, sl])
    return torch.cat(out, 1), cache


@pytest.mark.parametrize("window_blocks,block", [(3, 16), (2, 5), (4, 7), (1, 6)])
def test_streaming_equals_full_forward(window_blocks, block):
    model = random_model(window_blocks=window_blocks, block_frames=max(block, 4), min_block_frames=4)
    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    n_blocks, b = 6, 2
    clean = torch.randn(b, n_blocks * block, cfg.latent_dim, generator=gen)
    noisy = torch.randn(b, n_blocks * block, cfg.latent_dim, generator=gen)
    t = torch.rand(b, n_blocks, generator=gen)
    cond = torch.rand(b, cfg.cond_dim, generator=gen)
    with torch.no_grad():
        full = model.velocity_sequence(clean, noisy, t, cond, block)
        streamed, _ = stream(model, clean, noisy, t, cond, block)
    assert full.abs().max() > 0.1
    assert torch.allclose(full, streamed, atol=1e-5, rtol=0), (full - streamed).abs().max()


def test_cache_is_bounded_and_positions_do_not_grow():
    """After 200 blocks the cache has the same shapes, and the output equals that of a fresh cache that saw only
    the last W-1 blocks: nothing depends on the absolute position in the stream."""
    model = random_model()
    cfg = model.config
    L = cfg.block_frames
    gen = torch.Generator().manual_seed(2)
    blocks = [torch.randn(1, L, cfg.latent_dim, generator=gen) for _ in range(200)]
    cond, x, t = torch.rand(1, cfg.cond_dim), torch.randn(1, L, cfg.latent_dim), torch.tensor([0.7])
    with torch.no_grad():
        long_cache = model.empty_cache(1)
        shapes = {k: v.shape for k, v in long_cache.items()}
        for blk in blocks:
            long_cache = model.append_context(long_cache, blk)
        assert {k: v.shape for k, v in long_cache.items()} == shapes
        short_cache = model.empty_cache(1)
        for blk in blocks[-(cfg.window_blocks - 1) * 2:]:  # more than a window, fewer than all
            short_cache = model.append_context(short_cache, blk)
        a = model.velocity_cached(long_cache, x, t, cond)
        b = model.velocity_cached(short_cache, x, t, cond)
    assert torch.allclose(a, b, atol=1e-5)


def test_context_cache_independent_of_time_and_conditioning():
    model = random_model()
    cfg = model.config
    frames = torch.randn(1, cfg.block_frames, cfg.latent_dim)
    with torch.no_grad():
        cache = model.append_context(model.empty_cache(1), frames)
        x = torch.randn(1, cfg.block_frames, cfg.latent_dim)
        v1 = model.velocity_cached(cache, x, torch.tensor([0.2]), torch.zeros(1, cfg.cond_dim))
        v2 = model.velocity_cached(cache, x, torch.tensor([0.9]), torch.ones(1, cfg.cond_dim))
        again = model.append_context(model.empty_cache(1), frames)
    assert not torch.allclose(v1, v2)  # time and cond do reach the target
    for name in cache_names(cfg):
        assert torch.equal(cache[name], again[name])  # and never the cache


def test_sequence_mask_is_block_causal():
    m = sequence_mask(n_frames=8, block_frames=2, context_frames=2)
    T = 8
    assert m.shape == (16, 16)
    assert not m[:T, T:].any()  # clean never sees noisy
    assert m[T + 4, 2] and m[T + 4, 3] and not m[T + 4, 1]  # noisy block 2 sees clean block 1 only (window)
    assert not m[T + 4, 4]  # nor its own clean block
    assert m[T + 4, T + 5] and not m[T + 4, T + 2]  # its own noisy block, not another
    assert m[4, 5] and m[4, 2] and not m[4, 6]  # clean block 2 sees itself and its window


def test_outpaint_and_lmdm_share_weight_layout(tmp_path):
    outpaint = random_model(attention="bidirectional")
    outpaint.save_pretrained(tmp_path)
    lmdm = Denoiser.from_pretrained(tmp_path, attention="block_causal")
    assert lmdm.config.attention == "block_causal"
    for (n1, p1), (n2, p2) in zip(outpaint.state_dict().items(), lmdm.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    x, ctx = torch.randn(1, 4, lmdm.config.latent_dim), torch.randn(1, 8, lmdm.config.latent_dim)
    s, t = torch.zeros(1, lmdm.config.cond_dim), torch.tensor([0.5])
    with torch.no_grad():  # same weights, different attention: different outputs
        assert not torch.allclose(outpaint.velocity_outpaint(ctx, x, t, s), lmdm.velocity_outpaint(ctx, x, t, s))


def test_save_and_load_roundtrip(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = Denoiser.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="config.json: missing"):
        Denoiser.from_pretrained(tmp_path)
    random_model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a readable safetensors"):
        Denoiser.from_pretrained(tmp_path)
    random_model(width=48, heads=2).save_pretrained(tmp_path)
    debug_config().save(tmp_path)  # config says width 32, weights are 48 wide
    with pytest.raises((ConfigError, RuntimeError), match="size mismatch|do not match"):
        Denoiser.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"width": 32, "colour": "red"}')
    with pytest.raises(ConfigError, match="unknown field.*colour"):
        Denoiser.from_pretrained(tmp_path)
