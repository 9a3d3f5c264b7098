"""Procedural corpus: deterministic, labelled, level-normalised clips and the corpus folder on disk."""

import json

import numpy as np
import pytest
import soundfile as sf

from lmdm_engine.core.config import STYLE_VOCAB, TIMBRES
from lmdm_engine.train.corpus import read_metadata, render_clip, style_vector, write_corpus

SR = 22050


def _dbfs(audio):
    return 20 * np.log10(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def test_render_is_deterministic_per_seed():
    a, tags_a = render_clip(3, SR, 1.0)
    b, tags_b = render_clip(3, SR, 1.0)
    c, _ = render_clip(4, SR, 1.0)
    assert np.array_equal(a, b) and tags_a == tags_b
    assert not np.allclose(a, c)


@pytest.mark.parametrize("seconds", [4.0, 0.3, 1.01])
def test_length_level_and_no_clipping(seconds):
    for seed in range(6):
        audio, _ = render_clip(seed, SR, seconds)
        assert audio.dtype == np.float32 and audio.shape == (round(seconds * SR),)
        assert np.isfinite(audio).all()
        assert np.abs(audio).max() <= 0.99
        assert -26.0 < _dbfs(audio) < -19.5


def test_tags_valid_sorted_and_every_timbre_appears():
    seen = set()
    for seed in range(200):
        audio, tags = render_clip(seed, SR, 0.25)
        assert tags and set(tags) <= set(STYLE_VOCAB)
        assert tags == sorted(tags, key=STYLE_VOCAB.index) and len(set(tags)) == len(tags)
        timbres = [t for t in tags if t in TIMBRES]
        assert 1 <= len(timbres) <= 2 and (len(timbres) == 1 or "drums" in timbres)
        assert not {"bright", "dark"} <= set(tags) and not {"fast", "slow"} <= set(tags)
        seen |= set(tags)
    assert set(TIMBRES) <= seen
    assert {"bright", "dark", "reverb", "distorted", "fast", "slow"} <= seen


def test_dark_clips_are_duller_than_bright_ones():
    centroids = {"bright": [], "dark": []}
    for seed in range(60):
        audio, tags = render_clip(seed, SR, 0.5)
        power = np.abs(np.fft.rfft(audio)) ** 2
        centroid = (power * np.fft.rfftfreq(len(audio), 1 / SR)).sum() / power.sum()
        for tone in centroids:
            if tone in tags:
                centroids[tone].append(centroid)
    assert np.median(centroids["bright"]) > 2 * np.median(centroids["dark"])


def test_style_vector():
    vec = style_vector(["dark", "keys", "drums"])
    assert vec.dtype == np.float32 and vec.shape == (len(STYLE_VOCAB),)
    assert vec.sum() == 3 and vec[STYLE_VOCAB.index("keys")] == 1 and vec[STYLE_VOCAB.index("dark")] == 1
    assert style_vector([]).sum() == 0
    assert style_vector(["b"], vocab=("a", "b")).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="'glitchy'.*keys"):
        style_vector(["keys", "glitchy"])


def test_write_corpus_and_idempotence(tmp_path):
    out = write_corpus(tmp_path / "c", n_clips=6, seconds=0.25, heldout_fraction=0.2, seed=5, progress=False)
    assert out == tmp_path / "c"
    rows = read_metadata(out)
    assert [r["file"] for r in rows] == [f"clips/{i:05d}.wav" for i in range(6)]
    assert {r["split"] for r in rows} == {"train", "heldout"}
    assert sum(r["split"] == "heldout" for r in rows) == 1
    for row in rows:
        audio, sr = sf.read(out / row["file"], dtype="float32")
        assert sr == SR == row["sample_rate"] and len(audio) == round(0.25 * SR) and row["seconds"] == 0.25
        assert sf.info(out / row["file"]).subtype == "PCM_16"
        expected, tags = render_clip(row["seed"], SR, 0.25)
        assert row["tags"] == tags
        assert np.abs(audio - expected).max() < 1e-3
    assert len({r["seed"] for r in rows}) == 6

    stamp = (out / "clips/00000.wav").stat().st_mtime_ns
    (out / "clips/00000.wav").write_bytes(b"")  # an idempotent call must not touch the clips
    write_corpus(out, n_clips=6, seconds=0.25, heldout_fraction=0.2, seed=5, progress=False)
    assert (out / "clips/00000.wav").stat().st_size == 0

    write_corpus(out, n_clips=3, seconds=0.25, heldout_fraction=0.2, seed=5, progress=False)  # new settings
    assert (out / "clips/00000.wav").stat().st_mtime_ns != stamp and sf.read(out / "clips/00000.wav")[0].size
    assert sorted(p.name for p in (out / "clips").iterdir()) == ["00000.wav", "00001.wav", "00002.wav"]
    assert json.loads((out / "corpus.json").read_text())["n_clips"] == 3


def test_parallel_corpus_matches_serial(tmp_path):
    kwargs = dict(n_clips=4, seconds=0.2, seed=1, progress=False)
    serial, parallel = write_corpus(tmp_path / "s", **kwargs), write_corpus(tmp_path / "p", jobs=2, **kwargs)
    assert read_metadata(serial) == read_metadata(parallel)
    for row in read_metadata(serial):
        assert np.array_equal(sf.read(serial / row["file"])[0], sf.read(parallel / row["file"])[0])


def test_read_metadata_errors(tmp_path):
    with pytest.raises(ValueError, match="metadata.jsonl"):
        read_metadata(tmp_path)
    good = json.dumps({"file": "clips/00000.wav", "tags": ["keys"], "split": "train"})
    (tmp_path / "metadata.jsonl").write_text(good + "\n" + good[:-3] + "\n")
    with pytest.raises(ValueError, match=r"metadata\.jsonl, line 2"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(good + "\n" + json.dumps({"file": "x.wav", "split": "test", "tags": []}))
    with pytest.raises(ValueError, match="line 2"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(good + "\n\n")
    assert read_metadata(tmp_path) == [json.loads(good)]


def test_clip_parts_info_and_stems():
    from lmdm_engine.train.corpus import render_clip_parts

    seen_two_part = False
    for seed in range(40):
        audio, tags = render_clip(seed, SR, 0.5)
        clip = render_clip_parts(seed, SR, 0.5, stems=True)
        np.testing.assert_array_equal(clip.audio, audio)  # the same clip as render_clip
        assert clip.tags == tags and clip.info["timbre"] in tags
        assert ("drums" in tags) == clip.info["drums"]
        two_part = clip.info["drums"] and clip.info["timbre"] != "drums"
        assert bool(clip.stems) == two_part
        if two_part and not {"distorted", "dark"} & set(tags):  # linear effects (no drive, no ladder filter):
            seen_two_part = True  # the stems add up to the mix
            np.testing.assert_allclose(clip.stems["pitched"] + clip.stems["drums"], audio, atol=1e-4)
    assert seen_two_part
