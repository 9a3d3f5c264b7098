"""Fast checks of the prompt and sketch benchmarks' parts (no training, no pYIN, no generation)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_sketch  # noqa: E402
import timbre_classifier as tc  # noqa: E402


@pytest.mark.parametrize("kind", bench_sketch.KINDS)
def test_sketch_is_seeded_and_sane(kind):
    a, f0, info = bench_sketch.make_sketch(kind, 7, 22050, 2.0)
    b, _, _ = bench_sketch.make_sketch(kind, 7, 22050, 2.0)
    c, _, _ = bench_sketch.make_sketch(kind, 8, 22050, 2.0)
    assert a.dtype == np.float32 and a.shape == (44100,) and np.isfinite(a).all()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(np.sqrt(np.mean(a.astype(np.float64) ** 2)) - 0.1) < 1e-3
    voiced = f0[f0 > 0]
    assert voiced.size > 0.2 * f0.size
    low, high = bench_sketch.VOICE_RANGE
    lo, hi = bench_sketch._midi_hz(low - 1), bench_sketch._midi_hz(high + 1)
    assert voiced.min() > lo and voiced.max() < hi
    assert 60 <= info["tempo"] <= 140


def test_pitch_agreement_counts_octave_errors_separately():
    f0 = np.array([220.0, 230.0, 240.0, 250.0])
    voiced = np.array([True, True, True, False])
    same = bench_sketch.scores([bench_sketch.agreement(f0, voiced, f0, voiced)])
    assert same["pitch"] == same["pitch_octave"] == same["voicing"] == 1.0
    octave = bench_sketch.scores([bench_sketch.agreement(f0, voiced, 2 * f0, voiced)])
    assert octave["pitch"] == 0.0 and octave["pitch_octave"] == 1.0
    off = bench_sketch.scores([bench_sketch.agreement(f0, voiced, f0 * 2 ** (1 / 12), ~voiced)])
    assert off["pitch"] == 0.0 and off["voicing"] == 0.0


def test_classifier_saves_as_safetensors_and_takes_any_length(tmp_path):
    settings = dict(tc.SETTINGS, channels=[4, 4, 4])
    report = {"heldout": {"accuracy": 0.5}}
    clf = tc.TimbreClassifier(tc.TimbreNet(settings), settings, report)
    tc.save(clf, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([tc.WEIGHTS_NAME, tc.SETTINGS_NAME])
    loaded = tc.load(tmp_path)
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (22050, 44100, 22050)]
    p = clf.probabilities(clips, 22050)
    assert p.shape == (3, len(tc.TIMBRES)) and np.allclose(p.sum(1), 1.0, atol=1e-5)
    assert np.allclose(loaded.probabilities(clips, 22050), p, atol=1e-6)
    assert len(clf.predict([rng.standard_normal(16000).astype(np.float32)], 8000)) == 1  # resampled to 22,050 Hz
    with pytest.raises(ValueError):
        clf.probabilities([np.zeros(100, np.float32)], 22050)


def test_clip_timbre_reads_info_or_falls_back_to_tags():
    assert tc.clip_timbre({"tags": ["pad", "drums"], "info": {"timbre": "pad"}}) == "pad"
    assert tc.clip_timbre({"tags": ["drums", "bass", "fast"]}) == "bass"
    assert tc.clip_timbre({"tags": ["drums", "reverb"]}) == "drums"
