"""Training stages on a tiny corpus: losses run and change the weights, stages chain, training resumes exactly."""

import json

import numpy as np
import pytest
import torch

from lmdm_engine.config import debug_config
from lmdm_engine.corpus import write_corpus
from lmdm_engine.data import fit_latent_scale, load_clips
from lmdm_engine.model import Denoiser
from lmdm_engine.train import TrainOptions, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 12, seconds=0.5, sample_rate=8000, progress=False)


def options(stage, **kw):
    base = dict(stage=stage, steps=4, batch_size=2, min_target_frames=4, max_target_frames=8, max_blocks=3,
                log_every=1, checkpoint_every=2, warmup=1, threads=1)
    return TrainOptions(**{**base, **kw})


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_outpaint_then_lmdm(tmp_path, corpus):
    cfg = debug_config()
    outpaint = train(tmp_path / "outpaint", corpus, options("outpaint"), config=cfg, progress=False)
    first = Denoiser.from_pretrained(outpaint)
    assert first.config.attention == "bidirectional"
    clips = load_clips(corpus, cfg, "train")
    np.testing.assert_allclose(first.latent_scale.numpy(), fit_latent_scale(clips), rtol=1e-6)
    assert first.out_proj.weight.abs().sum() > 0  # trained away from the zero init
    assert all(np.isfinite(losses(tmp_path / "outpaint")))

    lmdm = train(tmp_path / "lmdm", corpus, options("lmdm"), init=outpaint, progress=False)
    second = Denoiser.from_pretrained(lmdm)
    assert second.config.attention == "block_causal"
    assert second.config.extra["stage"] == "lmdm"
    changed = [not torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values())]
    assert any(changed)
    assert torch.equal(first.latent_scale, second.latent_scale)  # the fitted scale carries over


def test_resume_reproduces_the_uninterrupted_run(tmp_path, corpus):
    cfg = debug_config()
    straight = tmp_path / "straight"
    train(straight, corpus, options("lmdm", steps=6), config=cfg, progress=False)
    resumed = tmp_path / "resumed"
    train(resumed, corpus, options("lmdm", steps=6, max_minutes=1e-9), config=cfg, progress=False)  # stops at 1
    assert len(losses(resumed)) == 1
    train(resumed, corpus, options("lmdm", steps=6), config=cfg, progress=False)
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-5)
    a = Denoiser.from_pretrained(straight / "model").state_dict()
    b = Denoiser.from_pretrained(resumed / "model").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_training_state_is_not_pickle(tmp_path, corpus):
    train(tmp_path, corpus, options("outpaint", steps=2), config=debug_config(), progress=False)
    files = sorted(p.name for p in (tmp_path / "train_state").iterdir())
    assert files == ["state.json", "state.safetensors"]
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_unknown_stage(tmp_path, corpus):
    with pytest.raises(ValueError, match="unknown stage"):
        train(tmp_path, corpus, options("arc"), config=debug_config(), progress=False)
