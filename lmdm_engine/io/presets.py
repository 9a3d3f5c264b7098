"""Presets: one human-editable TOML file per preset, validated against a single schema.

``SCHEMA`` is the only place the fields, types, ranges, defaults and help texts are written; the ``Preset``
dataclass defaults, the loader, every error message and ``describe_schema()`` read it from there.

The optional ``pre`` and ``post`` chains are lists of plugin tables (see ``chains.py``): pedalboard effects run
before and after the model by ``GenerativeDelay`` and ``lmdm process``; a bare ``Session`` ignores them.
Relative plugin and impulse-response paths in a preset file are relative to that file.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .chains import ChainError, builtin_plugins, check_plugin_table
from lmdm_engine.core.config import STYLE_VOCAB

PRESET_PACKAGE = "lmdm_presets"
PRESET_SUFFIX = ".toml"


class PresetError(ValueError):
    """A preset that cannot be used; the message names the file, the field and what is allowed."""


@dataclass(frozen=True)
class FieldSpec:
    """One preset field: its kind ('str', 'float', 'int', 'choice', 'style' or 'chain'), default, limits and help."""

    name: str
    kind: str
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    required: bool = False

    def allowed(self) -> str:
        """What the field accepts, as written in errors and in describe_schema()."""
        if self.kind == "str":
            return "a string"
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "style":
            return f"a table of style tag -> weight, a float in [{self.low}, {self.high}]"
        if self.kind == "chain":
            return "a list of plugin tables: 'plugin' (a pedalboard built-in or a .vst3 path) and its parameters"
        noun = "an integer" if self.kind == "int" else "a number"
        return f"{noun} in [{self.low}, {self.high}]"


_FIELDS = (
    FieldSpec("name", "str", None, "Preset name; must equal the file name without .toml.", required=True),
    FieldSpec("description", "str", "", "One line for musicians: what the preset sounds like."),
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
    FieldSpec("pre", "chain", (), "Pedalboard plugins the input goes through before the model, in order."),
    FieldSpec("post", "chain", (), "Pedalboard plugins the output goes through after the model (dry and echoes)."),
)
SCHEMA: dict[str, FieldSpec] = {f.name: f for f in _FIELDS}  # in file order


def _default(name: str):
    spec = SCHEMA[name]
    if isinstance(spec.default, dict):
        return dataclasses.field(default_factory=dict)
    return dataclasses.field(default=spec.default)


def _close_match(word: str, options) -> str:
    match = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _number(spec: FieldSpec, value, label: str, source: str) -> float | int:
    """Check one number against its spec: ints pass for floats, bools never pass, ranges are inclusive."""
    ok_types = (int,) if spec.kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise PresetError(
            f"{source}: field '{label}' = {value!r} has type {type(value).__name__}; expected {spec.allowed()}"
        )
    value = int(value) if spec.kind == "int" else float(value)
    if not (spec.low <= value <= spec.high):  # also rejects nan
        raise PresetError(f"{source}: field '{label}' = {value!r} is out of range [{spec.low}, {spec.high}]")
    return value


def _check(spec: FieldSpec, value, source: str, base_dir: Path | None = None):
    """Validate one field value and return it normalised (floats as float, style as a fresh dict, a chain as a
    tuple of fresh tables whose relative paths are joined to ``base_dir``)."""
    if spec.kind == "str":
        if not isinstance(value, str):
            raise PresetError(f"{source}: field '{spec.name}' = {value!r} must be {spec.allowed()}")
        if spec.required and not value.strip():
            raise PresetError(f"{source}: field '{spec.name}' must not be empty")
        return value
    if spec.kind == "choice":
        if value not in spec.choices:
            raise PresetError(
                f"{source}: field '{spec.name}' = {value!r} is not allowed; expected {spec.allowed()}"
                + (_close_match(value, spec.choices) if isinstance(value, str) else "")
            )
        return value
    if spec.kind == "style":
        if not isinstance(value, dict):
            raise PresetError(f"{source}: field 'style' = {value!r} must be {spec.allowed()}")
        style = {}
        for tag, weight in value.items():
            if tag not in spec.choices:
                raise PresetError(
                    f"{source}: field 'style' has unknown tag {tag!r}{_close_match(str(tag), spec.choices)}; "
                    f"known tags: {', '.join(spec.choices)}"
                )
            style[tag] = _number(spec, weight, f"style.{tag}", source)
        return style
    if spec.kind == "chain":
        if not isinstance(value, (list, tuple)):
            raise PresetError(
                f"{source}: field '{spec.name}' = {value!r} must be {spec.allowed()}, e.g. "
                f"{spec.name} = [{{plugin = \"Reverb\", room_size = 0.5}}]"
            )
        try:
            return tuple(
                check_plugin_table(table, f"{source}: field '{spec.name}[{i}]'", base_dir)
                for i, table in enumerate(value)
            )
        except ChainError as e:
            raise PresetError(str(e)) from None
    return _number(spec, value, spec.name, source)


@dataclass(frozen=True)
class Preset:
    """Parameters of the generative delay; see SCHEMA (or describe_schema()) for each field."""

    name: str
    description: str = _default("description")
    delay_seconds: float = _default("delay_seconds")
    strength: float = _default("strength")
    feedback: float = _default("feedback")
    mix: float = _default("mix")
    steps: int = _default("steps")
    sampler: str = _default("sampler")
    seed: int = _default("seed")
    mode: str = _default("mode")
    prompt: str = _default("prompt")
    guidance: float = _default("guidance")
    style: dict[str, float] = _default("style")
    pre: tuple[dict, ...] = _default("pre")
    post: tuple[dict, ...] = _default("post")

    def __post_init__(self):
        for spec in SCHEMA.values():
            object.__setattr__(self, spec.name, _check(spec, getattr(self, spec.name), f"preset {self.name!r}"))


def preset_from_dict(d: dict, source: str = "<dict>", base_dir: Path | None = None) -> Preset:
    """Validate a mapping of field -> value (as read from TOML) and build a Preset; relative paths in chains are
    joined to ``base_dir`` (the preset file's folder)."""
    if not isinstance(d, dict):
        raise PresetError(f"{source}: expected a table of fields, got {type(d).__name__}")
    for key in d:
        if key not in SCHEMA:
            raise PresetError(
                f"{source}: unknown field {key!r}{_close_match(str(key), SCHEMA)}; "
                f"known fields: {', '.join(SCHEMA)}"
            )
    for spec in SCHEMA.values():
        if spec.required and spec.name not in d:
            raise PresetError(f"{source}: missing required field '{spec.name}' ({spec.help})")
    return Preset(**{key: _check(SCHEMA[key], value, source, base_dir) for key, value in d.items()})


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in escaped) + '"'
    return repr(value) if isinstance(value, float) else str(value)


