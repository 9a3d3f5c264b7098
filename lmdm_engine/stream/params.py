"""``SessionParams``: everything a Session needs, validated once, as one frozen dataclass.

``PARAM_SPECS`` is the only place the fields, types, ranges, defaults and help texts are written; the dataclass
defaults, every error message and the preset file format (io/presets.py, which adds a name, a description and
plugin chains around these fields) read them from there. Every field may change live, between blocks
(``Session.set_params``); ``replace(**changes)`` validates the result and names the field and the range at fault.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from lmdm_engine.core.config import STYLE_VOCAB, ModelConfig
from lmdm_engine.core.text import close_match


class ParamsError(ValueError):
    """Parameters that cannot be used; the message names where they came from, the field and what is allowed."""

    def __init__(self, source: str, detail: str):
        super().__init__(f"{source}: {detail}" if source else detail)
        self.detail = detail


@dataclass(frozen=True)
class FieldSpec:
    """One field: its kind ('str', 'float', 'int', 'choice', 'style', or another a caller checks, such as a preset's
    'chain'), default, limits and help; ``text`` says what a field of another kind accepts."""

    name: str
    kind: str
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    required: bool = False
    text: str = ""

    def allowed(self) -> str:
        """What the field accepts, as written in errors and in the preset schema."""
        if self.kind == "str":
            return "a string"
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "style":
            return f"a table of style tag -> weight, a float in [{self.low}, {self.high}]"
        if self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a number"
            return f"{noun} in [{self.low}, {self.high}]"
        return self.text


_SPECS = (
    FieldSpec("delay_seconds", "float", 0.5, "Delay time in seconds (= the model's block length).", 0.1, 1.5),
    FieldSpec(
        "strength", "float", 0.6, "How far each echo is re-generated: 0 = plain delay, 1 = free continuation.",
        0.0, 1.0,
    ),
    FieldSpec("feedback", "float", 0.3, "How much of each echo is fed back into the next one.", 0.0, 0.95),
    FieldSpec("mix", "float", 0.5, "Wet/dry balance: 0 = dry only, 1 = echoes only.", 0.0, 1.0),
    FieldSpec("steps", "int", 8, "Denoising steps per block: more is cleaner and slower.", 1, 50),
    FieldSpec(
        "sampler", "choice", "pingpong",
        "Sampler: 'pingpong' (re-noises every step: livelier detail) or 'euler' (deterministic, smoother).",
        choices=("euler", "pingpong"),
    ),
    FieldSpec("seed", "int", 0, "Random seed: the same seed gives the same echoes.", 0, 2**31 - 1),
    FieldSpec(
        "mode", "choice", "delay",
        "'delay' (echoes re-generated from what you played) or 'jam' (the model plays a part that accompanies you, "
        "one block ahead; needs a jamming model).",
        choices=("delay", "jam"),
    ),
    FieldSpec("prompt", "str", "", "Text prompt for the generated sound, e.g. \"bright glassy bells\" (text models)."),
    FieldSpec(
        "guidance", "float", 1.0, "Classifier-free guidance scale: how strongly style and prompt are followed; 1 = off "
        "(one model pass per step), above 1 costs two.", 1.0, 8.0,
    ),
    FieldSpec(
        "style", "style", {}, "Style tags and their weights; tags: " + ", ".join(STYLE_VOCAB) + ".", 0.0, 1.0,
        choices=STYLE_VOCAB,
    ),
)
PARAM_SPECS: dict[str, FieldSpec] = {f.name: f for f in _SPECS}  # in file order


def spec_default(spec: FieldSpec):
    """The dataclass field of a spec's default (a fresh dict for a table)."""
    if isinstance(spec.default, dict):
        return dataclasses.field(default_factory=dict)
    return dataclasses.field(default=spec.default)


def _number(spec: FieldSpec, value, label: str, source: str) -> float | int:
    """Check one number against its spec: ints pass for floats, bools never pass, ranges are inclusive."""
    ok_types = (int,) if spec.kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise ParamsError(source, f"field '{label}' = {value!r} has type {type(value).__name__}; "
                                  f"expected {spec.allowed()}")
    value = int(value) if spec.kind == "int" else float(value)
    if not (spec.low <= value <= spec.high):  # also rejects nan
        raise ParamsError(source, f"field '{label}' = {value!r} is out of range [{spec.low}, {spec.high}]")
    return value


