"""Procedural music corpus: seeded numpy + pedalboard synthesis of labelled clips for training.

A clip is one pitched timbre family (sometimes with a drum layer) or drums alone, playing a melody, chords, an
arpeggio, a bassline or a drum pattern in a random key, scale and tempo, through a small effects chain. Its tags
come from ``config.STYLE_VOCAB``: the timbre families heard plus the production tags that apply.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pedalboard as pb
import soundfile as sf
from tqdm import tqdm

from lmdm_engine.core.config import STYLE_VOCAB, TIMBRES

CORPUS_VERSION = 2  # bump when the synthesis changes, so existing corpora are re-rendered
METADATA_NAME = "metadata.jsonl"
CORPUS_NAME = "corpus.json"
TARGET_RMS = 0.1  # -20 dBFS
PEAK = 0.99
FAST_BPM = 130.0
SLOW_BPM = 85.0

_PITCHED = tuple(t for t in TIMBRES if t != "drums")
_SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "pentatonic": (0, 2, 4, 7, 9),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
}
# Scale-degree progressions (0-based); degrees wrap for the five-note scale.
_PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (1, 4, 0, 0), (0, 3, 4, 3), (5, 3, 0, 4), (0, 6, 5, 4), (0, 2, 3, 4))
_PARTS = {
    "keys": ("melody", "chords", "arpeggio"),
    "pluck": ("melody", "arpeggio", "chords"),
    "bell": ("melody", "arpeggio"),
    "pad": ("chords",),
    "organ": ("chords", "melody"),
    "bass": ("bassline",),
    "lead": ("melody",),
}
_REGISTER = {  # MIDI range of each family
    "keys": (55, 84),
    "pluck": (52, 84),
    "bell": (67, 93),
    "pad": (48, 74),
    "organ": (48, 79),
    "bass": (28, 50),
    "lead": (60, 86),
}
_NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_DRAWBARS = (0.5, 1.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)  # 16', 5 1/3', 8', 4', 2 2/3', 2', 1 3/5', 1 1/3', 1'
_KICKS = ((0, 8), (0, 6, 8), (0, 10), (0, 3, 8, 11), (0, 4, 8, 12), (0, 7, 10), (0, 8, 10))
_SNARES = ((4, 12), (8,), (4, 12, 15), (4, 10, 12))
# Bassline cells over 8 steps: (step, scale-index offset; "octave" = one octave up, 4 = a fifth for 7-note scales).
_BASS_CELLS = (
    ((0, 0), (2, 0), (4, 0), (6, 0)),
    ((0, 0), (2, "octave"), (4, 0), (6, "octave")),
    ((0, 0), (3, 0), (6, 4)),
    ((0, 0), (4, 4)),
    ((0, 0), (1, 0), (2, "octave"), (3, 0), (4, 0), (5, 0), (6, "octave"), (7, 0)),
)


# ---- small DSP helpers ---------------------------------------------------------------------------------------
def _hz(midi):
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _env(m: int, attack: int, hold: int, release: int) -> np.ndarray:
    """Linear attack, sustain until ``hold``, linear release over ``release`` samples; ``m`` samples long."""
    i = np.arange(m, dtype=np.float32)
    up = np.minimum(1.0, (i + 1.0) / max(attack, 1))
    down = np.clip((hold + release - i) / max(release, 1), 0.0, 1.0)
    return np.minimum(up, down)


def _phase(freq: float, m: int, sr: int) -> np.ndarray:
    """Phase in radians of a constant frequency, wrapped in float64 so long notes stay in tune."""
    return (2 * np.pi) * ((np.arange(m) * (freq / sr)) % 1.0).astype(np.float32)


def _sine(freq: float, m: int, sr: int) -> np.ndarray:
    return np.sin(_phase(freq, m, sr))


def _blep(t: np.ndarray, dt) -> np.ndarray:
    """PolyBLEP residual that band-limits a unit step at phase 0 (t, dt in cycles)."""
    dt = np.broadcast_to(dt, t.shape)
    out = np.zeros_like(t)
    lo = t < dt
    x = t[lo] / dt[lo]
    out[lo] = 2 * x - x * x - 1
    hi = t > 1 - dt
    x = (t[hi] - 1) / dt[hi]
    out[hi] = x * x + 2 * x + 1
    return out


def _osc(phase: np.ndarray, dt, square: bool) -> np.ndarray:
    """Band-limited saw or square from a phase in cycles [0, 1)."""
    if square:
        shifted = (phase + 0.5) % 1.0
        y = np.where(phase < 0.5, 1.0, -1.0) + _blep(phase, dt) - _blep(shifted, dt)
    else:
        y = 2 * phase - 1 - _blep(phase, dt)
    return y.astype(np.float32)


def _smooth(x: np.ndarray, k: int, before: float = 0.0) -> np.ndarray:
    """Causal moving average over k samples (turns steps into linear ramps); ``before`` is the value before x."""
    if k <= 1:
        return x
    c = np.concatenate(([0.0], np.cumsum(np.concatenate((np.full(k, before), x)))))
    return ((c[k + 1 :] - c[1:-k]) / k).astype(np.float32)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-9)


def _cut(hz: float, sr: int) -> float:
    """A filter frequency kept below Nyquist."""
    return float(min(hz, 0.45 * sr))


# ---- composition (times in 16th-note steps) ------------------------------------------------------------------
class _Grid:
    """16th-note grid of one clip: step length in samples and swing of the odd steps."""

    def __init__(self, step_n: float, swing: float):
        self.step_n, self.swing = step_n, swing

    def onset(self, step: float) -> int:
        return int(round((step + self.swing * (int(step) % 2)) * self.step_n))


def _scale_pitches(root: int, scale: tuple) -> np.ndarray:
    """MIDI pitches of the scale from its lowest root upward; index i is scale degree i % len(scale)."""
    return np.array([root + 12 * o + s for o in range(1, 10) for s in scale if root + 12 * o + s <= 108])


def _chord_tones(pitches, n_scale, degree, lo, seventh, inversion):
    i = degree % n_scale
    while pitches[i] < lo and i + n_scale + 6 < len(pitches):
        i += n_scale
    tones = [int(pitches[i + 2 * k]) for k in range(4 if seventh else 3)]
    for _ in range(inversion):
        tones = tones[1:] + [tones[0] + 12]
    return tones


def _melody(rng, pitches, lo, hi, n_steps):
    lo_i = int(np.searchsorted(pitches, lo))
    hi_i = int(np.searchsorted(pitches, hi, side="right")) - 1
    i = int(rng.integers(lo_i + (hi_i - lo_i) // 4, hi_i - (hi_i - lo_i) // 4 + 1))
    rest_p = rng.uniform(0.05, 0.3)
    lengths, weights = (1, 2, 3, 4, 6, 8), np.array((2, 4, 1, 3, 1, 1)) / 12
    events, t = [], 0
    while t < n_steps:
        length = int(rng.choice(lengths, p=weights))
        if events and rng.random() < rest_p:
            t += length
            continue
        events.append((t, length, int(pitches[i]), rng.uniform(0.6, 1.0)))
        i += int(rng.choice((-3, -2, -1, 0, 1, 2, 3), p=(0.06, 0.16, 0.26, 0.08, 0.26, 0.12, 0.06)))
        i = lo_i + abs(i - lo_i) if i < lo_i else hi_i - abs(i - hi_i) if i > hi_i else i
        t += length
    return events


def _chords_part(rng, chords, strum, comp):
    """Each chord held, or comped in quarter-note hits; ``strum`` staggers the voices by that many steps."""
    events = []
    for start, length, tones in chords:
        hits = [(s, min(4, start + length - s)) for s in range(start, start + length, 4)] if comp else [(start, length)]
        for s, hl in hits:
            vel = rng.uniform(0.6, 0.9)
            events += [(s + strum * k, hl - strum * k, p, vel) for k, p in enumerate(tones)]
    return events


def _arpeggio(rng, chords, fast):
    rate = 1 if fast else int(rng.choice((1, 2)))
    shape = rng.choice(("up", "down", "updown"))
    events = []
    for start, length, tones in chords:
        seq = tones + [t + 12 for t in tones[:2]]
        seq = seq[::-1] if shape == "down" else seq + seq[-2:0:-1] if shape == "updown" else seq
        for k, s in enumerate(range(start, start + length, rate)):
            events.append((s, rate, seq[k % len(seq)], 0.9 if s % 4 == 0 else rng.uniform(0.55, 0.8)))
    return events


def _bassline(rng, pitches, n_scale, progression, lo):
    cell = _BASS_CELLS[rng.integers(len(_BASS_CELLS))]
    events = []
    for start, length, degree in progression:
        i = degree % n_scale
        while pitches[i] < lo:
            i += n_scale
        for s0 in range(start, start + length, 8):
            for k, (step, off) in enumerate(cell):
                nxt = cell[k + 1][0] if k + 1 < len(cell) else 8
                j = i + (n_scale if off == "octave" else off)
                vel = 1.0 if step == 0 else rng.uniform(0.6, 0.9)
                events.append((s0 + step, nxt - step, int(pitches[j]), vel))
    return events


# ---- pitched voices: each returns a float32 layer of n samples -----------------------------------------------
def _poly(notes, n, note_fn):
    out = np.zeros(n, np.float32)
    for start, gate, midi, vel in notes:
        if start < n:
            sig = note_fn(float(_hz(midi)), gate, n - start) * vel
            out[start : start + len(sig)] += sig
    return out


def _keys(notes, n, sr, rng, bright):
    decay = rng.uniform(1.0, 3.0)
    tilt = 1.7 - 0.8 * bright + rng.uniform(-0.2, 0.2)
    stretch = rng.uniform(0.0, 3e-4)
    rel, click = int(0.06 * sr), int(0.006 * sr)

    def note(f, gate, limit):
        hold = min(gate, int(3 * decay * sr))
        m = min(hold + rel, limit)
        t = np.arange(m, dtype=np.float32) / sr
        sig = np.zeros(m, np.float32)
        for h in range(1, 11):
            fh = f * h * np.sqrt(1 + stretch * h * h)
            if fh > 0.42 * sr:
                break
            sig += h**-tilt * np.exp(t * np.float32(-(h**0.7) / decay)) * _sine(fh, m, sr)
        k = min(click, m)  # hammer: a short decaying noise burst
        sig[:k] += (0.1 + 0.15 * bright) * rng.standard_normal(k).astype(np.float32) * np.exp(-t[:k] / 0.0015)
        return sig * _env(m, int(0.002 * sr), hold, rel)

    return _poly(notes, n, note)


def _pluck(notes, n, sr, rng, bright):
    """Karplus-Strong, vectorised: the delay line of one period is filtered once per period in the frequency
    domain (all periods at once), then resampled so the integer-length loop plays at the exact pitch."""
    tau = rng.uniform(0.2, 0.6)
    hf_loss = 1.2 - 0.7 * bright  # exponent on the loop's cos() damping; lower keeps overtones longer
    corner = 1500 + 4500 * bright
    pick = rng.uniform(0.08, 0.3)
    rel = int(0.04 * sr)

    def note(f, gate, limit):
        period = sr / f
        N = max(int(period), 2)
        hold = int(4 * tau * sr)  # strings ring on past the note
        m = min(hold + rel, limit)
        exc = rng.standard_normal(N)
        exc -= np.roll(exc, max(1, round(pick * N)))
        harmonic = np.arange(N // 2 + 1)
        X = np.fft.rfft(exc) / (1 + (harmonic * f / corner) ** 2)
        loss = np.exp(-1 / (f * tau * (220 / f) ** 0.3)) * np.abs(np.cos(np.pi * harmonic / N)) ** hf_loss
        K = int(m / period) + 2
        y = np.fft.irfft(X * loss ** np.arange(K)[:, None], N, axis=1).ravel()
        y /= max(float(np.std(y[:N])), 1e-9)
        out = np.interp(np.arange(m) * (N / period), np.arange(len(y)), y).astype(np.float32)
        return 0.5 * out * _env(m, int(0.001 * sr), hold, rel)

    return _poly(notes, n, note)


def _bell(notes, n, sr, rng, bright):
    ratio = float(rng.choice((1.4, 2.76, 3.5, 1.73, 4.21)))
    index = rng.uniform(1.5, 4.0) * (0.5 + 0.8 * bright)
    decay = rng.uniform(1.0, 2.5)
    rel = int(0.05 * sr)

    def note(f, gate, limit):
        tau = decay * (523 / f) ** 0.25
        hold = max(gate, int(3 * tau * sr))  # bells ring on past the note
        m = min(hold + rel, limit)
        t = np.arange(m, dtype=np.float32) / sr
        fm = ratio * f
        idx = min(index, max(0.0, (0.42 * sr - f) / fm - 1))
        mod = idx * np.exp(-t / np.float32(0.3 * tau)) * _sine(fm, m, sr)
        carrier = np.sin(_phase(f, m, sr) + mod)
        return carrier * np.exp(-t / np.float32(tau)) * _env(m, int(0.001 * sr), hold, rel)

    return _poly(notes, n, note)


def _pad(notes, n, sr, rng, bright):
    detunes = rng.uniform(4, 14) * np.array((-1.0, 0.0, 1.0))
    attack, rel = int(rng.uniform(0.15, 0.6) * sr), int(rng.uniform(0.3, 0.8) * sr)

    def note(f, gate, limit):
        m = min(gate + rel, limit)
        sig = np.zeros(m, np.float32)
        for cents in detunes:
            dt = f * 2 ** (cents / 1200) / sr
            sig += _osc((np.arange(m) * dt + rng.random()) % 1.0, dt, square=False)
        return sig * _env(m, attack, gate, rel)

    layer = _poly(notes, n, note)
    cutoff = _cut(500 + 4000 * bright * rng.uniform(0.7, 1.3), sr)
    fx = [pb.LadderFilter(mode=pb.LadderFilter.Mode.LPF24, cutoff_hz=cutoff, resonance=rng.uniform(0.0, 0.4))]
    if rng.random() < 0.5:
        fx.append(pb.Chorus(rate_hz=rng.uniform(0.3, 1.5), depth=0.3, mix=0.5))
    return pb.Pedalboard(fx)(layer, sr)


def _organ(notes, n, sr, rng, bright):
    levels = rng.integers(0, 9, len(_DRAWBARS)) * np.array((1, 1, 1, 1, 1, 0.5 + bright, 0.5 + bright, bright, bright))
    levels[2] = max(levels[2], 6)  # the 8' fundamental always sounds
    rel = int(0.02 * sr)

    def note(f, gate, limit):
        m = min(gate + rel, limit)
        sig = np.zeros(m, np.float32)
        for ratio, level in zip(_DRAWBARS, levels):
            if level and ratio * f < 0.42 * sr:
                sig += level / 8 * _sine(ratio * f, m, sr)
        return sig * _env(m, int(0.004 * sr), gate, rel)

    layer = _poly(notes, n, note)
    if rng.random() < 0.5:  # rotary-speaker wobble
        layer = pb.Chorus(rate_hz=rng.uniform(0.8, 6.0), depth=0.2, centre_delay_ms=3.0, mix=0.5)(layer, sr)
    return layer


def _mono(notes, n, sr, rng, glide_s, vibrato, square, sustain, decay):
    """Monophonic saw/square line: glide between notes, vibrato, per-note decay to a sustain level."""
    starts = np.array([s for s, _, _, _ in notes])
    idx = np.maximum(np.searchsorted(starts, np.arange(n), side="right") - 1, 0)
    pitch = np.array([p for _, _, p, _ in notes], np.float64)
    midi = _smooth(pitch[idx], int(glide_s * sr), before=pitch[0]).astype(np.float64)
    t = np.arange(n) / sr
    if vibrato:
        depth, rate = rng.uniform(0.1, 0.35), rng.uniform(4.5, 6.5)
        midi = midi + depth * np.sin(2 * np.pi * rate * t) * np.minimum(1.0, (t - starts[idx] / sr) / 0.3)
    dt = _hz(midi) / sr
    phase = (np.cumsum(dt) + rng.random()) % 1.0
    gate = np.zeros(n, np.float32)
    for s, g, _, vel in notes:
        gate[s : s + g] = vel
    shape = sustain + (1 - sustain) * np.exp(-(t - starts[idx] / sr) / decay)
    return _osc(phase, dt, square) * _smooth(gate * shape, int(0.006 * sr))


def _lead(notes, n, sr, rng, bright):
    layer = _mono(notes, n, sr, rng, rng.uniform(0.02, 0.08), True, rng.random() < 0.4, rng.uniform(0.6, 0.9), 0.3)
    return pb.LowpassFilter(_cut(1500 + 6000 * bright, sr))(layer, sr)


def _bass(notes, n, sr, rng, bright):
    layer = _mono(notes, n, sr, rng, 0.0, False, rng.random() < 0.5, rng.uniform(0.3, 0.8), rng.uniform(0.08, 0.3))
    cutoff = _cut((250 + 1200 * bright) * rng.uniform(0.8, 1.3), sr)
    ladder = pb.LadderFilter(mode=pb.LadderFilter.Mode.LPF24, cutoff_hz=cutoff, resonance=rng.uniform(0.1, 0.5))
    return ladder(layer, sr)


_VOICES = {"keys": _keys, "pluck": _pluck, "bell": _bell, "pad": _pad, "organ": _organ, "bass": _bass, "lead": _lead}


# ---- drums -------------------------------------------------------------------------------------------------
def _drum_kit(rng, sr, bright):
    def hit(decay, sig):
        m = len(sig)
        t = np.arange(m, dtype=np.float32) / sr
        fade = int(0.005 * sr)
        return (sig * np.exp(-t / decay) * _env(m, int(0.0005 * sr), m - fade, fade)).astype(np.float32)

    def noise(seconds):
        return rng.standard_normal(int(seconds * sr)).astype(np.float32)

    m = int(0.45 * sr)
    t = np.arange(m) / sr
    f0, f1 = rng.uniform(110, 200), rng.uniform(42, 60)
    sweep = f1 + (f0 - f1) * np.exp(-t / rng.uniform(0.02, 0.06))
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / sr).astype(np.float32)
    kick[: int(0.002 * sr)] += 0.3 * noise(0.002)
    def hp(cutoff, x):
        return pb.LadderFilter(mode=pb.LadderFilter.Mode.HPF24, cutoff_hz=_cut(cutoff, sr))(x, sr)

    m = int(0.3 * sr)
    snare = 0.6 * _sine(rng.uniform(170, 240), m, sr) * np.exp(-np.arange(m) / (0.04 * sr)).astype(np.float32)
    snare += hp(1200 + 1500 * bright, noise(0.3))
    hat_cut = 6000 + 2500 * bright
    return {
        "kick": hit(rng.uniform(0.15, 0.35), kick),
        "snare": hit(rng.uniform(0.07, 0.15), snare),
        "hat": 0.5 * hit(rng.uniform(0.01, 0.025), hp(hat_cut, noise(0.08))),
        "open": 0.4 * hit(rng.uniform(0.08, 0.15), hp(hat_cut, noise(0.35))),
    }


def _drums(rng, n, sr, grid, n_steps, bright):
    kit = _drum_kit(rng, sr, bright)
    kicks = _KICKS[rng.integers(len(_KICKS))]
    snares = _SNARES[rng.integers(len(_SNARES))]
    hats = range(0, 16, int(rng.choice((1, 2, 2, 4)))) if rng.random() < 0.85 else (2, 6, 10, 14)
    open_hat = rng.random() < 0.3
    events = []
    for bar in range(0, n_steps, 16):
        events += [(bar + s, "kick", rng.uniform(0.85, 1.0)) for s in kicks]
        events += [(bar + s, "snare", rng.uniform(0.8, 1.0) if s in (4, 8, 12) else 0.4) for s in snares]
        events += [(bar + s, "open" if open_hat and s == 14 else "hat", 0.9 if s % 4 == 0 else rng.uniform(0.4, 0.75))
                   for s in hats]
    out = np.zeros(n, np.float32)
    for step, kind, vel in events:
        start = grid.onset(step)
        if start < n:
            sig = kit[kind][: n - start]
            out[start : start + len(sig)] += vel * sig
    return out


# ---- the clip --------------------------------------------------------------------------------------------------
def _pitched(rng, timbre, n, sr, grid, n_steps, tempo, bright):
    """One pitched part (melody, chords, arpeggio or bassline) in a random key and scale, played by ``timbre``.
    Returns the audio and what was played (part, key, scale, articulation) for the captions."""
    root, scale_name = int(rng.integers(12)), str(rng.choice(list(_SCALES)))
    scale = _SCALES[scale_name]
    pitches = _scale_pitches(root, scale)
    lo, hi = _REGISTER[timbre]
    chord_len = int(rng.choice((8, 16)))
    degrees = _PROGRESSIONS[rng.integers(len(_PROGRESSIONS))]
    progression = [(s, chord_len, degrees[k % 4]) for k, s in enumerate(range(0, n_steps, chord_len))]
    seventh, inversion = rng.random() < 0.3, int(rng.integers(3))
    chords = [(s, ln, _chord_tones(pitches, len(scale), d, lo, seventh, inversion)) for s, ln, d in progression]
    part = str(rng.choice(_PARTS[timbre]))
    if part == "melody":
        events = _melody(rng, pitches, lo, hi, n_steps)
    elif part == "chords":
        comp = timbre != "pad" and rng.random() < 0.5
        events = _chords_part(rng, chords, 0.15 if timbre == "pluck" else 0.0, comp)
    elif part == "arpeggio":
        events = _arpeggio(rng, chords, tempo >= FAST_BPM)
    else:
        events = _bassline(rng, pitches, len(scale), progression, lo)
    legato = rng.uniform(*{"pad": (1.0, 1.0), "organ": (1.0, 1.0), "lead": (0.85, 1.0)}.get(timbre, (0.5, 1.0)))
    notes = [(grid.onset(s), max(1, int(ln * grid.step_n * legato)), p, v) for s, ln, p, v in events]
    played = {"part": part, "key": _NOTE_NAMES[root], "scale": scale_name,
              "articulation": "legato" if legato >= 0.85 else "staccato" if legato < 0.65 else "detached"}
    return _VOICES[timbre](notes, n, sr, rng, bright), played


def _effects(rng, tone, grid, sr):
    """The clip's effects chain and the production tags it earns."""
    fx, tags = [], set()
    if rng.random() < 0.2:
        fx += [pb.Distortion(drive_db=rng.uniform(18, 30)), pb.LowpassFilter(_cut(7000, sr))]
        tags.add("distorted")
    if tone == "bright":
        fx += [pb.HighpassFilter(rng.uniform(120, 250)),
               pb.HighShelfFilter(_cut(rng.uniform(2500, 4000), sr), rng.uniform(6, 10))]
    elif tone == "dark":
        fx.append(pb.LadderFilter(mode=pb.LadderFilter.Mode.LPF24, cutoff_hz=rng.uniform(700, 1500),
                                  resonance=rng.uniform(0, 0.2)))
    if rng.random() < 0.15:  # an untagged echo, for variety
        fx.append(pb.Delay(delay_seconds=grid.step_n * int(rng.choice((2, 3, 4))) / sr,
                           feedback=rng.uniform(0.2, 0.4), mix=rng.uniform(0.15, 0.3)))
    if rng.random() < 0.35:
        fx.append(pb.Reverb(room_size=rng.uniform(0.6, 0.95), damping=rng.uniform(0.2, 0.6),
                            wet_level=rng.uniform(0.3, 0.5), dry_level=rng.uniform(0.5, 0.7)))
        tags.add("reverb")
    return pb.Pedalboard(fx), tags


