"""Training stages on a tiny corpus: losses run and change the weights, stages chain, training resumes exactly."""

import json

import numpy as np
import pytest
import torch

from lmdm_engine.core.codec import Codec
from lmdm_engine.core.config import debug_config
from lmdm_engine.core.model import Denoiser
from lmdm_engine.train.corpus import write_corpus
from lmdm_engine.train.data import fit_latent_scale, load_clips
from lmdm_engine.train.loop import train
from lmdm_engine.train.options import TrainOptions


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
    clips = load_clips(corpus, Codec.load(outpaint), "train")
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


def test_text_and_jam_conditioning_added_to_a_trained_model(tmp_path_factory, tmp_path):
    """A model gains prompts and jamming from --init: it starts out computing what its parent did, then trains on
    captions and on jamming examples (clean stream = a two-part clip's mix, target = one stem, flag set)."""
    from lmdm_engine.core.conditioning import TEXT_ENCODER
    from lmdm_engine.train.batches import Batcher

    corpus = write_corpus(tmp_path_factory.mktemp("jam_corpus"), 24, seconds=0.5, sample_rate=8000, progress=False)
    base = train(tmp_path / "base", corpus, options("lmdm"), config=debug_config(), progress=False)
    cond = dict(text_dim=384, text_encoder=TEXT_ENCODER, accompaniment=True)
    run = train(tmp_path / "text", corpus, options("lmdm", jam_fraction=0.5, steps=3), init=base, progress=False,
                conditioning=cond)
    model = Denoiser.from_pretrained(run)
    assert model.config.cond_layout.keys() == {"tags", "accompaniment", "text"}
    tags = len(model.config.style_vocab)
    assert model.cond_proj.weight[:, tags:].abs().sum() > 0  # the new columns trained away from zero

    clips = load_clips(corpus, Codec.load(run, model.config), "train")
    assert clips.captions.shape[1:] == (8, 384) and len(clips.jam) > 0
    batcher = Batcher(clips, model.config, options("lmdm", jam_fraction=1.0, style_dropout=0.0, text_dropout=0.0,
                                                   batch_size=6), model.latent_scale.numpy())
    batch = batcher.next()
    assert np.all(batch["cond"][:, tags] == 1.0)  # every row a jam, flagged
    assert not np.allclose(batch["target"], batch["clean"])  # the target is a stem, not the mix
    assert np.all(np.abs(batch["cond"][:, tags + 1:]).sum(1) > 0)  # each row carries a caption


def test_with_conditioning_keeps_what_the_model_computes():
    from lmdm_engine.core.conditioning import TEXT_ENCODER

    torch.manual_seed(0)
    model = Denoiser(debug_config())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    wide = model.with_conditioning(text_dim=384, text_encoder=TEXT_ENCODER, accompaniment=True)
    cfg = model.config
    context, x, t = torch.randn(2, 32, cfg.latent_dim), torch.randn(2, 16, cfg.latent_dim), torch.rand(2)
    style = torch.rand(2, cfg.cond_dim)
    wide_style = torch.cat([style, torch.zeros(2, 385)], 1)
    torch.testing.assert_close(wide.velocity_outpaint(context, x, t, wide_style),
                               model.velocity_outpaint(context, x, t, style), atol=1e-5, rtol=1e-5)
    back = wide.with_conditioning(text_dim=0, text_encoder="", accompaniment=False)  # and back again
    torch.testing.assert_close(back.cond_proj.weight, model.cond_proj.weight)
