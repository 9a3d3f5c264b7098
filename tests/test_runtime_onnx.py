"""The ONNX Runtime backend: fused steps, batching, IOBinding, providers, and no torch on the effect path."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from lmdm_engine.runtime.onnx import OnnxRuntime, open_session
from lmdm_export.exporter import export_model

from conftest import codec_for, debug_torch_runtime, random_model


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    model = random_model()
    folder = tmp_path_factory.mktemp("onnx_runtime")
    export_model(model, codec_for(model), folder)
    return debug_torch_runtime(model), OnnxRuntime(folder, provider="cpu"), folder


def _frames(rt, batch, n, seed):
    return np.random.default_rng(seed).standard_normal((batch, n, rt.config.latent_dim)).astype(np.float32)


def test_fused_first_step_equals_separate_context_pass(runtimes):
    torch_rt, onnx_rt, _ = runtimes
    cond = np.zeros((2, onnx_rt.config.cond_dim), np.float32)
    t_state, o_state = torch_rt.new_state(2), onnx_rt.new_state(2)
    for block in range(5):  # more context than the window holds
        context, x = _frames(onnx_rt, 2, 7, block), _frames(onnx_rt, 2, 7, 100 + block)
        t_state, o_state = torch_rt.append_context(t_state, context), onnx_rt.append_context(o_state, context)
        for t in (0.9, 0.5, 0.1):  # the first call folds the queued context, later calls reuse the cache
            np.testing.assert_allclose(onnx_rt.velocity(o_state, x, t, cond), torch_rt.velocity(t_state, x, t, cond),
                                       atol=1e-5)


def test_unsampled_blocks_are_folded_not_queued(runtimes):
    torch_rt, onnx_rt, _ = runtimes
    t_state, o_state = torch_rt.new_state(1), onnx_rt.new_state(1)
    for block in range(4):  # strength 0: appends with no velocity call in between
        context = _frames(onnx_rt, 1, 5, block)
        t_state, o_state = torch_rt.append_context(t_state, context), onnx_rt.append_context(o_state, context)
    assert o_state["pending_context"].shape[1] == 5  # bounded: only the latest block waits
    x, cond = _frames(onnx_rt, 1, 5, 9), np.ones((1, onnx_rt.config.cond_dim), np.float32)
    np.testing.assert_allclose(onnx_rt.velocity(o_state, x, 0.5, cond), torch_rt.velocity(t_state, x, 0.5, cond), atol=1e-5)


def test_concat_and_split_states_batch_sessions(runtimes):
    _, onnx_rt, _ = runtimes
    a = onnx_rt.append_context(onnx_rt.new_state(1), _frames(onnx_rt, 1, 6, 0))
    b = onnx_rt.append_context(onnx_rt.new_state(2), _frames(onnx_rt, 2, 4, 1))
    x, cond = _frames(onnx_rt, 3, 6, 2), np.zeros((3, onnx_rt.config.cond_dim), np.float32)
    both = onnx_rt.concat_states([a, b])
    v = onnx_rt.velocity(both, x, 0.3, cond)
    np.testing.assert_allclose(v[:1], onnx_rt.velocity(a, x[:1], 0.3, cond[:1]), atol=1e-5)
    np.testing.assert_allclose(v[1:], onnx_rt.velocity(b, x[1:], 0.3, cond[1:]), atol=1e-5)
    a2, b2 = onnx_rt.split_state(both, [1, 2])
    for name in onnx_rt.state_names:
        np.testing.assert_array_equal(a2[name], a[name])
        np.testing.assert_array_equal(b2[name], b[name])


def test_io_binding_path_equals_plain_run(runtimes):
    """The CUDA path keeps the cache on the device through IOBinding; the same code runs here with CPU memory."""
    _, onnx_rt, folder = runtimes
    bound = OnnxRuntime(folder, provider="cpu", io_binding=True)
    cond = np.zeros((2, onnx_rt.config.cond_dim), np.float32)
    plain_state, bound_state = onnx_rt.new_state(2), bound.new_state(2)
    for block in range(3):
        context, x = _frames(onnx_rt, 2, 6, block), _frames(onnx_rt, 2, 6, 50 + block)
        plain_state = onnx_rt.append_context(plain_state, context)
        bound_state = bound.append_context(bound_state, context)
        for t in (0.8, 0.2):
            np.testing.assert_allclose(bound.velocity(bound_state, x, t, cond), onnx_rt.velocity(plain_state, x, t, cond),
                                       atol=1e-6)
    assert all(type(v).__name__ == "OrtValue" for k, v in bound_state.items() if k != "pending_context")


def test_provider_choice_is_one_clear_line(runtimes, caplog):
    _, _, folder = runtimes
    with caplog.at_level(logging.INFO, logger="lmdm"):
        rt = OnnxRuntime(folder)
    lines = [r.getMessage() for r in caplog.records if r.name == "lmdm"]
    assert len(lines) == 1 and lines[0].startswith(f"ONNX Runtime on {rt.provider.upper()}")
    with pytest.raises(ValueError, match="unknown provider 'tpu'"):
        open_session(folder / "denoiser_step.onnx", "tpu")


@pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="a GPU is present: CUDA may work here")
def test_cuda_request_without_a_gpu_fails_clearly(runtimes):
    _, _, folder = runtimes
    with pytest.raises(RuntimeError, match="--provider cuda: ONNX Runtime cannot use CUDA here"):
        open_session(folder / "denoiser_step.onnx", "cuda")


TORCH_FREE = """
import sys, numpy as np
from lmdm_engine.io.presets import load_preset
from lmdm_engine.runtime.interface import load_runtime
from lmdm_engine.stream.session import Session
session = Session(load_runtime(backend="onnx"), 44100, 2, load_preset("glass_bells").params)
out = session.process(np.random.default_rng(0).standard_normal((2, 44100)).astype(np.float32) * 0.1)
assert out.shape == (2, 44100) and np.isfinite(out).all() and session.blocks_processed >= 1
from lmdm_engine.cli import main
main(["process", sys.argv[1], "-o", sys.argv[2], "--runtime", "onnx", "--quiet"])
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, loaded
print("torch-free")
"""


def test_session_and_process_on_onnx_import_no_torch(tmp_path):
    import soundfile as sf

    src = tmp_path / "in.wav"
    sf.write(src, (0.1 * np.random.default_rng(1).standard_normal((22050, 2))).astype(np.float32), 22050)
    result = subprocess.run([sys.executable, "-c", TORCH_FREE, str(src), str(tmp_path / "out.wav")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch-free" in result.stdout
    assert (tmp_path / "out.wav").is_file()


def test_batched_states_keep_the_fused_step(runtimes):
    """Queued context travels through concat/split, so a batch's first step still folds it in one pass."""
    torch_rt, onnx_rt, _ = runtimes
    cond = np.zeros((3, onnx_rt.config.cond_dim), np.float32)
    contexts = [_frames(onnx_rt, 1, 6, 0), _frames(onnx_rt, 2, 6, 1)]
    states = [onnx_rt.append_context(onnx_rt.new_state(c.shape[0]), c) for c in contexts]
    both = onnx_rt.concat_states(states)
    assert both["pending_context"].shape == (3, 6, onnx_rt.config.latent_dim)
    runs = []
    real_run = onnx_rt.session.run
    onnx_rt.session.run = lambda *a, **k: runs.append(1) or real_run(*a, **k)
    try:
        x = _frames(onnx_rt, 3, 6, 2)
        v = onnx_rt.velocity(both, x, 0.5, cond)
    finally:
        onnx_rt.session.run = real_run
    assert len(runs) == 1 and "pending_context" not in both
    reference = torch_rt.concat_states([torch_rt.append_context(torch_rt.new_state(c.shape[0]), c) for c in contexts])
    np.testing.assert_allclose(v, torch_rt.velocity(reference, x, 0.5, cond), atol=1e-5)
    parts = onnx_rt.split_state(onnx_rt.append_context(both, _frames(onnx_rt, 3, 4, 3)), [1, 2])
    assert [p["pending_context"].shape[0] for p in parts] == [1, 2]