@dataclass
class RenderedClip:
    """A rendered clip: the mix, its tags (STYLE_VOCAB order), what was played (``info``: timbre, part, key,
    scale, articulation, tempo, tone, drums; the captions are written from it) and, when asked for and the clip
    has both, the two stems ("pitched", "drums") through the clip's effects at the mix's gain (jamming pairs)."""

    audio: np.ndarray
    tags: list[str]
    info: dict
    stems: dict[str, np.ndarray]


def render_clip(seed: int, sample_rate: int = 22050, seconds: float = 4.0) -> tuple[np.ndarray, list[str]]:
    """Deterministic for a seed: float32 mono clip of round(seconds * sample_rate) samples at about -20 dBFS RMS
    with peak <= 0.99, and its tags in STYLE_VOCAB order."""
    clip = render_clip_parts(seed, sample_rate, seconds)
    return clip.audio, clip.tags


def render_clip_parts(seed: int, sample_rate: int = 22050, seconds: float = 4.0, stems: bool = False) -> RenderedClip:
    """:func:`render_clip` with what was played and, with ``stems``, the clip's two stems (see RenderedClip)."""
    sr = int(sample_rate)
    n = round(seconds * sr)
    if sr < 8000 or n < 1:
        raise ValueError(f"need sample_rate >= 8000 and at least one sample, got {sample_rate} Hz x {seconds} s")
    rng = np.random.default_rng(seed)
    draw = rng.random()
    timbre = None if draw < 0.1 else _PITCHED[rng.integers(len(_PITCHED))]  # 10% drums only
    drums = draw < 0.35  # 25% pitched + drums
    tempo = rng.uniform(60.0, 170.0)
    tone = str(rng.choice(("bright", "dark", "neutral"), p=(0.3, 0.3, 0.4)))
    bright = {"dark": 0.0, "neutral": 0.5, "bright": 1.0}[tone]
    grid = _Grid(sr * 15.0 / tempo, rng.uniform(0.1, 0.25) if rng.random() < 0.2 else 0.0)
    n_steps = int(np.ceil(n / grid.step_n)) + 1

    parts = {}
    info = {"timbre": timbre or "drums", "tempo": round(float(tempo), 1), "tone": tone, "drums": drums,
            "swing": grid.swing > 0}
    if timbre is not None:
        audio, played = _pitched(rng, timbre, n, sr, grid, n_steps, tempo, bright)
        parts["pitched"] = _unit_rms(audio)
        info.update(played)
    if drums:
        level = rng.uniform(0.5, 0.9) if timbre is not None else 1.0
        parts["drums"] = level * _unit_rms(_drums(rng, n, sr, grid, n_steps, bright))
    mix = np.zeros(n, np.float32)
    for part in parts.values():
        mix += part
    board, tags = _effects(rng, tone, grid, sr)
    tags |= {t for t in (timbre, "drums" if drums else None, tone) if t in STYLE_VOCAB}
    tags |= {"fast"} if tempo >= FAST_BPM else {"slow"} if tempo <= SLOW_BPM else set()

    mix_rms = max(float(np.sqrt(np.mean(np.square(mix, dtype=np.float64)))), 1e-9)
    processed = board(TARGET_RMS * _unit_rms(mix), sr).astype(np.float64)
    gain = TARGET_RMS / max(float(np.sqrt(np.mean(np.square(processed)))), 1e-9)
    audio = (gain * processed).astype(np.float32)
    peak = float(np.max(np.abs(audio)))
    if peak > PEAK:
        audio *= np.float32(PEAK / peak)
        gain *= PEAK / peak
    stem_audio = {}
    if stems and len(parts) == 2:
        stem_audio = {name: (gain * board(TARGET_RMS * part / mix_rms, sr, reset=True)).astype(np.float32)
                      for name, part in parts.items()}
    return RenderedClip(audio, sorted(tags, key=STYLE_VOCAB.index), info, stem_audio)


