"""The conditioning vector's layout, the unconditional vector, prompt embeddings and the shipped prompt store."""

import numpy as np
import pytest

from lmdm_engine.core.conditioning import (TEXT_ENCODER, conditioning_vector, embed_prompt, encode_text,
                                           read_prompt_store, unconditional, write_prompt_store)
from lmdm_engine.core.config import ConfigError, debug_config

TEXT = dict(text_dim=384, text_encoder=TEXT_ENCODER)


def test_layout_and_vector():
    cfg = debug_config(**TEXT, accompaniment=True)
    tags = len(cfg.style_vocab)
    assert cfg.cond_layout == {"tags": (0, tags), "accompaniment": (tags, tags + 1), "text": (tags + 1, tags + 385)}
    assert cfg.cond_dim == tags + 385
    prompt = np.linspace(-1, 1, 384, dtype=np.float32)
    vec = conditioning_vector(cfg, {"bell": 0.5}, prompt, accompany=True)
    assert vec[cfg.style_vocab.index("bell")] == 0.5 and vec[tags] == 1.0
    np.testing.assert_array_equal(vec[tags + 1:], prompt)
    free = unconditional(cfg, vec)
    assert free[tags] == 1.0 and np.count_nonzero(free) == 1  # a jam stays a jam; tags and prompt gone
    assert debug_config().cond_layout == {"tags": (0, tags)} and debug_config().cond_dim == tags


def test_vector_errors_name_the_fault():
    plain = debug_config()
    with pytest.raises(ValueError, match="'kazoo' is not in this model's vocabulary"):
        conditioning_vector(plain, {"kazoo": 1.0})
    with pytest.raises(ValueError, match="not trained to jam"):
        conditioning_vector(plain, accompany=True)
    with pytest.raises(ValueError, match="takes no text prompts"):
        conditioning_vector(plain, prompt=np.zeros(384, np.float32))
    with pytest.raises(ValueError, match="takes no text prompts"):
        embed_prompt("warm pad", plain)
    with pytest.raises(ConfigError, match="text_encoder"):
        debug_config(text_dim=384)


def test_text_encoder_gives_unit_embeddings_that_tell_timbres_apart():
    emb = encode_text(["bright glassy bells", "shimmering chimes", "a deep sub bass groove"])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


def test_prompt_store_round_trip_and_lookup(tmp_path, monkeypatch):
    path = write_prompt_store(["warm  pad", "bright bells", "warm pad"], tmp_path / "p.safetensors")
    store = read_prompt_store(str(path))
    assert sorted(store) == ["bright bells", "warm pad"]  # whitespace normalised, duplicates merged
    np.testing.assert_allclose(store["warm pad"], encode_text(["warm pad"])[0], atol=1e-6)
    (tmp_path / "bad.safetensors").write_bytes(b"not a store")
    with pytest.raises(ValueError, match="bad.safetensors: not a readable prompt store"):
        read_prompt_store(str(tmp_path / "bad.safetensors"))


def test_shipped_store_holds_every_preset_prompt():
    from lmdm_engine.io.presets import list_presets

    store = read_prompt_store()
    prompts = {" ".join(p.prompt.split()) for p in list_presets() if getattr(p, "prompt", "")}
    assert prompts <= set(store)
    for text in prompts:  # the stored embedding is the encoder's
        np.testing.assert_allclose(store[text], encode_text([text])[0], atol=1e-5)
