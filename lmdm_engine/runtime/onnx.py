"""The ONNX Runtime runtime: numpy and onnxruntime only (a producer who runs effects never imports torch).

It runs the exported denoiser step (export/, ``lmdm export``) described by the folder's ``manifest.json``.
The step graph is one fused pass: it slides ``context`` frames into the cache and returns the velocity of
``latents`` against the slid cache; either may have 0 frames. ``append_context`` runs it with 0 target frames
and keeps the ``present.*`` outputs; ``velocity`` runs it with 0 context frames and keeps the velocity.

Providers: CUDA when a GPU and its libraries are present, with the cache kept on the device through IOBinding;
CPU otherwise. One log line says which, and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lmdm_engine.core.codec import Codec
from lmdm_engine.core.config import MAX_CACHE_BYTES, ConfigError, ModelConfig

log = logging.getLogger("lmdm")

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = "lmdm-onnx-export"
MANIFEST_VERSION = 3  # 2: the conditioning input is named cond (it was style); 3: codec_level and the echo's level
EXPORT_SUBDIR = "onnx"  # a model folder keeps its export here (the shipped default model does)
GRAPHS = ("denoiser_step", "codec_encode", "codec_decode", "codec_level")
PENDING = "pending_context"  # state entry: clean frames queued for the next step (not a graph input)
PROVIDERS = ("cpu", "cuda")


def present_name(name: str) -> str:
    """The output that carries an input state forward: past_key_values.0.key -> present.0.key,
    context_valid -> present.context_valid (the Hugging Face Optimum convention)."""
    if name.startswith("past_key_values."):
        return "present." + name[len("past_key_values."):]
    return "present." + name


def export_folder(folder: str | Path) -> Path:
    """The folder holding manifest.json: ``folder`` itself, or its ``onnx/`` subfolder."""
    folder = Path(folder)
    for candidate in (folder, folder / EXPORT_SUBDIR):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    raise ConfigError(f"{folder}: no ONNX export here (no {MANIFEST_NAME} in it or in {EXPORT_SUBDIR}/); "
                      f"run `lmdm export {folder} -o {folder / EXPORT_SUBDIR}`, or use the torch runtime")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(folder: str | Path, check_files: bool = True) -> dict:
    """Load and check an export's manifest: schema, version, config, and every graph file with its digest."""
    folder = export_folder(folder)
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise ConfigError(f"{path}: not an LMDM export manifest (expected \"schema\": \"{MANIFEST_SCHEMA}\")")
    if manifest.get("schema_version") != MANIFEST_VERSION:
        raise ConfigError(f"{path}: schema_version {manifest.get('schema_version')!r}; "
                          f"this version of lmdm reads {MANIFEST_VERSION} (re-export the model)")
    for key in ("config", "graphs", "latent_scale"):
        if key not in manifest:
            raise ConfigError(f"{path}: missing field {key!r}")
    manifest["config"] = ModelConfig.from_dict(manifest["config"], source=f"{path} field 'config'")
    if len(manifest["latent_scale"]) != manifest["config"].latent_dim:
        raise ConfigError(f"{path}: latent_scale has {len(manifest['latent_scale'])} values, "
                          f"the config's latent_dim is {manifest['config'].latent_dim}")
    _check_shapes(manifest, path)
    for graph in GRAPHS:
        entry = manifest["graphs"].get(graph)
        if entry is None:
            raise ConfigError(f"{path}: field 'graphs' lacks {graph!r}")
        file = folder / entry["file"]
        if not file.is_file():
            raise ConfigError(f"{file}: missing (listed in {path})")
        if check_files and file_digest(file) != entry["sha256"]:
            raise ConfigError(f"{file}: contents do not match the sha256 in {path} (corrupt or from another export)")
    manifest["folder"] = folder
    return manifest