def style_vector(tags, vocab=STYLE_VOCAB) -> np.ndarray:
    """float32 multi-hot vector of ``tags`` over ``vocab``."""
    vocab = tuple(vocab)
    vec = np.zeros(len(vocab), np.float32)
    for tag in tags:
        if tag not in vocab:
            raise ValueError(f"unknown style tag {tag!r}; the vocabulary is {', '.join(vocab)}")
        vec[vocab.index(tag)] = 1.0
    return vec


# ---- corpus on disk --------------------------------------------------------------------------------------------
def _clip_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence((seed, index)).generate_state(1)[0])


def _render_to_file(job):
    path, clip_seed, sample_rate, seconds = job
    clip = render_clip_parts(clip_seed, sample_rate, seconds)
    sf.write(path, clip.audio, sample_rate, subtype="PCM_16")
    return clip.tags, clip.info


def write_corpus(out_dir, n_clips: int, seconds: float = 4.0, sample_rate: int = 22050,
                 heldout_fraction: float = 0.1, seed: int = 0, jobs: int = 1, progress: bool = True) -> Path:
    """Render ``n_clips`` clips to out_dir/clips/NNNNN.wav (PCM_16) and describe them in out_dir/metadata.jsonl.

    A deterministic ~heldout_fraction of the clips is marked "heldout" (at least one when the fraction is positive
    and there are two clips or more). Returns at once if out_dir/corpus.json records the same settings.
    """
    out = Path(out_dir)
    if n_clips < 1 or not 0.0 <= heldout_fraction < 1.0 or jobs < 1:
        raise ValueError(f"need n_clips >= 1, 0 <= heldout_fraction < 1 and jobs >= 1; "
                         f"got {n_clips}, {heldout_fraction}, {jobs}")
    settings = {"version": CORPUS_VERSION, "n_clips": int(n_clips), "seconds": float(seconds),
                "sample_rate": int(sample_rate), "seed": int(seed), "heldout_fraction": float(heldout_fraction)}
    marker = out / CORPUS_NAME
    if (out / METADATA_NAME).exists() and marker.exists():
        try:
            if json.loads(marker.read_text()) == settings:
                return out
        except json.JSONDecodeError:
            pass
    marker.unlink(missing_ok=True)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    for stale in (out / "clips").glob("*.wav"):
        if not (stale.stem.isdigit() and int(stale.stem) < n_clips):
            stale.unlink()

    n_held = min(n_clips - 1, max(1, round(n_clips * heldout_fraction))) if heldout_fraction > 0 else 0
    held = set(np.random.default_rng((seed, 1)).choice(n_clips, n_held, replace=False).tolist())
    seeds = [_clip_seed(seed, i) for i in range(n_clips)]
    files = [f"clips/{i:05d}.wav" for i in range(n_clips)]
    jobs_list = [(str(out / f), s, int(sample_rate), float(seconds)) for f, s in zip(files, seeds)]
    with multiprocessing.Pool(jobs) if jobs > 1 else contextlib.nullcontext() as pool:
        results = pool.imap(_render_to_file, jobs_list, chunksize=8) if pool else map(_render_to_file, jobs_list)
        rendered = list(tqdm(results, total=n_clips, desc="corpus", unit="clip", disable=not progress))

    rows = [{"file": files[i], "tags": rendered[i][0], "info": rendered[i][1], "split": "heldout" if i in held else "train", "seed": seeds[i],
             "seconds": float(seconds), "sample_rate": int(sample_rate)} for i in range(n_clips)]
    (out / METADATA_NAME).write_text("".join(json.dumps(row) + "\n" for row in rows))
    marker.write_text(json.dumps(settings, indent=1))
    return out


def read_metadata(corpus_dir) -> list[dict]:
    """Parse corpus_dir/metadata.jsonl; a missing file or a malformed line raises ValueError naming it."""
    path = Path(corpus_dir) / METADATA_NAME
    if not path.is_file():
        raise ValueError(f"{path}: no such corpus metadata file")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
        if not (isinstance(record, dict) and {"file", "tags", "split"} <= record.keys()
                and isinstance(record["tags"], list) and record["split"] in ("train", "heldout")):
            raise ValueError(f"{path}, line {number}: expected a JSON object with 'file', a 'tags' list and "
                             f"'split' of 'train' or 'heldout'")
        records.append(record)
    return records
