"""The generative delay: the streaming unit a host holds (one per track).

    host buffer -> sanitise -> resample to the model rate -> FIFO of model blocks
      per block: encode -> context = (1 - feedback) * input + feedback * last echo -> KV cache
                 next echo = sample(noised delayed context, strength, steps, conditioning) -> decode
    -> resample back -> wet FIFO -> wet/dry mix -> host buffer (same length)

The echo of block k plays during block k + 1: the wet path is delayed by one block (the delay time) plus the
codec and resampler latencies, reported as ``latency_samples``; the dry path is not delayed. Output is a fixed
function of the input sample stream, so it never depends on the host's buffer size: blocks are processed the
moment they fill, and the wet FIFO starts with enough silence that it never runs dry.

The Session takes ``SessionParams`` (params.py), never a preset file: presets are resolved above it (io/presets.py).
Conditioning (core/conditioning.py): style tags, the text prompt's embedding and, in jam mode, the accompaniment
flag. Context K/V do not depend on it, so a change needs no cache rebuild; it cross-fades linearly over
``PROMPT_CROSSFADE_BLOCKS`` blocks (the flag switches at once). The per-block model calls are a ``LatentStream``.

Jam mode (models trained with ``accompaniment``): the context of block k is what was heard during it, the input
plus the jam part that played (encoded by a second codec), and the part for block k + 1 is generated from noise
with the accompaniment flag. It is predicted one block ahead from what was played so far, and the one-block wet
delay is exactly that horizon: it plays in time with the input. Strength and feedback do not apply.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from pedalboard.io import StreamResampler

from lmdm_engine.core.audio import channels_first
from lmdm_engine.core.codec import StreamingCodec
from lmdm_engine.core.conditioning import ConditioningFade, prompt_conditioning
from lmdm_engine.runtime.interface import Runtime
from lmdm_engine.runtime.latent_stream import LatentStream

from .params import ParamsError, SessionParams, unplayable_reason

# Sanitised input is clipped here: keeps a full-scale or runaway host signal from driving the model off its range.
INPUT_LIMIT = 2.0
# Input samples smaller than this (-600 dBFS: denormal floats and their neighbours) are silence: arithmetic on
# denormals costs 2 to 4 times as much, and a host may well send them (a decaying tail)
FLUSH_BELOW = 2.0 ** -100
# Mix changes ramp linearly over this many host samples (no zipper noise or clicks).
MIX_RAMP_SECONDS = 0.01


@functools.lru_cache(maxsize=64)
def _resampler_lag(source_rate: int, target_rate: int) -> int:
    """Most output samples a StreamResampler holds back when fed one sample at a time (measured, deterministic)."""
    r = StreamResampler(source_rate, target_rate, 1)
    ratio = target_rate / source_rate
    fed = produced = 0
    lag = 0.0
    one = np.zeros((1, 1), np.float32)
    for _ in range(int(4 * source_rate / math.gcd(source_rate, target_rate)) + 512):
        fed += 1
        produced += r.process(one).shape[1]
        lag = max(lag, fed * ratio - produced)
    return int(math.ceil(lag)) + 1


class ChannelResampler:
    """pedalboard's windowed-sinc StreamResampler, one per channel (its layout guess fails on 1- and 2-frame
    stereo buffers). Output is chunking-independent and time-aligned with the input."""

    def __init__(self, source_rate: int, target_rate: int, channels: int):
        self._resamplers = [StreamResampler(source_rate, target_rate, 1) for _ in range(channels)]

    def process(self, audio: np.ndarray) -> np.ndarray:
        return np.concatenate([r.process(audio[c: c + 1]) for c, r in enumerate(self._resamplers)], 0)


class Session:
    """Generative delay for one track. ``process(buffer)`` takes ``[channels, frames]`` float32 (1-D for mono)."""

    def __init__(self, runtime: Runtime, sample_rate: int, channels: int = 2,
                 params: SessionParams = SessionParams()):
        if int(sample_rate) != sample_rate or not 1000 <= sample_rate <= 768000:
            raise ValueError(f"sample_rate must be an integer in [1000, 768000] Hz, got {sample_rate}")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 (mono) or 2 (stereo), got {channels}")
        if not isinstance(params, SessionParams):
            raise TypeError(f"params must be SessionParams (a preset's are load_preset(name).params), got "
                            f"{type(params).__name__}")
        self.runtime = runtime
        self.config = runtime.config
        self.sample_rate = int(sample_rate)
        self.channels = channels
        self.params = params
        self._latent_scale = runtime.latent_scale[None, None, :]
        self.reset()

    # ---- parameters -----------------------------------------------------------------------------
    def _block_frames_for(self, params: SessionParams) -> int:
        cfg = self.config
        frames = int(round(params.delay_seconds * cfg.sample_rate / cfg.hop))
        if not cfg.min_block_frames <= frames <= cfg.max_block_frames:
            lo = cfg.min_block_frames * cfg.hop / cfg.sample_rate
            hi = cfg.max_block_frames * cfg.hop / cfg.sample_rate
            raise ValueError(f"delay_seconds={params.delay_seconds} is outside this model's range [{lo:.3f}, {hi:.3f}] s")
        return frames

    def _conditioning(self, params: SessionParams) -> np.ndarray:
        """The conditioning vector [channels, cond_dim] of ``params`` (embeds a new prompt: TextExtraMissing when
        free text needs the text extra)."""
        reason = unplayable_reason(params, self.config)
        if reason:
            raise ParamsError(SessionParams.SOURCE, reason)
        vec = prompt_conditioning(self.config, params.style, params.prompt, params.mode == "jam")
        return np.repeat(vec[None], self.channels, 0)

    def set_params(self, params: SessionParams | None = None, /, **changes) -> None:
        """Change parameters between blocks: to ``params`` (default: the current ones) with ``changes`` (fields of
        SessionParams) on top. A rejected change keeps the old ones. The delay, strength, steps, sampler, guidance
        and mode apply from the next block; style and prompt cross-fade over PROMPT_CROSSFADE_BLOCKS blocks; the
        mix ramps over 10 ms; a new seed restarts the noise stream."""
        params = params or self.params
        if changes:
            params = params.replace(**changes)
        self._block_frames_for(params)
        cond = self._conditioning(params)
        if params.seed != self.params.seed:
            self._rng = np.random.default_rng(params.seed)
        self._fade.set(cond)
        self.params = params

    @property
    def conditioning(self) -> np.ndarray:
        """The conditioning vector [channels, cond_dim] the parameters ask for (blocks reach it after a fade)."""
        return self._fade.target

    # ---- latency and state ----------------------------------------------------------------------
    @property
    def block_frames(self) -> int:
        """Latent frames of the block now being collected (= the delay in frames)."""
        return self._next_frames

    @property
    def latency_samples(self) -> int:
        """Host samples from an input sample to its echo in the wet path (delay + codec + resampler)."""
        model_delay = self._next_frames * self.config.hop + self.config.codec_latency
        return self._wet_padding + int(round(model_delay * self.sample_rate / self.config.sample_rate))

    def reset(self) -> None:
        """Forget all audio: fresh codec, cache, FIFOs, resamplers and noise stream (parameters are kept)."""
        cfg, c = self.config, self.channels
        self._fade = ConditioningFade(cfg, self._conditioning(self.params))
        self._rng = np.random.default_rng(self.params.seed)
        self._codec = StreamingCodec(cfg, c)
        self._mix_codec = StreamingCodec(cfg, c)  # jam mode: encodes the input plus the part that played
        self._jamming = False  # the mode of the last block was jam
        self._stream = LatentStream(self.runtime, c)  # the KV cache of what was heard
        self._context = np.zeros((c, cfg.max_block_frames, cfg.latent_dim), np.float32)  # latest context frames
        self._next_frames = self._block_frames_for(self.params)
        self._echo = np.zeros((c, self._next_frames, cfg.latent_dim), np.float32)  # echo playing now
        self._played = np.zeros((c, self._next_frames * cfg.hop), np.float32)  # its audio (model rate)
        self._in_fifo = np.zeros((c, 0), np.float32)
        resampled = self.sample_rate != cfg.sample_rate
        self._to_model = ChannelResampler(self.sample_rate, cfg.sample_rate, c) if resampled else None
        self._to_host = ChannelResampler(cfg.sample_rate, self.sample_rate, c) if resampled else None
        self._wet_padding = (
            _resampler_lag(self.sample_rate, cfg.sample_rate) * self.sample_rate // cfg.sample_rate + 1
            + _resampler_lag(cfg.sample_rate, self.sample_rate)
            if resampled else 0
        )
        # the first block plays silence on the wet path: its echo only exists once it has been heard
        first = np.zeros((c, self._next_frames * cfg.hop), np.float32)
        self._wet_fifo = [np.zeros((c, self._wet_padding), np.float32), self._to_host_rate(first)]
        self._wet_available = sum(a.shape[1] for a in self._wet_fifo)
        self._mix = self.params.mix
        self.blocks_processed = 0
        self.input_faults = 0  # buffers that held NaN or Inf (sanitised to silence)

    # ---- processing -----------------------------------------------------------------------------
    def _to_host_rate(self, audio: np.ndarray) -> np.ndarray:
        return self._to_host.process(audio) if self._to_host is not None else audio

    def _sanitise(self, buffer) -> np.ndarray:
        a = channels_first(buffer, self.channels, "a buffer").astype(np.float32, copy=True)
        bad = ~np.isfinite(a)
        if bad.any():
            self.input_faults += 1
            a[bad] = 0.0
        a[np.abs(a) < FLUSH_BELOW] = 0.0
        return a

    def process(self, buffer) -> np.ndarray:
        """Process one host buffer; returns a buffer of the same shape."""
        dry = self._sanitise(buffer)
        n = dry.shape[1]
        if n == 0:
            return dry.reshape(np.shape(buffer))
        model_in = np.clip(dry, -INPUT_LIMIT, INPUT_LIMIT)
        if self._to_model is not None:
            model_in = self._to_model.process(model_in)
        self._in_fifo = np.concatenate([self._in_fifo, model_in], 1)
        while self._in_fifo.shape[1] >= self._next_frames * self.config.hop:
            size = self._next_frames * self.config.hop
            block, self._in_fifo = self._in_fifo[:, :size], self._in_fifo[:, size:]
            wet = self._to_host_rate(self._process_block(block))
            self._wet_fifo.append(wet)
            self._wet_available += wet.shape[1]
        wet = self._pop_wet(n)
        out = dry + self._mix_ramp(n)[None, :] * (wet - dry)
        return out.reshape(np.shape(buffer)) if np.ndim(buffer) == 1 else out

    def _pop_wet(self, n: int) -> np.ndarray:
        if self._wet_available < n:  # cannot happen: the padding covers the resamplers' worst-case hold-back
            raise RuntimeError(f"wet FIFO underrun ({self._wet_available} < {n} samples)")
        wet = np.concatenate(self._wet_fifo, 1)
        self._wet_fifo = [wet[:, n:]]
        self._wet_available -= n
        return wet[:, :n]

    def _mix_ramp(self, n: int) -> np.ndarray:
        target = self.params.mix
        step = 1.0 / max(1.0, MIX_RAMP_SECONDS * self.sample_rate)
        ramp = self._mix + np.sign(target - self._mix) * step * np.arange(1, n + 1)
        ramp = np.minimum(ramp, target) if target >= self._mix else np.maximum(ramp, target)
        self._mix = float(ramp[-1])
        return ramp.astype(np.float32)

    def _process_block(self, block: np.ndarray) -> np.ndarray:
        """One model block in (model rate), the next echo (or jam) block out (model rate)."""
        p, cfg = self.params, self.config
        jam = p.mode == "jam"
        if jam and not self._jamming:  # the mix encoder goes on from where the input's is
            self._mix_codec.state.update({k: self._codec.state[k].copy() for k in ("encoder_history", "encoder_phase")})
        self._jamming = jam
        heard = self._codec.encode(block) / self._latent_scale  # [C, L, D] model space
        if jam:  # what was heard during this block: the input and the part that played
            context = self._mix_codec.encode(block + self._played) / self._latent_scale
        else:
            context = (1.0 - p.feedback) * heard + p.feedback * self._echo
        self._stream.append(context)
        n = context.shape[1]
        self._context = np.concatenate([self._context[:, n:], context], 1)
        frames = self._block_frames_for(p)
        start = np.zeros_like(self._context[:, -frames:]) if jam else self._context[:, -frames:]
        shape = (1, frames, cfg.latent_dim)  # shared noise across channels keeps the echo's stereo image
        noise = lambda x: np.broadcast_to(self._rng.standard_normal(shape, np.float32), x.shape)
        echo = self._stream.step(start, self._fade.next(), noise, strength=1.0 if jam else p.strength, steps=p.steps,
                                 sampler=p.sampler, guidance=p.guidance)
        self._echo = np.asarray(echo, np.float32)
        self._next_frames = frames
        self.blocks_processed += 1
        self._played = self._codec.decode(self._echo * self._latent_scale)
        return self._played
