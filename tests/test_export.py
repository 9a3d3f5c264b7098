"""The exporter: graphs match the manifest, ONNX Runtime matches torch, bad folders give clear errors."""

import json
import shutil

import numpy as np
import onnx
import pytest

from lmdm_engine.core.config import ConfigError
from lmdm_engine.core.model import Denoiser
from lmdm_engine.io.presets import list_presets
from lmdm_engine.runtime.interface import default_model_dir
from lmdm_engine.runtime.onnx import MANIFEST_NAME, OnnxRuntime, read_manifest
from lmdm_engine.stream.params import unplayable_reason
from lmdm_export.exporter import export_model
from lmdm_export.verify import check_codec, check_session, check_step, verify_export

from conftest import codec_for, preset_params, random_model

ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.BOOL: "bool"}


@pytest.fixture(scope="module")
def debug_export(tmp_path_factory):
    model = random_model()
    folder = tmp_path_factory.mktemp("export")
    export_model(model, codec_for(model), folder, source="debug")
    return model, folder


def _graph_io(values) -> list[dict]:
    out = []
    for v in values:
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        out.append({"name": v.name, "dtype": ONNX_DTYPES[v.type.tensor_type.elem_type], "rank": len(dims), "dims": dims})
    return out


def test_manifest_describes_every_graph_input_and_output(debug_export):
    model, folder = debug_export
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    for name, entry in manifest["graphs"].items():
        graph = onnx.load(str(folder / entry["file"]))
        for listed, actual in ((entry["inputs"], _graph_io(graph.graph.input)), (entry["outputs"], _graph_io(graph.graph.output))):
            assert [io["name"] for io in listed] == [a["name"] for a in actual], name
            for io, a in zip(listed, actual):
                assert io["dtype"] == a["dtype"] and len(io["shape"]) == a["rank"], (name, io, a)
                fixed = [d for d in io["shape"] if isinstance(d, int)]
                assert fixed == [d for d in a["dims"] if isinstance(d, int) and d > 0], (name, io, a)
        meta = {p.key: p.value for p in graph.metadata_props}
        stored = json.loads(meta["lmdm.manifest"])
        assert stored["graphs"][name]["inputs"] == entry["inputs"] and stored["sample_rate"] == manifest["sample_rate"]
    cfg = model.config
    step = manifest["graphs"]["denoiser_step"]
    names = [io["name"] for io in step["inputs"]]
    assert names[:4] == ["latents", "time", "cond", "context"]
    assert f"past_key_values.{cfg.depth - 1}.value" in names and "context_valid" in names
    assert f"present.{cfg.depth - 1}.value" in [io["name"] for io in step["outputs"]]
    # the fixed window: cache shapes have no dynamic axis but the batch
    assert step["inputs"][4]["shape"] == ["batch", cfg.heads, cfg.context_frames, cfg.head_dim]
    for key in ("host_loop", "presets", "sampler", "latent_scale", "state", "style_vocab", "window", "block_frames"):
        assert manifest[key], key
    assert set(manifest["state"]["denoiser_step"].values()) == {io["name"] for io in step["outputs"][1:]}


def test_onnx_runtime_matches_torch_graph_by_graph_and_per_session(debug_export):
    model, folder = debug_export
    checks = verify_export(model, folder, blocks=20)
    playable = [p for p in list_presets() if unplayable_reason(p.params, model.config) is None]
    assert 0 < len(playable) < len(list_presets())  # the debug model has no text and no jamming
    assert len(checks) == 4 + len(playable)  # step, codec encode, decode and level, a session per playable preset
    for check in checks:
        assert check.ok, (check.name, check.max_abs_error, check.tolerance)


def test_verification_catches_a_wrong_export(debug_export, tmp_path):
    model, _ = debug_export
    other = random_model(seed=1)
    export_model(other, codec_for(other), tmp_path)
    rt = OnnxRuntime(tmp_path, provider="cpu")
    assert not check_step(model, rt).ok
    assert not check_session(model, rt, blocks=4, preset="dream_keys").ok


def test_shipped_default_model_export_is_current_and_verified():
    """The shipped export was made from the shipped weights (the runtime default runs it)."""
    folder = default_model_dir()
    model = Denoiser.from_pretrained(folder)
    rt = OnnxRuntime(folder, provider="cpu")
    assert rt.manifest["config"] == model.config
    np.testing.assert_array_equal(rt.latent_scale, model.latent_scale.numpy())
    for check in [check_step(model, rt), *check_codec(rt, seconds=1.0), check_session(model, rt, blocks=6)]:
        assert check.ok, (check.name, check.max_abs_error)


@pytest.mark.parametrize("damage, message", [
    ("truncate_step", "sha256"),
    ("missing_graph", "codec_decode.onnx: missing"),
    ("bad_json", "not valid JSON"),
    ("old_version", "schema_version"),
    ("wrong_latent_scale", "latent_scale has"),
    ("unknown_config_field", "unknown field"),
])
def test_corrupt_or_mismatched_folder_names_what_is_wrong(debug_export, tmp_path, damage, message):
    _, folder = debug_export
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    manifest_path = broken / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    if damage == "truncate_step":
        data = (broken / "denoiser_step.onnx").read_bytes()
        (broken / "denoiser_step.onnx").write_bytes(data[: len(data) // 2])
    elif damage == "missing_graph":
        (broken / "codec_decode.onnx").unlink()
    elif damage == "bad_json":
        manifest_path.write_text("{ not json")
    else:
        if damage == "old_version":
            manifest["schema_version"] = 0
        elif damage == "wrong_latent_scale":
            manifest["latent_scale"] = manifest["latent_scale"][:-1]
        else:
            manifest["config"]["colour"] = "blue"
        manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=message) as info:
        OnnxRuntime(broken, provider="cpu")
    assert str(broken) in str(info.value)


def test_model_folder_without_export_says_how_to_make_one(debug_model_dir):
    with pytest.raises(ConfigError, match="lmdm export"):
        read_manifest(debug_model_dir)


def test_shipped_manifest_carries_each_preset_conditioning_vector():
    """Hosts play prompted and jam presets from the manifest alone: each preset's cond_vector is the Session's."""
    from lmdm_engine.runtime.onnx import OnnxRuntime
    from lmdm_engine.stream.session import Session

    manifest = read_manifest(default_model_dir() / "onnx")
    runtime = OnnxRuntime(default_model_dir() / "onnx", provider="cpu")
    assert manifest["conditioning"]["cond_dim"] == runtime.config.cond_dim
    assert manifest["conditioning"]["layout"] == {k: list(v) for k, v in runtime.config.cond_layout.items()}
    for preset in list_presets():
        vector = manifest["presets"][preset.name]["cond_vector"]
        assert vector is not None, preset.name  # the shipped model plays every shipped preset
        session = Session(runtime, 48000, 1, preset_params(preset.name))
        np.testing.assert_allclose(vector, session.conditioning[0], atol=1e-6)
