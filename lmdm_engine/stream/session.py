"""The generative delay: the streaming unit a host holds (one per track).

    host buffer -> sanitise -> resampler to the model rate (the input FIFO: a block is read when complete)
      per block: encode -> context = (1 - feedback) * input + feedback * last echo -> KV cache
                 next echo = sample(noised delayed context, strength, steps, conditioning)
                 -> re-levelled to a feedback delay's loudness (_echo_level) -> decode
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

import numpy as np

from lmdm_engine.core.audio import Fifo, channels_first
from lmdm_engine.core.codec import StreamingCodec
from lmdm_engine.core.conditioning import ConditioningFade, prompt_conditioning
from lmdm_engine.core.resample import Resampler, filter_for
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
def wet_padding(host_rate: int, model_rate: int) -> int:
    """Host samples of silence the wet FIFO starts with so that it never runs dry, whatever the host buffer size:
    the most the two resamplers hold back, exactly. Wet sample q needs ``up.inputs_for(q + 1)`` model samples of
    echo; the echo fed to ``up`` is always at least one sample ahead of the model-rate input ready (the block being
    collected has its echo's length fed already), so wet sample q is ready once the host has sent the input of
    ``up.inputs_for(q + 1) - 1`` model samples. That is periodic in q, over one period of the conversion."""
    if host_rate == model_rate:
        return 0
    down, up = filter_for(host_rate, model_rate), filter_for(model_rate, host_rate)
    return max(0, max(down.inputs_for(up.inputs_for(q + 1) - 1) - q - 1 for q in range(2 * up.up)))


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

    @property
    def echo_latents(self) -> np.ndarray:
        """The latents [channels, frames, latent_dim] (model space) of the echo playing now: the last block's."""
        return self._echo.copy()

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
        """Host samples from an input sample to its echo in the wet path: the resamplers' hold-back, the delay and
        the codec's latency (the resamplers are time-aligned, so this is exact but for rounding the delay to a
        whole number of host samples)."""
        model_delay = self._next_frames * self.config.hop + self.config.codec_latency
        rate = self.config.sample_rate
        return self._wet_padding + (2 * model_delay * self.sample_rate + rate) // (2 * rate)

    def reset(self) -> None:
        """Forget all audio: fresh codec, cache, FIFOs, resamplers and noise stream (parameters are kept)."""
        cfg, c = self.config, self.channels
        self._fade = ConditioningFade(cfg, self._conditioning(self.params))
        self._rng = np.random.default_rng(self.params.seed)
        self._codec = StreamingCodec(self.runtime.codec, c)
        self._mix_codec = StreamingCodec(self.runtime.codec, c)  # jam mode: encodes the input plus the part that played
        self._jamming = False  # the mode of the last block was jam
        self._stream = LatentStream(self.runtime, c)  # the KV cache of what was heard
        self._context = np.zeros((c, cfg.max_block_frames, cfg.latent_dim), np.float32)  # latest context frames
        self._next_frames = self._block_frames_for(self.params)
        self._echo = np.zeros((c, self._next_frames, cfg.latent_dim), np.float32)  # echo playing now
        self._played = np.zeros((c, self._next_frames * cfg.hop), np.float32)  # its audio (model rate)
        self._echo_amplitude = np.zeros(c)  # its loudness (RMS amplitude, _echo_level)
        self._to_model = Resampler(self.sample_rate, cfg.sample_rate, c)  # also the input FIFO
        self._to_host = Resampler(cfg.sample_rate, self.sample_rate, c)
        self._wet_padding = wet_padding(self.sample_rate, cfg.sample_rate)
        # the first block plays silence on the wet path: its echo only exists once it has been heard
        self._wet = Fifo(c)
        self._wet.write(np.zeros((c, self._wet_padding), np.float32))
        self._wet.write(self._to_host.process(np.zeros((c, self._next_frames * cfg.hop), np.float32)))
        self._mix = self.params.mix
        self.blocks_processed = 0
        self.input_faults = 0  # buffers that held NaN or Inf (sanitised to silence)

    # ---- processing -----------------------------------------------------------------------------
    def _sanitise(self, buffer) -> np.ndarray:
        a = channels_first(buffer, self.channels, "a buffer").astype(np.float32, copy=True)
        if not np.isfinite(a).all():
            self.input_faults += 1
            a[~np.isfinite(a)] = 0.0
        a[np.abs(a) < FLUSH_BELOW] = 0.0
        return a

    def process(self, buffer) -> np.ndarray:
        """Process one host buffer; returns a buffer of the same shape."""
        dry = self._sanitise(buffer)
        n = dry.shape[1]
        if n == 0:
            return dry.reshape(np.shape(buffer))
        self._to_model.write(np.clip(dry, -INPUT_LIMIT, INPUT_LIMIT))
        # a block is read the moment its input is complete, so every resampler call is the same whatever the
        # host's buffer size (and so is the output, to the bit)
        while self._to_model.available >= self._next_frames * self.config.hop:
            block = self._to_model.read(self._next_frames * self.config.hop)
            self._wet.write(self._to_host.process(self._process_block(block)))
        if len(self._wet) < n:  # cannot happen: the padding covers the resamplers' worst-case hold-back
            raise RuntimeError(f"wet FIFO underrun ({len(self._wet)} < {n} samples)")
        out = self._wet.read(n) - dry  # out = dry + mix * (wet - dry)
        out *= self._mix_gain(n)
        out += dry
        return out.reshape(np.shape(buffer)) if np.ndim(buffer) == 1 else out

    def _mix_gain(self, n: int):
        """The mix for the next ``n`` samples: a number, or a ramp [n] toward a new mix."""
        target = self.params.mix
        if self._mix == target:
            return target
        step = 1.0 / max(1.0, MIX_RAMP_SECONDS * self.sample_rate)
        ramp = self._mix + np.sign(target - self._mix) * step * np.arange(1, n + 1)
        ramp = np.minimum(ramp, target) if target >= self._mix else np.maximum(ramp, target)
        self._mix = float(ramp[-1])
        return ramp.astype(np.float32)

    def _echo_level(self, heard: np.ndarray, feedback: float) -> np.ndarray:
        """The loudness [C] the next echo is re-levelled to, a feedback delay's: RMS amplitude the larger of the block
        just heard's and feedback times the echo before's (each phrase is echoed at its own level from its first
        block, a tail decays by ``feedback`` a block; jam mode passes 0). The model alone answers 3.5 to 14.7 dB
        under its input; re-levelled, within 3 dB for every preset, and closer to real audio (docs/SOUND.md)."""
        self._echo_amplitude = np.maximum(np.exp(self._stream.level(heard)), feedback * self._echo_amplitude)
        return np.log(self._echo_amplitude)

    def _process_block(self, block: np.ndarray) -> np.ndarray:
        """One model block in (model rate), the next echo (or jam) block out (model rate)."""
        p, cfg = self.params, self.config
        jam = p.mode == "jam"
        if jam and not self._jamming:  # the mix encoder goes on from where the input's is
            self._mix_codec.state.update({k: v.copy() for k, v in self._codec.state.items() if k.startswith("encoder_")})
        self._jamming = jam
        heard = self._codec.encode(block) / self._latent_scale  # [C, L, D] model space
        if jam:  # what was heard during this block: the input and the part that played
            context = self._mix_codec.encode(block + self._played) / self._latent_scale
        else:
            context = (1.0 - p.feedback) * heard + p.feedback * self._echo
        self._stream.append(context)
        n = context.shape[1]
        self._context[:, :-n] = self._context[:, n:]  # (numpy copies overlapping moves through a buffer)
        self._context[:, -n:] = context
        frames = self._block_frames_for(p)
        start = np.zeros_like(self._context[:, -frames:]) if jam else self._context[:, -frames:]
        shape = (1, frames, cfg.latent_dim)  # shared noise across channels keeps the echo's stereo image
        noise = lambda x: np.broadcast_to(self._rng.standard_normal(shape, np.float32), x.shape)
        level = self._echo_level(heard, 0.0 if jam else p.feedback)
        echo = self._stream.step(start, self._fade.next(), noise, strength=1.0 if jam else p.strength, steps=p.steps,
                                 sampler=p.sampler, guidance=p.guidance, level=level)
        self._echo = np.asarray(echo, np.float32)
        self._next_frames = frames
        self.blocks_processed += 1
        self._played = self._codec.decode(self._echo * self._latent_scale)
        return self._played
