"""The streaming codec (lmdm_engine/codec.py) as ONNX graphs: two with explicit state inputs and outputs, one without.

    codec_encode: audio [C, S] (S a multiple of hop), encoder_history [C, hop]
                  -> latents [C, S / hop, D] (model space: codec latents / latent_scale), present.encoder_history
    codec_decode: latents [C, F, D] (model space), decoder_overlap [C, hop], decoder_phase [C, bins] (float64),
                  decoder_frequency [C, bins] (float64)
                  -> audio [C, F * hop], present.decoder_overlap, present.decoder_phase, present.decoder_frequency
    codec_level:  latents [C, F, D] (model space) -> level [C] (``Codec.level``: the echo's loudness, the host loop)

The graphs are built op by op from the same formulas as the numpy codec; the fitted basis (mean and components)
is stored in them. The STFT bases are computed inside the graph from integer indices (ONNX Runtime folds them
into constants when a session opens). ONNX has no cumulative maximum: the nearest spectral peak on either side of
each bin is found by numbering the peaks (CumSum) and scattering their positions into a table. The phase
recursion over frames is a Scan; log-magnitudes and phases are float64 as in the numpy codec, so that the same
bins are peaks and a long stream does not drift.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lmdm_engine.core.codec import Codec
from lmdm_engine.core.config import ModelConfig

OPSET = 17
IR_VERSION = 8  # what onnxruntime 1.14+ reads (the onnx package would write its newest)
_END = np.iinfo(np.int64).max


class _Graph:
    """A tiny ONNX graph builder: ``g.op("Add", a, b)`` returns the name of the new value."""

    def __init__(self):
        self.nodes, self.initializers, self._count = [], [], 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, dtype=None, hint: str = "const") -> str:
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        i64 = np.int64
        return self.op("Slice", x, self.const([start], i64), self.const([end], i64), self.const([axis], i64))

    def model(self, name: str, inputs, outputs, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lmdm", ir_version=IR_VERSION)
        model.doc_string = doc
        onnx.checker.check_model(model)
        return model


def _bases(g: _Graph, config: ModelConfig) -> tuple[str, str]:
    """Analysis [n_fft, 2 bins] float64 (window folded in: frame @ analysis = [re | im] of rfft(window * frame)),
    as the numpy encoder computes it, and synthesis [2 bins, n_fft] float32 (window * irfft).

    Angles are reduced exactly in integers, ``(i k) mod n``, then evaluated in float64 and cast to float32."""
    n, bins = config.n_fft, config.n_fft // 2 + 1
    i64, f64 = np.int64, np.float64
    i = g.op("Range", g.const(0, i64), g.const(n, i64), g.const(1, i64))  # [n]
    k = g.op("Range", g.const(0, i64), g.const(bins, i64), g.const(1, i64))  # [bins]
    ik = g.op("Mul", g.op("Unsqueeze", i, g.const([1], i64)), g.op("Unsqueeze", k, g.const([0], i64)))  # [n, bins]
    angle = g.op("Mul", g.op("Cast", g.op("Mod", ik, g.const(n, i64)), to=TensorProto.DOUBLE),
                 g.const(2 * math.pi / n, f64))
    cos, sin = g.op("Cos", angle), g.op("Sin", angle)
    # sqrt-periodic-Hann window [n, 1]
    i_angle = g.op("Mul", g.op("Cast", i, to=TensorProto.DOUBLE), g.const(2 * math.pi / n, f64))
    window = g.op("Sqrt", g.op("Sub", g.const(0.5, f64), g.op("Mul", g.const(0.5, f64), g.op("Cos", i_angle))))
    window = g.op("Unsqueeze", window, g.const([1], i64))
    analysis = g.op("Concat", g.op("Mul", window, cos), g.op("Neg", g.op("Mul", window, sin)), axis=1)
    scale = np.full((bins, 1), 2.0 / n)
    scale[0] = scale[-1] = 1.0 / n
    scale = g.const(scale, f64)
    window_row = g.op("Transpose", window, perm=[1, 0])  # [1, n]
    synth_re = g.op("Mul", g.op("Mul", scale, g.op("Transpose", cos, perm=[1, 0])), window_row)
    synth_im = g.op("Neg", g.op("Mul", g.op("Mul", scale, g.op("Transpose", sin, perm=[1, 0])), window_row))
    synthesis = g.op("Concat", synth_re, synth_im, axis=0)
    return analysis, g.op("Cast", synthesis, to=TensorProto.FLOAT)


def _last_frame(g: _Graph, x: str, out: str) -> str:
    """x [C, F, ...] -> x[:, -1] [C, ...]."""
    return g.op("Squeeze", g.slice(x, -1, _END, 1), g.const([1], np.int64), out=out)


def _values(config: ModelConfig, channels: str = "channels") -> dict:
    bins = config.n_fft // 2 + 1
    return {
        "audio": ([channels, "samples"], TensorProto.FLOAT),
        "latents": ([channels, "frames", config.latent_dim], TensorProto.FLOAT),
        "history": ([channels, config.hop], TensorProto.FLOAT),
        "bins64": ([channels, bins], TensorProto.DOUBLE),
    }


def _info(name: str, spec) -> onnx.ValueInfoProto:
    shape, dtype = spec
    return helper.make_tensor_value_info(name, dtype, shape)


def build_encoder(codec: Codec, latent_scale: np.ndarray) -> onnx.ModelProto:
    config = codec.config
    g, hop, bins = _Graph(), config.hop, config.n_fft // 2 + 1
    analysis, _ = _bases(g, config)
    buf = g.op("Concat", "encoder_history", "audio", axis=1)  # [C, hop + S]
    g.op("Identity", g.slice(buf, -hop, _END, 1), out="present.encoder_history")
    # [C, hop + S] -> [C, F + 1, hop]: n_fft = 2 hop, so frame j is hops j and j + 1 side by side
    hops = g.op("Reshape", buf, g.const([0, -1, hop], np.int64))
    windows = g.op("Concat", g.slice(hops, 0, -1, 1), g.slice(hops, 1, _END, 1), axis=2)  # [C, F, n_fft]
    spec = g.op("MatMul", g.op("Cast", windows, to=TensorProto.DOUBLE), analysis)  # [C, F, 2 bins]
    re, im = g.slice(spec, 0, bins, 2), g.slice(spec, bins, 2 * bins, 2)
    mag = g.op("Sqrt", g.op("Add", g.op("Mul", re, re), g.op("Mul", im, im)))
    log_mag = g.op("Log", g.op("Add", mag, g.const(config.log_floor, np.float64)))
    centred = g.op("Sub", log_mag, g.const(codec.mean.astype(np.float64)))
    latents = g.op("Cast", g.op("MatMul", centred, g.const(codec.encoder)), to=TensorProto.FLOAT)
    g.op("Div", latents, g.const(latent_scale, np.float32), out="latents")
    v = _values(config)
    return g.model(
        "codec_encode",
        [_info("audio", v["audio"]), _info("encoder_history", v["history"])],
        [_info("latents", v["latents"]), _info("present.encoder_history", v["history"])],
        "LMDM streaming codec, encode: audio chunks (multiples of hop) to model-space latent frames.")


def _phase_scan(config: ModelConfig) -> onnx.GraphProto:
    """The body of the frame recursion: psi' = (psi + advance_j)[owner_j] (per channel)."""
    g = _Graph()
    g.op("GatherElements", g.op("Add", "psi", "advance_j"), "owner_j", axis=1, out="psi_next")
    g.op("Identity", "psi_next", out="psi_out")
    bins = config.n_fft // 2 + 1
    d, i = ([None, bins], TensorProto.DOUBLE), ([None, bins], TensorProto.INT64)
    return helper.make_graph(g.nodes, "phase_step",
                             [_info("psi", d), _info("advance_j", d), _info("owner_j", i)],
                             [_info("psi_next", d), _info("psi_out", d)], g.initializers)


