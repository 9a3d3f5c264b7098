"""generate(): text- and sketch-to-music streamed block by block with the KV cache."""

import resource

import numpy as np
import pytest

from lmdm_engine.core.audio import tone
from lmdm_engine.core.codec import decode_clip, encode_clip
from lmdm_engine.core.conditioning import PROMPT_CROSSFADE_BLOCKS, TEXT_ENCODER
from lmdm_engine.stream.generate import generate, iter_generate

from conftest import Recording, debug_torch_runtime, envelope_lag, random_model

BELLS, DRUMS = "bright glassy bells", "a tight drum groove"


@pytest.fixture(scope="module")
def text_runtime():
    return debug_torch_runtime(random_model(2, text_dim=384, text_encoder=TEXT_ENCODER))


def block_samples(runtime):
    return runtime.config.block_frames * runtime.config.hop


@pytest.mark.parametrize("seconds", [0.0, 0.01, 0.3, 1.0, 1.234567])
def test_length_is_exact(text_runtime, seconds):
    out = generate(text_runtime, seconds, BELLS, steps=1)
    assert out.dtype == np.float32 and out.ndim == 1 and np.isfinite(out).all()
    assert out.shape == (round(seconds * text_runtime.config.sample_rate),)


def test_deterministic_per_seed_and_streamed_in_blocks(text_runtime):
    a = generate(text_runtime, 1.0, BELLS, seed=3)
    np.testing.assert_array_equal(a, generate(text_runtime, 1.0, BELLS, seed=3))
    assert np.abs(a - generate(text_runtime, 1.0, BELLS, seed=4)).max() > 1e-3
    assert np.abs(a).max() > 1e-3
    blocks = list(iter_generate(text_runtime, 1.0, BELLS, seed=3))
    assert max(b.shape[0] for b in blocks) <= block_samples(text_runtime) and len(blocks) > 3
    np.testing.assert_array_equal(np.concatenate(blocks), a)
    # causal: a longer piece starts with the shorter one
    np.testing.assert_array_equal(generate(text_runtime, 1.5, BELLS, seed=3)[: a.shape[0]], a)


def test_prompt_style_and_guidance_change_the_music(text_runtime):
    a = generate(text_runtime, 0.5, BELLS)
    assert np.abs(a - generate(text_runtime, 0.5, DRUMS)).max() > 1e-3
    assert np.abs(a - generate(text_runtime, 0.5, BELLS, style={"bell": 1.0})).max() > 1e-3
    np.testing.assert_array_equal(generate(text_runtime, 0.5, BELLS, guidance=1.0), a)
    assert np.abs(a - generate(text_runtime, 0.5, BELLS, guidance=3.0)).max() > 1e-3


def test_prompt_changes_cross_fade_from_the_block_at_their_time(text_runtime):
    sr, block = text_runtime.config.sample_rate, block_samples(text_runtime)
    at = 3 * block / sr
    rt = Recording(text_runtime)
    out = generate(rt, 1.5, BELLS, steps=1, prompt_changes=[(at, DRUMS)])
    plain = generate(text_runtime, 1.5, BELLS, steps=1)
    bells, drums = rt.conds[0], generate_vector(text_runtime, DRUMS)
    for k, used in enumerate(rt.conds):  # one step a block
        w = min(1.0, max(0, k - 2) / PROMPT_CROSSFADE_BLOCKS)
        np.testing.assert_allclose(used, (1 - w) * bells + w * drums, atol=1e-6)
    first = 3 * block - text_runtime.config.codec_latency  # where block 3 starts in the trimmed output
    np.testing.assert_array_equal(out[:first], plain[:first])
    assert np.abs(out[first + block:] - plain[first + block:]).max() > 1e-3


def generate_vector(runtime, prompt):
    rt = Recording(runtime)
    generate(rt, 0.01, prompt, steps=1)
    return rt.conds[0]


def test_sketch_strength_zero_is_its_reconstruction_time_aligned(text_runtime):
    """Strength 0: the sketch's codec round trip, with the codec latency trimmed (the codec keeps magnitudes and
    rebuilds phases, so this is the round trip, not the sketch's waveform)."""
    sr, codec = text_runtime.config.sample_rate, text_runtime.codec
    sketch = tone(1.3, sr, 1)[0]
    out = generate(text_runtime, None, BELLS, sketch=sketch, strength=0.0)
    assert out.shape == sketch.shape
    hop = codec.config.hop
    roundtrip = decode_clip(codec, encode_clip(codec, sketch))
    np.testing.assert_allclose(out[: len(roundtrip) - hop], roundtrip[:-hop], atol=1e-5)
    out = generate(text_runtime, 99.0, sketch=sketch[:1001], strength=0.0)  # seconds ignored with a sketch
    assert out.shape == (1001,)


