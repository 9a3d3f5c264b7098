"""Captions for the procedural corpus: varied sentences about what a clip plays, for text-prompt training.

A caption is written from a clip's ``info`` (corpus.RenderedClip: timbre, part, key, scale, articulation, tempo,
tone, drums) and tags (effects): timbre words, register, tempo, articulation and mood words in one of several
phrasings. Two disjoint phrasing sets exist: ``"seen"`` (templates and timbre words used in training) and
``"unseen"`` (other templates and other words for the same timbres, never trained on), so prompt adherence can be
measured on phrasings the model never saw (docs/PROMPTS.md).
"""

from __future__ import annotations

import re

import numpy as np

from lmdm_engine.core.config import TIMBRES

CAPTIONS_VERSION = 1  # bump when the wording changes, so cached caption embeddings are rebuilt
PHRASINGS = ("seen", "unseen")

TIMBRE_WORDS = {
    "seen": {
        "keys": ("electric piano", "keys", "piano", "keyboard"),
        "pluck": ("plucked synth", "pluck", "plucky synth", "pizzicato synth"),
        "bell": ("bells", "chimes", "mallet bells", "bell"),
        "pad": ("synth pad", "pad", "warm pad", "string pad"),
        "organ": ("organ", "drawbar organ", "tonewheel organ", "electric organ"),
        "bass": ("bass", "synth bass", "bass synth", "low bass"),
        "lead": ("lead synth", "synth lead", "saw lead", "mono lead"),
        "drums": ("drums", "drum kit", "beat", "drum groove"),
    },
    "unseen": {
        "keys": ("rhodes", "electric keys"),
        "pluck": ("plucked strings", "kalimba-like synth"),
        "bell": ("glockenspiel", "tubular bells"),
        "pad": ("ambient pad", "lush synth strings"),
        "organ": ("hammond organ", "church organ"),
        "bass": ("bass guitar", "deep sub bass"),
        "lead": ("synth solo", "screaming lead"),
        "drums": ("percussion", "drum machine"),
    },
}
_PART_WORDS = {
    "melody": ("a melody", "a tune", "a melodic line"),
    "chords": ("chords", "a chord progression", "harmony"),
    "arpeggio": ("an arpeggio", "arpeggiated chords", "broken chords"),
    "bassline": ("a bassline", "a low groove"),
    None: ("a beat", "a rhythm", "a groove"),
}
_MOOD_WORDS = {
    "major": ("happy", "uplifting", "cheerful"),
    "minor": ("sad", "melancholic", "moody"),
    "dorian": ("jazzy", "soulful"),
    "pentatonic": ("simple", "folky"),
    None: ("driving", "punchy"),
}
_TONE_WORDS = {"bright": ("bright", "crisp", "airy"), "dark": ("dark", "muffled", "mellow"), "neutral": ("clean", "")}
_ARTICULATION_WORDS = {"legato": ("smooth", "legato", "sustained"), "staccato": ("staccato", "short-note", "choppy"),
                       "detached": ("detached", "bouncy"), None: ("tight", "steady")}
_REGISTER_WORDS = {"bass": "low", "bell": "high", "lead": "high", "drums": ""}
_FX_WORDS = {"distorted": ("distortion", "overdrive"), "reverb": ("lots of reverb", "a big room sound")}

_TEMPLATES = {
    "seen": (
        "{tone} {timbre} playing {part}, {tempo}",
        "{mood} {timbre} {partshort} at {bpm} bpm",
        "{timbre}, {articulation}, {key}, {tempo}",
        "a {tempo} {timbre} {partshort} in {key}{with}",
        "{register} {timbre} with {articulation} notes, {mood} feel",
        "{timbre}{with}",
        "{mood} and {tone} {timbre} {partshort}{drums}",
    ),
    "unseen": (
        "imagine a {timbre} that plays {part}",
        "music for {timbre}: {mood}, {tempo}",
        "I want to hear {timbre}{drums}",
    ),
}


def _tempo_word(bpm: float, rng) -> str:
    words = (("fast", "energetic", "uptempo") if bpm >= 130 else ("slow", "laid-back", "relaxed") if bpm <= 85
             else ("mid-tempo", "steady", "moderate-tempo"))
    return str(rng.choice(words))


def caption(info: dict, tags: list[str], rng: np.random.Generator, phrasing: str = "seen") -> str:
    """One caption of a clip in a random template of ``phrasing`` ("seen" or "unseen")."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}, got {phrasing!r}")
    timbre = info["timbre"]
    if timbre not in TIMBRES:
        raise ValueError(f"unknown timbre {timbre!r}; the corpus's timbres are {', '.join(TIMBRES)}")
    pick = lambda words: str(rng.choice(words))  # noqa: E731
    part = info.get("part")
    fx = [pick(_FX_WORDS[t]) for t in tags if t in _FX_WORDS]
    fields = {
        "timbre": pick(TIMBRE_WORDS[phrasing][timbre]),
        "part": pick(_PART_WORDS[part]),
        "partshort": {"melody": "melody", "chords": "chords", "arpeggio": "arpeggio", "bassline": "bassline",
                      None: "pattern"}[part],
        "mood": pick(_MOOD_WORDS[info.get("scale")]),
        "tone": pick(_TONE_WORDS[info.get("tone", "neutral")]),
        "tempo": _tempo_word(info["tempo"], rng),
        "bpm": int(round(info["tempo"])),
        "articulation": pick(_ARTICULATION_WORDS[info.get("articulation")]),
        "key": f"{info['key']} {info['scale']}" if part else "four on the floor",
        "register": _REGISTER_WORDS.get(timbre, "mid-range"),
        "with": f" with {' and '.join(fx)}" if fx else "",
        "drums": " over drums" if info.get("drums") and timbre != "drums" else "",
    }
    text = " ".join(pick(_TEMPLATES[phrasing]).format(**fields).split()).replace(" ,", ",").strip(" ,")
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


def clip_captions(info: dict, tags: list[str], n: int, seed: int, phrasing: str = "seen") -> list[str]:
    """``n`` captions of one clip, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    return [caption(info, tags, rng, phrasing) for _ in range(n)]


def stem_info(info: dict, stem: str) -> dict:
    """The ``info`` of one stem of a pitched + drums clip ("pitched" or "drums"), for its jamming caption."""
    if stem == "drums":
        return {"timbre": "drums", "tempo": info["tempo"], "tone": info["tone"], "drums": True}
    return {**info, "drums": False}


def timbre_prompts(timbre: str, n: int, seed: int = 0, phrasing: str = "seen") -> list[str]:
    """``n`` prompts asking for ``timbre`` with random other attributes (prompt-adherence evaluation)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        info = {"timbre": timbre, "tempo": float(rng.uniform(60, 170)),
                "tone": str(rng.choice(("bright", "dark", "neutral"))), "drums": False}
        if timbre != "drums":
            info.update(part="bassline" if timbre == "bass" else str(rng.choice(("melody", "chords", "arpeggio"))),
                        key="C", scale=str(rng.choice(("major", "minor", "dorian", "pentatonic"))),
                        articulation=str(rng.choice(("legato", "staccato", "detached"))))
        out.append(caption(info, [], rng, phrasing))
    return out
