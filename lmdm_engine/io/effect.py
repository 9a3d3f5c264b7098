"""``GenerativeDelay``: the generative delay as an effect that behaves like a pedalboard plugin.

    effect = GenerativeDelay(preset="glass_bells", mix=0.7)
    wet = effect(audio, 48000)                                 # whole buffer, from a clean state
    for chunk in chunks:                                       # or streamed: the same result
        out = effect.process(chunk, 48000, reset=False)

Audio is float32 ``[channels, frames]`` (1-D for mono), as in pedalboard. The effect is the preset's whole sound:
its ``pre`` board, the model (a ``Session``), and its ``post`` board, run as one ``EffectChain``. Mono and stereo
audio go through one Session; audio with more channels goes through one mono Session per channel (each channel a
track of its own, same parameters and seed). Sessions are made afresh on ``reset=True`` and whenever the sample
rate or the channel count changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from lmdm_engine.core.audio import channels_first
from lmdm_engine.runtime.interface import Runtime, load_runtime
from lmdm_engine.stream.session import Session

from .chains import EffectChain, build_board, reported_latency_samples
from .presets import Preset, resolve_preset

MAX_CHANNELS = 64  # more than this is taken for a [frames, channels] buffer passed the wrong way round


def _as_channels_first(audio) -> np.ndarray:
    return channels_first(audio, (1, MAX_CHANNELS)).astype(np.float32, copy=False)


class _DelayModel:
    """The model stage of the chain: Sessions for the current sample rate and channel count."""

    def __init__(self, owner: "GenerativeDelay"):
        self._owner = owner
        self._layout = None
        self.sessions: list[Session] = []

    def process(self, audio: np.ndarray, sample_rate: float, reset: bool = False) -> np.ndarray:
        channels = audio.shape[0]
        if reset or self._layout != (sample_rate, channels):
            runtime, params = self._owner.runtime, self._owner.preset.params
            rate = int(sample_rate) if float(sample_rate).is_integer() else sample_rate
            if channels <= 2:
                self.sessions = [Session(runtime, rate, channels, params)]
            else:
                self.sessions = [Session(runtime, rate, 1, params) for _ in range(channels)]
            self._layout = (sample_rate, channels)
        if len(self.sessions) == 1:
            return self.sessions[0].process(audio)
        return np.concatenate([s.process(audio[c: c + 1]) for c, s in enumerate(self.sessions)], 0)

    def reset(self) -> None:
        self._layout = None


class GenerativeDelay:
    """The generative delay with its preset's chains, used like a pedalboard plugin.

    ``preset``: a shipped name, a .toml path or a Preset (default: the default preset); ``overrides``: preset
    fields, e.g. ``mix=0.8`` or ``post=[{"plugin": "Reverb"}]`` (see ``resolve_preset``). ``runtime``: a loaded
    Runtime to share between effects; otherwise the one of ``model`` (a model folder; default: the shipped model) is
    loaded on first use."""

    def __init__(self, preset: Preset | str | None = None, model=None, runtime: Runtime | None = None, **overrides):
        self.preset = resolve_preset(preset, overrides)
        self._model_dir = model
        self._runtime = runtime
        self._model = _DelayModel(self)
        pre = build_board(self.preset.pre, f"preset {self.preset.name!r}: pre")
        post = build_board(self.preset.post, f"preset {self.preset.name!r}: post")
        self._boards = [board for board in (pre, post) if len(board)]
        self._chain = EffectChain(([pre] if len(pre) else []) + [self._model] + ([post] if len(post) else []))
        self._layout = None

    @property
    def runtime(self) -> Runtime:
        """The runtime the model runs on (loaded on first use when none was given)."""
        if self._runtime is None:
            self._runtime = load_runtime(self._model_dir)
        return self._runtime

    @property
    def latency_samples(self) -> int:
        """Samples from an input sample to its first echo (the delay), at the rate last processed."""
        if not self._model.sessions:
            raise RuntimeError("the echo latency is known once process() has seen the sample rate")
        return self._model.sessions[0].latency_samples

    @property
    def reported_latency_samples(self) -> int:
        """How late the boards make the dry signal (plugin latencies; the echo itself is not latency)."""
        return sum(reported_latency_samples(board) for board in self._boards)

    def process(self, audio, sample_rate: float, reset: bool = False) -> np.ndarray:
        """Process one buffer, continuing from the last call unless ``reset``; returns the same shape."""
        x = _as_channels_first(audio)
        layout = (sample_rate, x.shape[0])
        out = self._chain.process(x, sample_rate, reset=reset or layout != self._layout)
        self._layout = layout
        return out.reshape(np.shape(audio))

    def __call__(self, audio, sample_rate: float) -> np.ndarray:
        """A whole buffer from a clean state, like calling a pedalboard plugin."""
        return self.process(audio, sample_rate, reset=True)

    def render(self, chunks: Iterable, sample_rate: float) -> Iterator[np.ndarray]:
        """A whole stream of [channels, frames] chunks from a clean state, offline: yields as many frames as come
        in, with the boards' reported latency compensated (see ``EffectChain.render``)."""
        self._layout = None
        return self._chain.render((_as_channels_first(c) for c in chunks), sample_rate)

    def reset(self) -> None:
        """Start afresh at the next buffer (Sessions and boards)."""
        self._layout = None
        self._model.reset()
