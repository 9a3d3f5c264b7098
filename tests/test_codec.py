"""Streaming spectral codec: exact reconstruction at any block that is a multiple of the hop."""

import numpy as np
import pytest

from lmdm_engine.core.audio import tone
from lmdm_engine.core.codec import StreamingCodec, decode_clip, encode_clip
from lmdm_engine.core.config import ModelConfig, debug_config
from lmdm_engine.core.metrics import snr_db


@pytest.mark.parametrize("config", [ModelConfig(), debug_config()], ids=["default", "debug"])
@pytest.mark.parametrize("hops_per_block", [1, 3, 7, 13, 22])
def test_roundtrip_snr_at_block_sizes(config, hops_per_block):
    audio = tone(2.0, config.sample_rate, channels=2)
    codec = StreamingCodec(config, 2)
    block = hops_per_block * config.hop
    n = audio.shape[1] // block * block
    out = np.concatenate([codec.decode(codec.encode(audio[:, i:i + block])) for i in range(0, n, block)], 1)
    lat = codec.latency_samples
    assert lat == config.n_fft - config.hop
    assert snr_db(audio[:, :n - lat], out[:, lat:n]) > 50.0


def test_clip_helpers_align_with_source():
    cfg = ModelConfig()
    audio = tone(1.0, cfg.sample_rate, channels=1)[0]
    z = encode_clip(cfg, audio)
    assert z.shape == (audio.shape[0] // cfg.hop, cfg.latent_dim)
    back = decode_clip(cfg, z)
    usable = z.shape[0] * cfg.hop
    # the clip's last hop has only one of its two overlapping windows
    assert snr_db(audio[:usable - cfg.hop], back[:usable - cfg.hop]) > 50.0


def test_shape_errors():
    cfg = debug_config()
    codec = StreamingCodec(cfg, 2)
    with pytest.raises(ValueError, match="multiple of hop"):
        codec.encode(np.zeros((2, cfg.hop + 1), np.float32))
    with pytest.raises(ValueError, match=r"\[2, samples\]"):
        codec.encode(np.zeros((1, cfg.hop), np.float32))
    with pytest.raises(ValueError, match="latents"):
        codec.decode(np.zeros((2, 3, cfg.latent_dim + 1), np.float32))


def test_no_drift_over_a_long_stream():
    """The decoder's running phase must not drift: 20,000 frames in, the last second is still exact."""
    cfg = debug_config()
    codec = StreamingCodec(cfg, 1)
    audio = np.tile(tone(1.0, cfg.sample_rate, channels=1), (1, 80))  # 80 s, 20,000 frames
    block = 25 * cfg.hop
    n = audio.shape[1] // block * block
    out = np.concatenate([codec.decode(codec.encode(audio[:, i:i + block])) for i in range(0, n, block)], 1)
    lat, last = codec.latency_samples, cfg.sample_rate
    assert snr_db(audio[:, n - last - lat:n - lat], out[:, n - last:n]) > 50.0
