"""Pedalboard chains around the generative delay.

A plugin is written as a table, the same in a preset's TOML and on the command line:

    {plugin = "HighpassFilter", cutoff_frequency_hz = 80}      # pedalboard built-in, by class name
    {plugin = "/path/to/Echo.vst3", mix = 0.5}                 # VST3 (or macOS Audio Unit) by path
    --pre 'HighpassFilter(cutoff_frequency_hz=80)'             # the command-line form of the first table
    --post '/path/to/Echo.vst3(mix=0.5, plugin_name="Echo")'   # plugin_name picks one plugin of a bundle

Tables are checked when they are read (plugin known, parameter names and types right) and built into pedalboard
plugins by ``build_board``; errors name where the table came from, the plugin and the parameter.

``EffectChain`` runs pedalboard plugins and Python effects (anything with ``process(audio, sample_rate,
reset=...)``: ``GenerativeDelay``, ``lmdm_bridge.BridgeEffect``) one after another as one streamed effect:
pedalboard cannot host a Python effect inside a ``Pedalboard``, so the chain is pre-board -> effect -> post-board.
Every built-in plugin allowed here gives, streamed with ``reset=False``, exactly its whole-buffer output
(tests/test_chains.py checks each one); the five that do not are refused with the reason.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pedalboard

from lmdm_engine.core.text import close_match

VST3_SUFFIXES = (".vst3", ".component")  # load_plugin: VST3 everywhere, Audio Units on macOS
PLUGIN_NAME_KEY = "plugin_name"  # load_plugin's choice of one plugin inside a multi-plugin bundle

# Built-ins whose streamed output is not their whole-buffer output, so a streamed chain cannot use them.
NOT_STREAMABLE = {
    "PitchShift": "its output depends on where the audio is cut into buffers (a phase vocoder with latency)",
    "MP3Compressor": "it encodes in MP3 frames with latency, so its streamed output differs from the whole-buffer one",
    "GSMFullRateCompressor": "it buffers audio inside itself and returns fewer samples than it is given",
    "Resample": "it buffers audio inside itself and returns fewer samples than it is given",
    "BrickwallLimiter": "its lookahead delays the streamed output by a latency pedalboard does not report",
}
_NOT_EFFECTS = ("Plugin", "IIRFilter")  # abstract bases pedalboard exports beside the effects

_SIGNATURE = re.compile(r"__init__\(self: [\w.]+(?:, (?P<params>.*))?\) -> None")


class ChainError(ValueError):
    """A plugin table that cannot be used; the message names where it came from, the plugin and the parameter."""


def builtin_plugins() -> dict[str, type]:
    """Name -> class of every pedalboard built-in effect a chain can use (the streamable ones)."""
    out = {}
    for name in dir(pedalboard):
        cls = getattr(pedalboard, name)
        if (isinstance(cls, type) and issubclass(cls, pedalboard.Plugin) and name == cls.__name__
                and not issubclass(cls, (pedalboard.PluginContainer, pedalboard.ExternalPlugin))
                and name not in _NOT_EFFECTS and name not in NOT_STREAMABLE):
            out[name] = cls
    return dict(sorted(out.items()))


def _split_top_level(text: str) -> list[str]:
    """Split at ', ' outside brackets: 'a: Union[str, x] = 1, b: float' -> ['a: Union[str, x] = 1', 'b: float']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[<(":
            depth += 1
        elif ch in "]>)":
            depth -= 1
        elif depth == 0 and text.startswith(", ", i):
            parts.append(text[start:i])
            start = i + 2
    return parts + [text[start:]] if text else parts


def constructor_parameters(cls: type) -> dict[str, tuple[str, bool]]:
    """Parameter name -> (type annotation, required) of a built-in's constructor, read from its signature."""
    match = _SIGNATURE.match((cls.__init__.__doc__ or "").strip().splitlines()[0])
    if not match:
        raise ChainError(f"cannot read the parameters of pedalboard.{cls.__name__}")
    params = {}
    for item in _split_top_level(match.group("params") or ""):
        name, rest = item.split(": ", 1)
        annotation, has_default, _ = rest.partition(" = ")
        params[name] = (annotation, not has_default)
    return params


def _is_path_annotation(annotation: str) -> bool:
    return annotation.startswith("Union[str")  # Convolution's impulse response: a file name or an array


def _enum_for(annotation: str):
    """The pybind enum an annotation such as 'pedalboard_native.LadderFilter.Mode' names, or None."""
    if not annotation.startswith("pedalboard_native."):
        return None
    target = pedalboard
    for part in annotation.split(".")[1:]:
        target = getattr(target, part, None)
    return target if hasattr(target, "__members__") else None


def _check_value(annotation: str, value, label: str) -> None:
    """Raise ChainError unless value (as read from TOML or the command line) fits the annotation."""
    base = annotation[len("Optional["):-1] if annotation.startswith("Optional[") else annotation
    enum = _enum_for(base)
    if enum is not None:
        ok = isinstance(value, str) and value in enum.__members__
        expected = "one of " + ", ".join(repr(m) for m in enum.__members__)
    elif base == "float":
        ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif base == "int":
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif base == "bool":
        ok, expected = isinstance(value, bool), "true or false"
    elif base == "str" or _is_path_annotation(base):
        ok, expected = isinstance(value, str), "a string"
    else:
        raise ChainError(f"{label} has type {annotation}, which a chain table cannot give")
    if not ok:
        raise ChainError(f"{label} = {value!r} must be {expected}")


def is_external(plugin: str) -> bool:
    """Whether a table's ``plugin`` names a plugin file (VST3 / Audio Unit path) rather than a built-in."""
    return plugin.rstrip("/\\").lower().endswith(VST3_SUFFIXES) or "/" in plugin or "\\" in plugin


def _resolve(path: str, base_dir: Path | None) -> str:
    return str(base_dir / path) if base_dir is not None and not Path(path).is_absolute() else path


def check_plugin_table(table, where: str, base_dir: Path | None = None) -> dict:
    """Validate one plugin table and return it normalised (a fresh dict; relative paths joined to ``base_dir``).

    Built-ins are checked fully but for value ranges (pedalboard checks those when ``build_board`` creates them);
    external plugins are checked for shape only, since their parameters are known once loaded."""
    if not isinstance(table, dict):
        raise ChainError(f"{where}: expected a table such as {{plugin = \"Reverb\", room_size = 0.5}}, "
                         f"got {type(table).__name__}")
    plugin = table.get("plugin")
    if not isinstance(plugin, str) or not plugin.strip():
        raise ChainError(f"{where}: missing 'plugin' (a built-in name such as \"Reverb\", or a .vst3 path)")
    parameters = {k: v for k, v in table.items() if k != "plugin"}
    if is_external(plugin):
        for key, value in parameters.items():
            if not isinstance(value, (str, int, float)):  # booleans are ints
                raise ChainError(f"{where}: {plugin} parameter '{key}' = {value!r} must be a number, string or boolean")
        if PLUGIN_NAME_KEY in parameters and not isinstance(parameters[PLUGIN_NAME_KEY], str):
            raise ChainError(f"{where}: {plugin} '{PLUGIN_NAME_KEY}' must be a string")
        return {"plugin": _resolve(plugin, base_dir), **parameters}
    builtins = builtin_plugins()
    if plugin in NOT_STREAMABLE:
        raise ChainError(f"{where}: {plugin} cannot be used in a streamed chain: {NOT_STREAMABLE[plugin]}")
    if plugin not in builtins:
        raise ChainError(f"{where}: unknown plugin {plugin!r}{close_match(plugin, builtins)}; built-in plugins: "
                         f"{', '.join(builtins)}; a VST3 is given by its path (ending in .vst3)")
    known = constructor_parameters(builtins[plugin])
    for key, value in parameters.items():
        if key not in known:
            raise ChainError(f"{where}: {plugin} has no parameter {key!r}{close_match(key, known)}; "
                             f"its parameters: {', '.join(known) or 'none'}")
        _check_value(known[key][0], value, f"{where}: {plugin} parameter '{key}'")
        if _is_path_annotation(known[key][0]):
            parameters[key] = _resolve(value, base_dir)
    missing = [name for name, (_, required) in known.items() if required and name not in parameters]
    if missing:
        raise ChainError(f"{where}: {plugin} needs parameter '{missing[0]}'")
    return {"plugin": plugin, **parameters}


def parse_plugin_text(text: str) -> dict:
    """A plugin table from its command-line form: ``Name``, ``Name(key=value, ...)``, ``path.vst3(key=value)``.

    Values are Python literals (numbers, quoted strings, True / False)."""
    where = f"plugin {text!r}"
    text = text.strip()
    if not text.endswith(")"):
        return check_plugin_table({"plugin": text}, where)
    for i in (i for i, ch in enumerate(text) if ch == "("):
        try:
            call = ast.parse("f" + text[i:], mode="eval").body
        except SyntaxError:
            continue
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f":
            break
    else:
        raise ChainError(f"{where}: expected Name(key=value, ...), e.g. Reverb(room_size=0.6)")
    if call.args or any(k.arg is None for k in call.keywords):
        raise ChainError(f"{where}: give parameters as key=value, e.g. Reverb(room_size=0.6)")
    table = {"plugin": text[:i].strip()}
    for keyword in call.keywords:
        try:
            table[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            raise ChainError(f"{where}: parameter '{keyword.arg}' must be a number, a quoted string, True or False")
    return check_plugin_table(table, where)


def _build_plugin(table: dict, where: str) -> pedalboard.Plugin:
    parameters = {k: v for k, v in table.items() if k != "plugin"}
    plugin = table["plugin"]
    if is_external(plugin):
        plugin_name = parameters.pop(PLUGIN_NAME_KEY, None)
        try:
            loaded = pedalboard.load_plugin(plugin, parameter_values=parameters, plugin_name=plugin_name)
        except Exception as e:  # ImportError, RuntimeError, ValueError, AttributeError: all mean "cannot use it"
            raise ChainError(f"{where}: cannot load {plugin}: {e}") from None
        if not loaded.is_effect:
            raise ChainError(f"{where}: {plugin} is an instrument, not an effect")
        return loaded
    cls = builtin_plugins()[plugin]
    known = constructor_parameters(cls)
    for key, value in parameters.items():
        enum = _enum_for(known[key][0])
        if enum is not None:
            parameters[key] = enum.__members__[value]
    try:
        return cls(**parameters)
    except (TypeError, ValueError, RuntimeError) as e:
        given = ", ".join(f"{k}={v!r}" for k, v in table.items() if k != "plugin")
        raise ChainError(f"{where}: {plugin}({given}): {e}") from None


def build_board(tables: Iterable[dict], where: str = "chain") -> pedalboard.Pedalboard:
    """A Pedalboard of the plugins the (checked) tables describe; ``where`` labels errors, e.g. "preset x: pre"."""
    return pedalboard.Pedalboard([_build_plugin(t, f"{where}[{i}]") for i, t in enumerate(tables)])


def reported_latency_samples(stage) -> int:
    """Samples by which a stage's streamed output is late: a plugin's reported latency, summed through boards."""
    if isinstance(stage, pedalboard.PluginContainer):
        return sum(reported_latency_samples(p) for p in stage)
    return int(getattr(stage, "reported_latency_samples", 0) or 0)


def _stage_name(stage) -> str:
    return getattr(stage, "name", None) if isinstance(stage, pedalboard.ExternalPlugin) else type(stage).__name__


class EffectChain:
    """Pedalboard plugins (boards included) and Python effects run one after another as one effect.

    A stage is anything with ``process(audio, sample_rate, reset=...)`` returning audio of the input's shape.
    ``process`` streams like a host: each call passes one buffer through every stage. ``render`` processes a whole
    stream offline and also compensates the latency plugins report (pedalboard does the same for whole buffers)."""

    def __init__(self, stages: Iterable):
        self.stages = list(stages)
        for i, stage in enumerate(self.stages):
            if not callable(getattr(stage, "process", None)):
                raise TypeError(f"stage {i} ({type(stage).__name__}) has no process(audio, sample_rate, reset) method")

    def _run_stage(self, i: int, audio: np.ndarray, sample_rate: float, reset: bool) -> np.ndarray:
        stage = self.stages[i]
        out = stage.process(audio, sample_rate, reset=reset)
        if np.shape(out) != np.shape(audio):
            raise ValueError(f"stage {i} ({_stage_name(stage)}) returned audio of shape {np.shape(out)} for "
                             f"{np.shape(audio)}: every stage must return as many frames and channels as it is given")
        return out

    def process(self, audio: np.ndarray, sample_rate: float, reset: bool = False) -> np.ndarray:
        """One buffer [channels, frames] through every stage; ``reset=True`` starts every stage afresh first."""
        for i in range(len(self.stages)):
            audio = self._run_stage(i, audio, sample_rate, reset)
        return audio

    def __call__(self, audio: np.ndarray, sample_rate: float) -> np.ndarray:
        """A whole buffer, from a clean state (like calling a pedalboard plugin)."""
        return self.process(audio, sample_rate, reset=True)

    def reset(self) -> None:
        for stage in self.stages:
            stage.reset()

    @property
    def reported_latency_samples(self) -> int:
        return sum(reported_latency_samples(s) for s in self.stages)

    def render(self, chunks: Iterable[np.ndarray], sample_rate: float) -> Iterator[np.ndarray]:
        """Process a stream of [channels, frames] chunks from a clean state; yields as many frames as came in.

        A stage with latency L gets L frames of silence after the stream and its first L output frames are dropped,
        so each stage sees exactly what it would see processing the whole stream as one buffer."""
        latencies = [reported_latency_samples(s) for s in self.stages]
        to_drop = list(latencies)
        started = [False] * len(self.stages)
        fed = emitted = 0

        def through(audio: np.ndarray, first: int) -> np.ndarray:
            for i in range(first, len(self.stages)):
                if audio.shape[1] == 0:
                    break
                audio = self._run_stage(i, audio, sample_rate, reset=not started[i])
                started[i] = True
                drop = min(to_drop[i], audio.shape[1])
                to_drop[i] -= drop
                audio = audio[:, drop:]
            return audio

        def emit(audio: np.ndarray) -> np.ndarray:
            nonlocal emitted
            out = audio[:, : max(0, fed - emitted)]
            emitted += out.shape[1]
            return out

        channels = None
        iterator = iter(chunks)
        chunk = next(iterator, None)
        while chunk is not None:
            following = next(iterator, None)
            channels, frames = chunk.shape
            fed += frames
            if following is None and not any(started) and 0 < frames <= channels:
                # pedalboard reads the channel layout off the first buffer, which must have more frames than channels
                chunk = np.concatenate([chunk, np.zeros((channels, channels + 1 - frames), chunk.dtype)], 1)
            out = emit(through(chunk, 0))
            if out.shape[1]:
                yield out
            chunk = following
        for i, latency in enumerate(latencies):
            if latency and channels is not None:
                out = emit(through(np.zeros((channels, latency), np.float32), i))
                if out.shape[1]:
                    yield out