def _log_magnitude(g: _Graph, codec: Codec, latent_scale: np.ndarray) -> str:
    """The input "latents" (model space) -> log-magnitudes [C, F, bins] float64, as ``Codec.from_latent``."""
    latents = g.op("Cast", g.op("Mul", "latents", g.const(latent_scale, np.float32)), to=TensorProto.DOUBLE)
    log_mag = g.op("Add", g.op("MatMul", latents, g.const(codec.decoder)), g.const(codec.mean.astype(np.float64)))
    low, high = codec.log_range
    return g.op("Clip", log_mag, g.const(low, np.float64), g.const(high, np.float64))


def build_level(codec: Codec, latent_scale: np.ndarray) -> onnx.ModelProto:
    """``Codec.level``: the log RMS magnitude of each channel's frames, what a host re-levels an echo to."""
    g = _Graph()
    power = g.op("Exp", g.op("Mul", _log_magnitude(g, codec, latent_scale), g.const(2.0, np.float64)))
    mean = g.op("ReduceMean", power, axes=[1, 2], keepdims=0)  # [C]
    g.op("Cast", g.op("Mul", g.op("Log", mean), g.const(0.5, np.float64)), to=TensorProto.FLOAT, out="level")
    return g.model(
        "codec_level", [_info("latents", _values(codec.config)["latents"])],
        [helper.make_tensor_value_info("level", TensorProto.FLOAT, ["channels"])],
        "LMDM codec, level: the loudness (log RMS magnitude) of model-space latent frames, per channel.")