def check_field(spec: FieldSpec, value, source: str):
    """Validate one value of a str, choice, style or number field and return it normalised (floats as float, a
    style as a fresh dict); raises ParamsError naming ``source`` and the field."""
    if spec.kind == "str":
        if not isinstance(value, str):
            raise ParamsError(source, f"field '{spec.name}' = {value!r} must be {spec.allowed()}")
        if spec.required and not value.strip():
            raise ParamsError(source, f"field '{spec.name}' must not be empty")
        return value
    if spec.kind == "choice":
        if value not in spec.choices:
            raise ParamsError(source, f"field '{spec.name}' = {value!r} is not allowed; expected {spec.allowed()}"
                                      + (close_match(value, spec.choices) if isinstance(value, str) else ""))
        return value
    if spec.kind == "style":
        if not isinstance(value, dict):
            raise ParamsError(source, f"field 'style' = {value!r} must be {spec.allowed()}")
        style = {}
        for tag, weight in value.items():
            if tag not in spec.choices:
                raise ParamsError(source, f"field 'style' has unknown tag {tag!r}"
                                          f"{close_match(str(tag), spec.choices)}; known tags: {', '.join(spec.choices)}")
            style[tag] = _number(spec, weight, f"style.{tag}", source)
        return style
    return _number(spec, value, spec.name, source)


@dataclass(frozen=True)
class SessionParams:
    """The generative delay's parameters; see PARAM_SPECS for each field."""

    SOURCE: ClassVar[str] = "session parameters"  # how errors name parameters that came from no file
    LIVE: ClassVar[frozenset[str]] = frozenset(PARAM_SPECS)  # fields that may change between blocks: all of them

    delay_seconds: float = spec_default(PARAM_SPECS["delay_seconds"])
    strength: float = spec_default(PARAM_SPECS["strength"])
    feedback: float = spec_default(PARAM_SPECS["feedback"])
    mix: float = spec_default(PARAM_SPECS["mix"])
    steps: int = spec_default(PARAM_SPECS["steps"])
    sampler: str = spec_default(PARAM_SPECS["sampler"])
    seed: int = spec_default(PARAM_SPECS["seed"])
    mode: str = spec_default(PARAM_SPECS["mode"])
    prompt: str = spec_default(PARAM_SPECS["prompt"])
    guidance: float = spec_default(PARAM_SPECS["guidance"])
    style: dict[str, float] = spec_default(PARAM_SPECS["style"])

    def __post_init__(self):
        for spec in PARAM_SPECS.values():
            object.__setattr__(self, spec.name, check_field(spec, getattr(self, spec.name), self.SOURCE))

    @classmethod
    def from_dict(cls, fields: dict, source: str = SOURCE) -> "SessionParams":
        """Parameters from a mapping of field -> value; errors name ``source`` (a file, a preset)."""
        for key in fields:
            if key not in PARAM_SPECS:
                raise ParamsError(source, f"unknown field {key!r}{close_match(str(key), PARAM_SPECS)}; "
                                          f"known fields: {', '.join(PARAM_SPECS)}")
        try:
            return cls(**fields)
        except ParamsError as e:
            raise ParamsError(source, e.detail) from None

    def replace(self, **changes) -> "SessionParams":
        """These parameters with ``changes``, validated."""
        return self.from_dict({**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def unplayable_reason(params: SessionParams, config: ModelConfig) -> str | None:
    """Why a model with ``config`` cannot play ``params``, naming the field: a prompt needs a text model, jam mode a
    jamming one. None when it can."""
    if params.prompt and not config.text_dim:
        return (f"field 'prompt' = {params.prompt!r} needs a text model; this one takes no text prompts (its config "
                f"has text_dim 0): use style tags instead")
    if params.mode == "jam" and not config.accompaniment:
        return ("field 'mode' = 'jam' needs a jamming model; this one was not trained to jam (its config has "
                "accompaniment false)")
    return None