def test_sketch_strength_moves_from_the_sketch_to_free(text_runtime):
    """Low strength keeps the sketch, in time (its envelope within 1 ms; a mis-trimmed codec latency would be 4 ms
    off); strength 1 ignores it (a random model forgets the sketch fast, so the low end is 0.05)."""
    sr = text_runtime.config.sample_rate
    sketch = tone(1.5, sr, 1)[0]
    near = generate(text_runtime, None, BELLS, sketch=sketch, strength=0.05)
    lag, match = envelope_lag(near, sketch, sr, sr // 100)
    assert abs(lag) <= sr // 1000 and match > 0.4
    free = generate(text_runtime, 1.5, BELLS)
    np.testing.assert_array_equal(generate(text_runtime, None, BELLS, sketch=sketch, strength=1.0), free)
    assert envelope_lag(free, sketch, sr, sr // 100)[1] < match


def test_blocks_are_levelled_to_the_typical_level_or_the_sketch(text_runtime, monkeypatch):
    """Free generation plays every block at the codec's typical level; below strength 1 a sketch's block sets it."""
    from lmdm_engine.runtime.latent_stream import LatentStream

    codec, scale = text_runtime.codec, text_runtime.latent_scale
    blocks = []
    step = LatentStream.step
    monkeypatch.setattr(LatentStream, "step", lambda self, *a, **k: blocks.append(step(self, *a, **k)) or blocks[-1])
    generate(text_runtime, 2.0, BELLS)
    np.testing.assert_allclose(codec.level(np.concatenate(blocks) * scale), codec.typical_level, atol=0.01)
    sketch = tone(2.0, text_runtime.config.sample_rate, 1)[0] * 0.05
    blocks.clear()
    generate(text_runtime, None, BELLS, sketch=sketch, strength=0.5)
    levels = codec.level(np.concatenate(blocks) * scale)
    sketch_latents = encode_clip(codec, np.concatenate([sketch, np.zeros(block_samples(text_runtime))]))
    length = text_runtime.config.block_frames
    expected = codec.level(np.stack([sketch_latents[i * length:(i + 1) * length] for i in range(len(blocks))]))
    np.testing.assert_allclose(levels, expected, atol=0.01)
    assert np.all(levels[1:-1] < codec.typical_level - 1.0)  # the quiet sketch, not the typical level


def test_bad_requests_are_refused_before_generating(debug_runtime, text_runtime):
    with pytest.raises(ValueError, match="prompt 'warm pad': this model takes no text prompts"):
        iter_generate(debug_runtime, 1.0, "warm pad")
    assert generate(debug_runtime, 0.2, style={"bell": 1.0}).shape == (1600,)  # tags need no text model
    with pytest.raises(ValueError, match="'kazoo' is not in this model's vocabulary"):
        iter_generate(debug_runtime, 1.0, style={"kazoo": 1.0})
    with pytest.raises(ValueError, match="seconds"):
        iter_generate(text_runtime, None, BELLS)
    with pytest.raises(ValueError, match="prompt change at 2.0 s: times must increase and lie inside"):
        iter_generate(text_runtime, 1.0, BELLS, prompt_changes=[(2.0, DRUMS)])
    with pytest.raises(ValueError, match="prompt change at 0.2 s"):
        iter_generate(text_runtime, 1.0, BELLS, prompt_changes=[(0.5, DRUMS), (0.2, BELLS)])
    with pytest.raises(ValueError, match=r"mono audio \[samples\]"):
        iter_generate(text_runtime, None, BELLS, sketch=np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="strength"):
        iter_generate(text_runtime, None, BELLS, sketch=np.zeros(100, np.float32), strength=1.5)
    with pytest.raises(ValueError, match="sampler"):
        iter_generate(text_runtime, 1.0, BELLS, sampler="heun")


def test_memory_is_constant_in_length(text_runtime):
    sr = text_runtime.config.sample_rate
    stream = iter_generate(text_runtime, 400 * block_samples(text_runtime) / sr, BELLS, steps=1)
    for _ in range(50):
        next(stream)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = sum(1 for _ in stream)
    assert n > 300
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 20_000  # KiB