def preset_to_toml(p: Preset) -> str:
    """The preset as TOML text that load_preset reads back to an equal Preset."""
    scalars = [spec for spec in SCHEMA.values() if spec.kind not in ("style", "chain")]
    lines = [f"{spec.name} = {_toml_value(getattr(p, spec.name))}" for spec in scalars]
    if p.style:
        lines += ["", "[style]"]
        lines += [f"{tag} = {_toml_value(p.style[tag])}" for tag in STYLE_VOCAB if tag in p.style]
    for spec in SCHEMA.values():
        for table in getattr(p, spec.name) if spec.kind == "chain" else ():
            lines += ["", f"[[{spec.name}]]"]
            lines += [f"{_toml_key(key)} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else _toml_value(key)


def shipped_presets() -> dict[str, Path]:
    """Name -> path of the presets shipped in the ``lmdm_presets`` package.

    In a source checkout where the package is not installed, the repository's ``presets/`` folder is used.
    """
    try:
        folder = Path(str(importlib.resources.files(PRESET_PACKAGE)))
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parents[2] / "presets"
    return {p.stem: p for p in sorted(folder.glob("*" + PRESET_SUFFIX))}


def _load_file(path: Path) -> Preset:
    if not path.is_file():
        raise PresetError(f"{path}: no such preset file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{path}: TOML syntax error: {e}") from None
    except UnicodeDecodeError as e:
        raise PresetError(f"{path}: not UTF-8 text ({e})") from None
    preset = preset_from_dict(data, source=str(path), base_dir=path.parent)
    if preset.name != path.stem:
        raise PresetError(f"{path}: field 'name' = {preset.name!r} must equal the file name {path.stem!r}")
    return preset


def load_preset(path_or_name: str | Path) -> Preset:
    """Load a preset from a ``.toml`` path, or by the name of a shipped preset."""
    text = str(path_or_name)
    if isinstance(path_or_name, Path) or text.endswith(PRESET_SUFFIX) or "/" in text or "\\" in text:
        return _load_file(Path(path_or_name))
    shipped = shipped_presets()
    if text not in shipped:
        raise PresetError(
            f"unknown preset {text!r}{_close_match(text, shipped)}; available presets: {', '.join(shipped)}"
        )
    return _load_file(shipped[text])


def unplayable_reason(preset: Preset, config) -> str | None:
    """Why a model with ``config`` (a ModelConfig) cannot play ``preset``, naming the field: a prompt needs a text
    model, jam mode a jamming one. None when it can."""
    if preset.prompt and not config.text_dim:
        return (f"field 'prompt' = {preset.prompt!r} needs a text model; this one takes no text prompts (its config "
                f"has text_dim 0): use style tags instead")
    if preset.mode == "jam" and not config.accompaniment:
        return ("field 'mode' = 'jam' needs a jamming model; this one was not trained to jam (its config has "
                "accompaniment false)")
    return None


def list_presets() -> list[Preset]:
    """Every shipped preset, loaded and validated, sorted by name."""
    return [_load_file(path) for path in shipped_presets().values()]


def describe_schema() -> str:
    """The preset file format as plain text, for docs and --help."""
    rows = []
    for spec in SCHEMA.values():
        default = {"style": "{}", "chain": "[]"}.get(spec.kind) or _toml_value(spec.default)
        default = "required" if spec.required else f"default {default}"
        rows.append(f"  {spec.name:<14} {spec.allowed()}; {default}\n  {'':<14} {spec.help}")
    return (
        "Preset files are TOML, one per preset, named <name>.toml. Fields (all but 'name' optional):\n"
        + "\n".join(rows)
        + "\nStyle weights go in a [style] table, e.g.\n  [style]\n  bell = 0.8\n  bright = 0.5\n"
        + "Chains are arrays of tables, run in file order; relative paths are relative to the preset file, e.g.\n"
        + '  [[pre]]\n  plugin = "HighpassFilter"\n  cutoff_frequency_hz = 80\n'
        + '  [[post]]\n  plugin = "Reverb"\n  room_size = 0.7\n'
        + "Built-in plugins: " + ", ".join(builtin_plugins()) + "; a VST3 is given by its path (ending in .vst3).\n"
    )


DEFAULT_PRESET = "tape_echo"