def build_decoder(codec: Codec, latent_scale: np.ndarray) -> onnx.ModelProto:
    config = codec.config
    g, hop, n, bins = _Graph(), config.hop, config.n_fft, config.n_fft // 2 + 1
    i64, f64, f32 = np.int64, np.float64, np.float32
    _, synthesis = _bases(g, config)
    log_mag = _log_magnitude(g, codec, latent_scale)
    k = g.const(np.arange(bins, dtype=i64))
    # rising[k]: log_mag[k] < log_mag[k + 1] (false at the last bin); peak[k]: rising[k - 1] and not rising[k]
    up = g.op("Less", g.slice(log_mag, 0, bins - 1, 2), g.slice(log_mag, 1, bins, 2))  # [C, F, bins - 1]
    false1 = g.op("Cast", g.op("Mul", g.slice(log_mag, 0, 1, 2), g.const(0.0, f64)), to=TensorProto.BOOL)
    rising = g.op("Concat", up, false1, axis=2)
    peak = g.op("And", g.op("Concat", false1, up, axis=2), g.op("Not", rising))
    peak = g.op("Concat", g.slice(peak, 0, bins - 1, 2), false1, axis=2)  # the last bin is no peak
    # number the peaks: count[k] = peaks at or before k; table[count - 1] = the position of each peak
    count = g.op("CumSum", g.op("Cast", peak, to=TensorProto.INT64), g.const(2, i64))  # [C, F, bins]
    total = g.slice(count, bins - 1, bins, 2)  # [C, F, 1]
    slot = g.op("Where", peak, g.op("Sub", count, g.const(1, i64)), g.op("Add", k, g.const(bins, i64)))  # unique
    shape = g.op("Shape", count)
    positions = g.op("Expand", k, shape)  # k at every bin: [C, F, bins]
    table_shape = g.op("Concat", g.slice(shape, 0, 2, 0), g.const([2 * bins], i64), axis=0)
    table = g.op("ConstantOfShape", table_shape, value=numpy_helper.from_array(np.zeros(1, i64)))
    table = g.op("ScatterElements", table, slot, positions, axis=2)  # [C, F, 2 bins]: peaks first, then unused
    has_left = g.op("Greater", count, g.const(0, i64))
    left = g.op("GatherElements", table, g.op("Max", g.op("Sub", count, g.const(1, i64)), g.const(0, i64)), axis=2)
    next_peak = g.op("GatherElements", table, g.op("Min", count, g.const(bins - 1, i64)), axis=2)
    has_right = g.op("Or", peak, g.op("Less", count, total))
    right = g.op("Where", peak, positions, next_peak)
    right = g.op("Where", has_right, right, g.const(bins, i64))
    left = g.op("Where", has_left, left, g.const(-1, i64))
    owner = g.op("Where", g.op("Or", g.op("And", rising, has_right), g.op("Not", has_left)), right, left)
    owner = g.op("Where", g.op("GreaterOrEqual", owner, g.const(bins, i64)), positions, owner)
    # the owning peak's fractional position: a parabola through its log-magnitude and its neighbours
    at = g.op("Clip", owner, g.const(1, i64), g.const(bins - 2, i64))
    a = g.op("GatherElements", log_mag, g.op("Sub", at, g.const(1, i64)), axis=2)
    b = g.op("GatherElements", log_mag, at, axis=2)
    d = g.op("GatherElements", log_mag, g.op("Add", at, g.const(1, i64)), axis=2)
    curve = g.op("Add", g.op("Sub", a, g.op("Mul", b, g.const(2.0, f64))), d)
    is_peak = g.op("GatherElements", g.op("Cast", peak, to=TensorProto.INT64), at, axis=2)
    use = g.op("And", g.op("Equal", is_peak, g.const(1, i64)), g.op("Less", curve, g.const(0.0, f64)))
    delta = g.op("Clip", g.op("Div", g.op("Mul", g.op("Sub", a, d), g.const(0.5, f64)), curve),
                 g.const(-0.5, f64), g.const(0.5, f64))
    centre = g.op("Add", g.op("Cast", owner, to=TensorProto.DOUBLE), g.op("Where", use, delta, g.const(0.0, f64)))
    # sign: the frame's linear phase (-1)^k times the window's side-lobe sign
    distance = g.op("Abs", g.op("Sub", g.const(np.arange(bins, dtype=f64)), centre))
    lobe = g.op("Cast", g.op("Floor", g.op("Sub", g.op("Max", distance, g.const(0.5, f64)), g.const(0.5, f64))),
                to=TensorProto.INT64)
    odd = g.op("Cast", g.op("Mod", g.op("Add", lobe, k), g.const(2, i64)), to=TensorProto.FLOAT)
    sign = g.op("Sub", g.const(1.0, f32), g.op("Mul", odd, g.const(2.0, f32)))
    # phase advance into each frame: half a hop at the previous frequency, half at this one
    freq = g.op("Mul", centre, g.const(2 * math.pi / n, f64))  # [C, F, bins]
    before = g.op("Concat", g.op("Unsqueeze", "decoder_frequency", g.const([1], i64)), g.slice(freq, 0, -1, 1), axis=1)
    advance = g.op("Mul", g.op("Add", before, freq), g.const(0.5 * hop, f64))
    psi_last = g._name("psi_last")
    psi = g._name("psi")
    g.nodes.append(helper.make_node("Scan", ["decoder_phase", advance, owner], [psi_last, psi], num_scan_inputs=2,
                                    body=_phase_scan(config), scan_input_axes=[1, 1], scan_output_axes=[1]))
    two_pi = g.const(2 * math.pi, f64)
    psi = g.op("Sub", psi, g.op("Mul", g.op("Round", g.op("Div", psi, two_pi)), two_pi))  # into [-pi, pi]
    _last_frame(g, psi, "present.decoder_phase")
    _last_frame(g, freq, "present.decoder_frequency")
    phase = g.op("Cast", psi, to=TensorProto.FLOAT)
    mag = g.op("Sub", g.op("Exp", g.op("Cast", log_mag, to=TensorProto.FLOAT)), g.const(config.log_floor, f32))
    mag = g.op("Mul", mag, sign)
    spec = g.op("Concat", g.op("Mul", mag, g.op("Cos", phase)), g.op("Mul", mag, g.op("Sin", phase)), axis=2)
    segments = g.op("MatMul", spec, synthesis)  # [C, F, n_fft]: two hops of windowed signal per frame
    first, second = g.slice(segments, 0, hop, 2), g.slice(segments, hop, 2 * hop, 2)  # [C, F, hop] each
    # overlap-add: hop j of the output is the first half of frame j plus the second half of frame j - 1
    before = g.op("Concat", g.op("Unsqueeze", "decoder_overlap", g.const([1], i64)), g.slice(second, 0, -1, 1),
                  axis=1)
    g.op("Reshape", g.op("Add", first, before), g.const([0, -1], i64), out="audio")  # [C, F, hop] -> [C, F hop]
    _last_frame(g, second, "present.decoder_overlap")
    v = _values(config)
    return g.model(
        "codec_decode",
        [_info("latents", v["latents"]), _info("decoder_overlap", v["history"]), _info("decoder_phase", v["bins64"]),
         _info("decoder_frequency", v["bins64"])],
        [_info("audio", v["audio"]), _info("present.decoder_overlap", v["history"]),
         _info("present.decoder_phase", v["bins64"]), _info("present.decoder_frequency", v["bins64"])],
        "LMDM streaming codec, decode: model-space latent frames to audio (peak-locked phases, overlap-add).")
