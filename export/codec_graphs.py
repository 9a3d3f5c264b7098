"""The streaming codec (lmdm_engine/core/codec.py) as two ONNX graphs with explicit state inputs and outputs.

    codec_encode: audio [C, S] (S a multiple of hop), encoder_history [C, hop], encoder_phase [C, bins] (float64)
                  -> latents [C, S / hop, D] (model space: codec latents / latent_scale),
                     present.encoder_history, present.encoder_phase
    codec_decode: latents [C, F, D] (model space), decoder_overlap [C, hop], decoder_phase [C, bins] (float64)
                  -> audio [C, F * hop], present.decoder_overlap, present.decoder_phase

The graphs are built op by op from the same formulas as the numpy codec. The analysis and synthesis bases are
computed inside the graph from integer indices (ONNX Runtime folds them into constants when a session opens), so
the files stay a few kilobytes instead of 4 MB each. ONNX has no atan2; it is composed from Atan and Where.
Phases are float64, as in the numpy codec, so a long stream does not drift.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lmdm_engine.core.codec import bin_advance
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

    def atan2(self, y: str, x: str) -> str:
        """atan2(y, x) in float32 (numpy's convention: atan2(0, 0) = 0, result in [-pi, pi])."""
        zero = self.const(0.0, np.float32)
        base = self.op("Atan", self.op("Div", y, x))
        y_neg = self.op("Less", y, zero)
        half_turn = self.op("Where", y_neg, self.const(-math.pi, np.float32), self.const(math.pi, np.float32))
        quarter = self.op("Where", y_neg, self.const(-math.pi / 2, np.float32),
                          self.op("Where", self.op("Greater", y, zero), self.const(math.pi / 2, np.float32), zero))
        left = self.op("Add", base, half_turn)
        return self.op("Where", self.op("Greater", x, zero), base,
                       self.op("Where", self.op("Less", x, zero), left, quarter))

    def model(self, name: str, inputs, outputs, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lmdm", ir_version=IR_VERSION)
        model.doc_string = doc
        onnx.checker.check_model(model)
        return model


def _bases(g: _Graph, config: ModelConfig) -> tuple[str, str]:
    """Analysis [n_fft, 2 bins] and synthesis [2 bins, n_fft] float32 matrices, as in ``codec.CodecBasis``.

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
    f32 = TensorProto.FLOAT
    return g.op("Cast", analysis, to=f32), g.op("Cast", synthesis, to=f32)


def _last_frame(g: _Graph, x: str, out: str) -> str:
    """x [C, F, ...] -> x[:, -1] [C, ...]."""
    return g.op("Squeeze", g.slice(x, -1, _END, 1), g.const([1], np.int64), out=out)


def _values(config: ModelConfig, channels: str = "channels") -> dict:
    bins = config.n_fft // 2 + 1
    return {
        "audio": ([channels, "samples"], TensorProto.FLOAT),
        "latents": ([channels, "frames", config.latent_dim], TensorProto.FLOAT),
        "history": ([channels, config.hop], TensorProto.FLOAT),
        "phase": ([channels, bins], TensorProto.DOUBLE),
    }


def _info(name: str, spec) -> onnx.ValueInfoProto:
    shape, dtype = spec
    return helper.make_tensor_value_info(name, dtype, shape)


def build_encoder(config: ModelConfig, latent_scale: np.ndarray) -> onnx.ModelProto:
    g, hop, bins = _Graph(), config.hop, config.n_fft // 2 + 1
    analysis, _ = _bases(g, config)
    buf = g.op("Concat", "encoder_history", "audio", axis=1)  # [C, hop + S]
    g.op("Identity", g.slice(buf, -hop, _END, 1), out="present.encoder_history")
    # [C, hop + S] -> [C, F + 1, hop]: n_fft = 2 hop, so frame j is hops j and j + 1 side by side
    hops = g.op("Reshape", buf, g.const([0, -1, hop], np.int64))
    windows = g.op("Concat", g.slice(hops, 0, -1, 1), g.slice(hops, 1, _END, 1), axis=2)  # [C, F, n_fft]
    spec = g.op("MatMul", windows, analysis)  # [C, F, 2 bins]
    re, im = g.slice(spec, 0, bins, 2), g.slice(spec, bins, 2 * bins, 2)
    mag = g.op("Sqrt", g.op("Add", g.op("Mul", re, re), g.op("Mul", im, im)))
    phase = g.op("Cast", g.atan2(im, re), to=TensorProto.DOUBLE)  # [C, F, bins]
    before = g.op("Concat", g.op("Unsqueeze", "encoder_phase", g.const([1], np.int64)),
                  g.slice(phase, 0, -1, 1), axis=1)
    step = g.op("Sub", g.op("Sub", phase, before), g.const(bin_advance(config), np.float64))
    amp = g.op("Mul", g.op("Pow", mag, g.const(config.compression, np.float32)), g.const(config.latent_gain, np.float32))
    cos = g.op("Cast", g.op("Cos", step), to=TensorProto.FLOAT)
    sin = g.op("Cast", g.op("Sin", step), to=TensorProto.FLOAT)
    latents = g.op("Concat", g.op("Mul", amp, cos), g.op("Mul", amp, sin), axis=2)
    g.op("Div", latents, g.const(latent_scale, np.float32), out="latents")
    _last_frame(g, phase, "present.encoder_phase")
    v = _values(config)
    return g.model(
        "codec_encode",
        [_info("audio", v["audio"]), _info("encoder_history", v["history"]), _info("encoder_phase", v["phase"])],
        [_info("latents", v["latents"]), _info("present.encoder_history", v["history"]),
         _info("present.encoder_phase", v["phase"])],
        "LMDM streaming codec, encode: audio chunks (multiples of hop) to model-space latent frames.")


def build_decoder(config: ModelConfig, latent_scale: np.ndarray) -> onnx.ModelProto:
    g, hop, bins = _Graph(), config.hop, config.n_fft // 2 + 1
    _, synthesis = _bases(g, config)
    latents = g.op("Mul", "latents", g.const(latent_scale, np.float32))  # model space -> codec latents
    re, im = g.slice(latents, 0, bins, 2), g.slice(latents, bins, 2 * bins, 2)
    norm = g.op("Div", g.op("Sqrt", g.op("Add", g.op("Mul", re, re), g.op("Mul", im, im))),
                g.const(config.latent_gain, np.float32))
    mag = g.op("Pow", norm, g.const(1.0 / config.compression, np.float32))
    step = g.op("Add", g.op("Cast", g.atan2(im, re), to=TensorProto.DOUBLE), g.const(bin_advance(config), np.float64))
    phase = g.op("Add", g.op("Unsqueeze", "decoder_phase", g.const([1], np.int64)),
                 g.op("CumSum", step, g.const(1, np.int64)))  # [C, F, bins]
    # wrap to [-pi, pi): phase - 2 pi floor((phase + pi) / 2 pi)
    turns = g.op("Floor", g.op("Div", g.op("Add", phase, g.const(math.pi, np.float64)), g.const(2 * math.pi, np.float64)))
    phase = g.op("Sub", phase, g.op("Mul", turns, g.const(2 * math.pi, np.float64)))
    cos = g.op("Cast", g.op("Cos", phase), to=TensorProto.FLOAT)
    sin = g.op("Cast", g.op("Sin", phase), to=TensorProto.FLOAT)
    spec = g.op("Concat", g.op("Mul", mag, cos), g.op("Mul", mag, sin), axis=2)
    segments = g.op("MatMul", spec, synthesis)  # [C, F, n_fft]: two hops of windowed signal per frame
    first, second = g.slice(segments, 0, hop, 2), g.slice(segments, hop, 2 * hop, 2)  # [C, F, hop] each
    # overlap-add: hop j of the output is the first half of frame j plus the second half of frame j - 1
    before = g.op("Concat", g.op("Unsqueeze", "decoder_overlap", g.const([1], np.int64)), g.slice(second, 0, -1, 1),
                  axis=1)
    g.op("Reshape", g.op("Add", first, before), g.const([0, -1], np.int64), out="audio")  # [C, F, hop] -> [C, F hop]
    _last_frame(g, second, "present.decoder_overlap")
    _last_frame(g, phase, "present.decoder_phase")
    v = _values(config)
    return g.model(
        "codec_decode",
        [_info("latents", v["latents"]), _info("decoder_overlap", v["history"]), _info("decoder_phase", v["phase"])],
        [_info("audio", v["audio"]), _info("present.decoder_overlap", v["history"]),
         _info("present.decoder_phase", v["phase"])],
        "LMDM streaming codec, decode: model-space latent frames to audio (overlap-add).")