def _check_shapes(manifest: dict, path: Path) -> None:
    """Every input shape of the graphs is a list of names (dynamic sizes) and sizes in bounds, and each input the
    runtime allocates (the state) is at most MAX_CACHE_BYTES for one stream: checked before anything is built."""
    graphs = manifest["graphs"]
    if not isinstance(graphs, dict):
        raise ConfigError(f"{path}: field 'graphs' must be a table of graph entries")
    for graph, entry in graphs.items():
        inputs = entry.get("inputs", []) if isinstance(entry, dict) else None
        if not isinstance(inputs, list):
            raise ConfigError(f"{path}: field 'graphs.{graph}.inputs' must be a list")
        for item in inputs:
            where = f"{path}: field 'graphs.{graph}.inputs' entry {item.get('name') if isinstance(item, dict) else item!r}"
            shape = item.get("shape") if isinstance(item, dict) else None
            if not isinstance(shape, list) or len(shape) > 8:
                raise ConfigError(f"{where}: 'shape' must be a list of at most 8 sizes")
            size = 1
            for d in shape:
                if isinstance(d, str):
                    continue
                if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 1 << 24:
                    raise ConfigError(f"{where}: size {d!r} must be a name or an integer in [0, {1 << 24}]")
                size *= d
            if 4 * size > MAX_CACHE_BYTES:
                raise ConfigError(f"{where}: shape {shape} would take {4 * size / 2**30:.1f} GiB a stream; at most "
                                  f"{MAX_CACHE_BYTES >> 30} GiB")


def _cuda_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def open_session(path: Path, provider: str | None = None, threads: int = 1) -> tuple[ort.InferenceSession, str, str]:
    """An InferenceSession on the chosen provider ("cpu", "cuda", or None: CUDA when usable). Returns it with the
    provider actually used and why. A CUDA attempt runs with ONNX Runtime's logging silenced (no wall of loader
    errors); ``--provider cuda`` fails with the first line of the reason instead of falling back. A file that is not
    a readable graph raises ConfigError naming it."""
    if provider not in (None, *PROVIDERS):
        raise ValueError(f"unknown provider {provider!r}; choose one of {PROVIDERS}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    want_cuda = provider == "cuda" or (provider is None and "CUDAExecutionProvider" in ort.get_available_providers()
                                       and _cuda_driver_present())
    if want_cuda:
        options.log_severity_level = 4
        try:
            session = ort.InferenceSession(str(path), options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail types
            session, reason = None, str(e).splitlines()[0]
        else:
            reason = "its CUDA libraries did not load"
        if session is not None and session.get_providers()[0] == "CUDAExecutionProvider":
            return session, "cuda", "GPU found"
        if provider == "cuda":
            raise RuntimeError(f"--provider cuda: ONNX Runtime cannot use CUDA here ({reason})")
        why = f"CUDA unusable: {reason}"
        options.log_severity_level = 2
    elif provider == "cpu":
        why = "asked for"
    elif "CUDAExecutionProvider" not in ort.get_available_providers():
        why = "this onnxruntime build has no CUDA"
    else:
        why = "no CUDA driver found"
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - InvalidProtobuf, InvalidGraph, Fail: a graph that cannot be read
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{path}: not a graph ONNX Runtime can load ({type(e).__name__}: {reason[:300]}); "
                          "re-export the model (lmdm export)") from None
    return session, "cpu", why


