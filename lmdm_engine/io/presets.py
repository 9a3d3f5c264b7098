"""Presets: one human-editable TOML file per preset, the layer above the Session.

A preset is a name, a description, the Session's parameters (``SessionParams``) and the optional ``pre`` and
``post`` chains: lists of plugin tables (see ``chains.py``) that ``GenerativeDelay`` and ``lmdm process`` run
before and after the model. ``SCHEMA`` is the file format: those fields in file order, the Session's read from
``PARAM_SPECS``; the loader, every error message and ``describe_schema()`` read it. Callers (the CLI, the effect,
batch processing, the bridge) resolve a preset with ``resolve_preset`` and hand ``preset.params`` to the Session.
Relative plugin and impulse-response paths in a preset file are relative to that file.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lmdm_engine.core.config import STYLE_VOCAB
from lmdm_engine.core.text import close_match
from lmdm_engine.stream.params import PARAM_SPECS, FieldSpec, ParamsError, SessionParams, check_field, spec_default

from .chains import ChainError, builtin_plugins, check_plugin_table, is_external

PRESET_PACKAGE = "lmdm_presets"
PRESET_SUFFIX = ".toml"
DEFAULT_PRESET = "tape_echo"


class PresetError(ParamsError):
    """A preset that cannot be used; the message names the file, the field and what is allowed."""


_CHAIN_TEXT = "a list of plugin tables: 'plugin' (a pedalboard built-in or a .vst3 path) and its parameters"
SCHEMA: dict[str, FieldSpec] = {f.name: f for f in (  # in file order
    FieldSpec("name", "str", None, "Preset name; must equal the file name without .toml.", required=True),
    FieldSpec("description", "str", "", "One line for musicians: what the preset sounds like."),
    *PARAM_SPECS.values(),
    FieldSpec("pre", "chain", (), "Pedalboard plugins the input goes through before the model, in order.",
              text=_CHAIN_TEXT),
    FieldSpec("post", "chain", (), "Pedalboard plugins the output goes through after the model (dry and echoes).",
              text=_CHAIN_TEXT),
)}


def _chain(spec: FieldSpec, value, source: str, base_dir: Path | None) -> tuple[dict, ...]:
    """A chain field checked and normalised: a tuple of fresh tables, relative paths joined to ``base_dir``."""
    if not isinstance(value, (list, tuple)):
        raise PresetError(source, f"field '{spec.name}' = {value!r} must be {spec.allowed()}, e.g. "
                                  f"{spec.name} = [{{plugin = \"Reverb\", room_size = 0.5}}]")
    try:
        return tuple(check_plugin_table(table, f"field '{spec.name}[{i}]'", base_dir) for i, table in enumerate(value))
    except ChainError as e:
        raise PresetError(source, str(e)) from None


@dataclass(frozen=True)
class Preset:
    """A preset file's fields (see SCHEMA), and ``params``: the SessionParams they hold, validated with them.
    Chains are checked where they are read (``preset_from_dict``: relative paths need the file's folder)."""

    name: str
    description: str = spec_default(SCHEMA["description"])
    delay_seconds: float = spec_default(SCHEMA["delay_seconds"])
    strength: float = spec_default(SCHEMA["strength"])
    feedback: float = spec_default(SCHEMA["feedback"])
    mix: float = spec_default(SCHEMA["mix"])
    steps: int = spec_default(SCHEMA["steps"])
    sampler: str = spec_default(SCHEMA["sampler"])
    seed: int = spec_default(SCHEMA["seed"])
    mode: str = spec_default(SCHEMA["mode"])
    prompt: str = spec_default(SCHEMA["prompt"])
    guidance: float = spec_default(SCHEMA["guidance"])
    style: dict[str, float] = spec_default(SCHEMA["style"])
    pre: tuple[dict, ...] = spec_default(SCHEMA["pre"])
    post: tuple[dict, ...] = spec_default(SCHEMA["post"])

    def __post_init__(self):
        source = f"preset {self.name!r}"
        try:
            for name in ("name", "description"):
                object.__setattr__(self, name, check_field(SCHEMA[name], getattr(self, name), source))
            params = SessionParams(**{name: getattr(self, name) for name in PARAM_SPECS})
        except ParamsError as e:
            raise PresetError(source, e.detail) from None
        for name in PARAM_SPECS:  # normalised (floats as float, a fresh style table)
            object.__setattr__(self, name, getattr(params, name))
        object.__setattr__(self, "params", params)

    def to_dict(self) -> dict:
        """The preset's fields, as a file holds them."""
        return dataclasses.asdict(self)


def plugin_files(preset: Preset) -> list[tuple[str, str]]:
    """(where, path) of every plugin file (VST3 / Audio Unit) the preset's chains load, e.g. ("pre[0]", "/x.vst3"):
    their code runs in the process that builds the chains."""
    return [(f"{field}[{i}]", table["plugin"]) for field in ("pre", "post")
            for i, table in enumerate(getattr(preset, field)) if is_external(table["plugin"])]


def preset_from_dict(d: dict, source: str = "<dict>", base_dir: Path | None = None) -> Preset:
    """Validate a mapping of field -> value (as read from TOML) and build a Preset; errors name ``source``, and
    relative paths in chains are joined to ``base_dir`` (the preset file's folder)."""
    if not isinstance(d, dict):
        raise PresetError(source, f"expected a table of fields, got {type(d).__name__}")
    for key in d:
        if key not in SCHEMA:
            raise PresetError(source, f"unknown field {key!r}{close_match(str(key), SCHEMA)}; "
                                      f"known fields: {', '.join(SCHEMA)}")
    for spec in SCHEMA.values():
        if spec.required and spec.name not in d:
            raise PresetError(source, f"missing required field '{spec.name}' ({spec.help})")
    fields = {key: _chain(SCHEMA[key], value, source, base_dir) if SCHEMA[key].kind == "chain" else value
              for key, value in d.items()}
    try:
        return Preset(**fields)
    except PresetError as e:
        raise PresetError(source, e.detail) from None


def resolve_preset(preset: Preset | str | Path | None = None, overrides: dict | None = None) -> Preset:
    """The one way callers take or load a preset and merge overrides: ``preset`` is a Preset, a shipped name or a
    .toml path (None: DEFAULT_PRESET), ``overrides`` preset fields (chains included) put over it. Errors name the
    preset and the field."""
    base = preset if isinstance(preset, Preset) else load_preset(preset or DEFAULT_PRESET)
    if not overrides:
        return base
    return preset_from_dict({**base.to_dict(), **overrides}, source=f"preset {base.name!r}")


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
        raise PresetError(str(path), "no such preset file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise PresetError(str(path), f"TOML syntax error: {e}") from None
    except UnicodeDecodeError as e:
        raise PresetError(str(path), f"not UTF-8 text ({e})") from None
    # relative plugin paths become absolute: what a preset loads is always said by its full path
    preset = preset_from_dict(data, source=str(path), base_dir=path.resolve().parent)
    if preset.name != path.stem:
        raise PresetError(str(path), f"field 'name' = {preset.name!r} must equal the file name {path.stem!r}")
    return preset


def load_preset(path_or_name: str | Path) -> Preset:
    """Load a preset from a ``.toml`` path, or by the name of a shipped preset."""
    text = str(path_or_name)
    if isinstance(path_or_name, Path) or text.endswith(PRESET_SUFFIX) or "/" in text or "\\" in text:
        return _load_file(Path(path_or_name))
    shipped = shipped_presets()
    if text not in shipped:
        raise PresetError("", f"unknown preset {text!r}{close_match(text, shipped)}; available presets: "
                              f"{', '.join(shipped)}")
    return _load_file(shipped[text])


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

