"""A host outside Python: export/node/host.mjs runs the shipped export from its manifest and matches Python."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lmdm_engine.runtime.interface import default_model_dir
from lmdm_export.host_vector import write_host_vector

NODE_DIR = Path(__file__).resolve().parents[1] / "export" / "node"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.skipif(not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir(),
                    reason="run `npm ci --ignore-scripts` in export/node (.ci/run does)")
@pytest.mark.parametrize("preset, channels", [("glass_bells", 2), ("tape_echo", 1)])
def test_node_host_matches_python(tmp_path, preset, channels):
    vector = write_host_vector(default_model_dir() / "onnx", tmp_path / "vector", blocks=5, preset=preset,
                               channels=channels)
    result = subprocess.run(["node", str(NODE_DIR / "host.mjs"), str(default_model_dir() / "onnx"), str(vector)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["max_abs_error"] <= 1e-3 and report["blocks"] == 5
