"""The model config: one versioned dataclass, saved and loaded as config.json with clear errors."""

import json

import pytest

from lmdm_engine.core.config import CONFIG_VERSION, ConfigError, ModelConfig, debug_config


def test_roundtrip(tmp_path):
    cfg = debug_config(depth=3)
    cfg.save(tmp_path)
    assert ModelConfig.load(tmp_path) == cfg
    assert json.loads((tmp_path / "config.json").read_text())["version"] == CONFIG_VERSION == 2


def test_derived_sizes():
    cfg = ModelConfig()
    assert cfg.latent_dim == 128 and cfg.context_frames == 66 and cfg.codec_latency == 512
    assert cfg.max_block_frames * cfg.hop / cfg.sample_rate >= 1.5  # the presets' longest delay fits


@pytest.mark.parametrize("field,value,match", [
    ("hop", 300, "hop"), ("heads", 5, "width"), ("attention", "sideways", "attention"),
    ("version", 99, "version"), ("latent_size", 0, "latent_size"), ("latent_size", 34, "latent_size"),
    ("log_floor", 0.0, "log_floor"),
])
def test_invalid_fields_are_named(field, value, match):
    with pytest.raises(ConfigError, match=match):
        debug_config(**{field: value})


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing"):
        ModelConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.load(tmp_path)
    (tmp_path / "config.json").write_text('{"hop": 7}')
    with pytest.raises(ConfigError, match=r"config.json.*hop"):
        ModelConfig.load(tmp_path)
