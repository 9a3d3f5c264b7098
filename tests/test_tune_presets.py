"""The preset tuner's pick (benchmarks/tune_presets.py): timbre heard most, harmonicity kept."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import tune_presets  # noqa: E402

NAN = float("nan")


def row(strength, timbre, harm, pitch=0.5):
    return {"strength": strength, "guidance": 1.0, "timbre": timbre, "harm": harm, "pitch": pitch, "level": -1.0}


def test_pick_takes_the_timbre_heard_most_among_the_harmonic_candidates():
    own = row(0.3, 0.1, 0.9)
    rows = [own, row(0.9, 0.6, 0.70), row(0.5, 0.4, 0.76), row(0.75, 0.4, 0.78)]
    assert tune_presets.pick(rows)["strength"] == 0.75  # 0.9 is heard more but too inharmonic; ties: more harmonic
    assert tune_presets.pick([own, row(0.9, 0.6, 0.70)]) is own


def test_pick_keeps_a_preset_less_harmonic_than_the_floor_eligible():
    own = row(0.75, 0.3, 0.5)
    assert tune_presets.pick([own, row(0.5, 0.3, 0.55), row(0.9, 0.5, 0.45)])["strength"] == 0.5


def test_pick_without_a_timbre_tag_keeps_the_most_pitch():
    rows = [row(0.2, NAN, 0.8, pitch=0.6), row(0.3, NAN, 0.9, pitch=0.5)]
    assert tune_presets.pick(rows)["strength"] == 0.2
