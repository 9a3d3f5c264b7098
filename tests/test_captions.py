"""Captions: written from what a clip plays, deterministic, and two disjoint phrasing sets."""

import numpy as np
import pytest

from lmdm_engine.core.config import TIMBRES
from lmdm_engine.train.captions import _TEMPLATES, TIMBRE_WORDS, caption, clip_captions, stem_info, timbre_prompts
from lmdm_engine.train.corpus import render_clip_parts


def test_captions_name_the_clip_timbre_and_tempo():
    for seed in range(20):
        clip = render_clip_parts(seed, 8000, 0.25)
        texts = clip_captions(clip.info, clip.tags, 6, seed)
        assert texts == clip_captions(clip.info, clip.tags, 6, seed)  # deterministic
        words = TIMBRE_WORDS["seen"][clip.info["timbre"]]
        assert all(any(w in t for w in words) for t in texts), texts
        assert len(set(texts)) > 1  # varied phrasings


def test_seen_and_unseen_phrasings_are_disjoint():
    for timbre in TIMBRES:
        assert not set(TIMBRE_WORDS["seen"][timbre]) & set(TIMBRE_WORDS["unseen"][timbre])
        unseen = timbre_prompts(timbre, 10, seed=1, phrasing="unseen")
        assert all(any(w in t for w in TIMBRE_WORDS["unseen"][timbre]) for t in unseen)
        assert not set(unseen) & set(timbre_prompts(timbre, 50, seed=1, phrasing="seen"))
    assert not set(_TEMPLATES["seen"]) & set(_TEMPLATES["unseen"])


def test_stem_info_and_errors():
    clip = next(c for c in (render_clip_parts(s, 8000, 0.25) for s in range(50))
                if c.info["drums"] and c.info["timbre"] != "drums")
    drums = stem_info(clip.info, "drums")
    assert drums["timbre"] == "drums" and "part" not in drums
    assert not stem_info(clip.info, "pitched")["drums"]
    with pytest.raises(ValueError, match="phrasing"):
        caption(clip.info, clip.tags, np.random.default_rng(0), "novel")
    with pytest.raises(ValueError, match="unknown timbre 'kazoo'"):
        caption({**clip.info, "timbre": "kazoo"}, clip.tags, np.random.default_rng(0))