class OnnxRuntime:
    """Runtime over an exported denoiser step. The state is a flat dict of numpy arrays named like the graph's
    cache inputs (``past_key_values.{i}.key/value``, ``context_valid``), or of device OrtValues with IOBinding."""

    name = "onnx"

    def __init__(self, folder: str | Path, provider: str | None = None, threads: int = 1, io_binding: bool | None = None):
        self.manifest = read_manifest(folder)
        self.config: ModelConfig = self.manifest["config"]
        self.latent_scale = np.asarray(self.manifest["latent_scale"], np.float32)
        self.codec = Codec.load(export_folder(folder), self.config)
        step = self.manifest["graphs"]["denoiser_step"]
        self.session, self.provider, why = open_session(self.manifest["folder"] / step["file"], provider, threads)
        log.info("ONNX Runtime on %s (%s): %s", self.provider.upper(), why, self.manifest["folder"])
        self._present = self.manifest["state"]["denoiser_step"]  # state input -> the output that replaces it
        self.state_names = list(self._present)
        self._shapes = {i["name"]: i["shape"] for i in step["inputs"]}
        self.io_binding = self.provider == "cuda" if io_binding is None else io_binding
        self._device = "cuda" if self.provider == "cuda" else "cpu"

    # ---- state ------------------------------------------------------------------------------------
    def new_state(self, batch: int) -> dict:
        state = {}
        for name in self.state_names:
            shape = [batch if isinstance(d, str) else d for d in self._shapes[name]]
            dtype = bool if name == "context_valid" else np.float32
            state[name] = np.zeros(shape, dtype)
        return self._to_device(state) if self.io_binding else state

    def _to_device(self, state: dict) -> dict:
        return {k: ort.OrtValue.ortvalue_from_numpy(v, self._device, 0) for k, v in state.items()}

    def _to_host(self, state: dict) -> dict:
        return {k: v.numpy() if isinstance(v, ort.OrtValue) else v for k, v in state.items()}

    def concat_states(self, states: list[dict]) -> dict:
        """Queued context frames travel with the batch when every state has the same number queued (so the batch's
        first step stays fused); otherwise each is folded first."""
        queued = [s.get(PENDING) for s in states]
        carry = all(q is not None for q in queued) and len({q.shape[1] for q in queued}) == 1
        if not carry:
            states = [self._fold(s) if PENDING in s else s for s in states]
        host = [self._to_host(s) for s in states]
        out = {name: np.concatenate([s[name] for s in host], 0) for name in self.state_names}
        out = self._to_device(out) if self.io_binding else out
        if carry:
            out[PENDING] = np.concatenate(queued, 0)
        return out

    def split_state(self, state: dict, sizes: list[int]) -> list[dict]:
        cuts = np.cumsum(sizes)[:-1]
        parts = {name: np.split(value, cuts, 0) for name, value in self._to_host(state).items()}
        out = []
        for i in range(len(sizes)):
            cache = {name: parts[name][i] for name in self.state_names}
            cache = self._to_device(cache) if self.io_binding else cache
            if PENDING in parts:
                cache[PENDING] = parts[PENDING][i]
            out.append(cache)
        return out

    # ---- the step ---------------------------------------------------------------------------------
    def _run(self, state: dict, context: np.ndarray, x: np.ndarray, t: float, cond: np.ndarray, want_state: bool):
        batch = x.shape[0]
        feeds = {
            "latents": np.ascontiguousarray(x, np.float32),
            "time": np.full((batch,), t, np.float32),
            "cond": np.ascontiguousarray(cond, np.float32),
            "context": np.ascontiguousarray(context, np.float32),
        }
        outputs = ["velocity"] + ([self._present[n] for n in self.state_names] if want_state else [])
        if not self.io_binding:
            result = self.session.run(outputs, {**feeds, **{n: state[n] for n in self.state_names}})
            return result[0], dict(zip(self.state_names, result[1:]))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in self.state_names:
            binding.bind_ortvalue_input(name, state[name])
        binding.bind_output("velocity", "cpu")
        for name in outputs[1:]:
            binding.bind_output(name, self._device)  # the new cache stays on the device
        self.session.run_with_iobinding(binding)
        result = binding.get_outputs()
        return result[0].numpy(), dict(zip(self.state_names, result[1:]))

    def append_context(self, state: dict, frames: np.ndarray) -> dict:
        """Queue ``frames`` to be folded into the cache by the next ``velocity`` call (the fused first step of the
        LMDM code: one pass instead of two). A block that is never sampled (strength 0) is folded here instead."""
        if PENDING in state:
            state = self._fold(state)
        return {**state, PENDING: np.ascontiguousarray(frames, np.float32)}

    def _fold(self, state: dict) -> dict:
        b = state[PENDING].shape[0]
        empty = np.zeros((b, 0, self.config.latent_dim), np.float32)
        cond = np.zeros((b, self.config.cond_dim), np.float32)
        return self._run(state, state[PENDING], empty, 0.0, cond, want_state=True)[1]

    def velocity(self, state: dict, x: np.ndarray, t: float, cond: np.ndarray) -> np.ndarray:
        """Velocity of x against the cache. The first call after ``append_context`` also slides the queued frames
        into the cache and updates ``state`` in place (later calls reuse it); the result is the same either way."""
        pending = state.pop(PENDING, None)
        if pending is None:
            empty = np.zeros((x.shape[0], 0, self.config.latent_dim), np.float32)
            return self._run(state, empty, x, t, cond, want_state=False)[0]
        velocity, present = self._run(state, pending, x, t, cond, want_state=True)
        state.update(present)
        return velocity
