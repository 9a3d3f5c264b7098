"""ARC-Forcing: the rollout is the inference streaming path, gradients pass only through each block's last
sampling step, every loss trains its weights, and training resumes to the same losses."""

import json

import numpy as np
import pytest
import torch

from lmdm_engine.core.config import debug_config
from lmdm_engine.core.model import Denoiser
from lmdm_engine.train.arc import ArcForcing, Discriminator, mismatched_conditioning, self_rollout
from lmdm_engine.train.corpus import write_corpus
from lmdm_engine.train.data import load_clips
from lmdm_engine.train.evaluate import rollout
from lmdm_engine.train.loop import train
from lmdm_engine.train.options import TrainOptions

from conftest import codec_for, debug_torch_runtime, random_model, save_debug_model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 12, seconds=0.5, sample_rate=8000, progress=False)


@pytest.fixture(scope="module")
def lmdm_dir(tmp_path_factory):
    """A block-causal debug model to post-train (random weights, output layers included)."""
    folder = tmp_path_factory.mktemp("lmdm")
    save_debug_model(random_model(seed=1), folder)
    return folder


def arc_options(**kw):
    base = dict(stage="arc-forcing", steps=3, batch_size=3, rollout_blocks=3, max_sampling_steps=3, warmup=1,
                lr=1e-3, disc_lr=1e-3, style_dropout=0.0, log_every=1, checkpoint_every=2, threads=1)
    return TrainOptions(**{**base, **kw})


def numpy_noise(seed):
    """The noise evaluate.rollout draws with this seed, as a torch noise function."""
    rng = np.random.default_rng(seed)
    return lambda a: torch.from_numpy(rng.standard_normal(a.shape).astype(np.float32))


@pytest.mark.parametrize("sampler", ["pingpong", "euler"])
def test_rollout_equals_the_inference_rollout(sampler, monkeypatch):
    """With the same noise and steps, the training rollout gives the blocks evaluate.rollout streams through a
    TorchRuntime (the Session's path), and every network call is a Denoiser.step on the KV cache."""
    model = random_model(seed=2)
    cfg = model.config
    rng = np.random.default_rng(0)
    context = rng.standard_normal((2, 2 * cfg.block_frames, cfg.latent_dim)).astype(np.float32)  # model space
    cond = np.eye(2, cfg.cond_dim, dtype=np.float32)
    scale = model.latent_scale.numpy()
    expected = rollout(debug_torch_runtime(model), context * scale, 3, cfg.block_frames, 2, sampler, cond, seed=5,
                       follow_level=False)

    calls = []
    step = Denoiser.step
    monkeypatch.setattr(Denoiser, "step", lambda self, *a: calls.append(1) or step(self, *a))
    got = self_rollout(model, torch.from_numpy(context), torch.from_numpy(cond), 3, sampler, lambda: 2,
                       numpy_noise(5))
    assert got.shape == (2, 3, cfg.block_frames, cfg.latent_dim)
    np.testing.assert_allclose(got.detach().reshape(2, -1, cfg.latent_dim).numpy(), expected / scale,
                               rtol=1e-4, atol=1e-5)
    assert len(calls) == 2 + 3 * 2 + 3  # context blocks, 2 velocity steps per block, each block appended


def test_a_level_following_rollout_equals_the_inference_rollout_and_keeps_its_gradient():
    """With the codec (``rollout_level``), each training block is re-levelled as evaluate.rollout's follow_level
    re-levels it, to the context's last block, and the shift leaves the gradient through a block as it was."""
    model = random_model(seed=2)
    cfg, codec = model.config, codec_for(model)
    rng = np.random.default_rng(0)
    context = rng.standard_normal((2, 2 * cfg.block_frames, cfg.latent_dim)).astype(np.float32)  # model space
    cond = np.eye(2, cfg.cond_dim, dtype=np.float32)
    scale = model.latent_scale.numpy()
    expected = rollout(debug_torch_runtime(model), context * scale, 3, cfg.block_frames, 2, "pingpong", cond, seed=5)
    got = self_rollout(model, torch.from_numpy(context), torch.from_numpy(cond), 3, "pingpong", lambda: 2,
                       numpy_noise(5), codec)
    np.testing.assert_allclose(got.detach().reshape(2, -1, cfg.latent_dim).numpy(), expected / scale,
                               rtol=1e-4, atol=1e-4)
    target = codec.level(context[:, -cfg.block_frames:] * scale)
    for j in range(3):
        np.testing.assert_allclose(codec.level(got[:, j].detach().numpy() * scale), target, atol=1e-3)
    plain = self_rollout(model, torch.from_numpy(context), torch.from_numpy(cond), 3, "pingpong", lambda: 2,
                         numpy_noise(5))
    assert not np.allclose(plain.detach().numpy(), got.detach().numpy(), atol=1e-3)  # the level did move them
    # the first block follows the same cache with or without the level: its shift is a constant, its gradient the same
    params = list(model.parameters())
    for g, w in zip(torch.autograd.grad(got[:, 0].sum(), params), torch.autograd.grad(plain[:, 0].sum(), params)):
        torch.testing.assert_close(g, w)
    assert got.requires_grad


def test_gradients_flow_only_through_the_last_step_of_each_block(monkeypatch):
    model = random_model(seed=2)
    cfg = model.config
    passes = []  # (has target tokens, grad enabled, cache carries gradient) of every network pass
    last_steps = []  # the inputs of the passes with gradient
    step = Denoiser.step

    def spy(self, cache, context, x, t, cond):
        passes.append((x.shape[1] > 0, torch.is_grad_enabled(),
                       any(v.requires_grad for v in cache.values())))
        if torch.is_grad_enabled():
            last_steps.append((cache, x.detach().clone(), t, cond))
        return step(self, cache, context, x, t, cond)

    monkeypatch.setattr(Denoiser, "step", spy)
    steps = iter([3, 1, 2])
    context = torch.randn(1, cfg.block_frames, cfg.latent_dim)
    blocks = self_rollout(model, context, torch.zeros(1, cfg.cond_dim), 3, "pingpong", lambda: next(steps),
                          lambda a: torch.randn(a.shape))
    velocity_passes = [grad for target, grad, _ in passes if target]
    assert velocity_passes == [False, False, True, True, False, True]  # k = 3, 1, 2: only each block's last
    assert not any(grad for target, grad, _ in passes if not target)  # the cache is built without gradient
    assert not any(cache_grad for _, _, cache_grad in passes)
    assert blocks.requires_grad
    # a block's gradient is that of its last step alone, recomputed from the same input and cache
    params = list(model.parameters())
    for j, (cache, x, t, cond) in enumerate(last_steps):
        last = x - t[:, None, None] * step(model, cache, x[:, :0], x, t, cond)[0]  # ping-pong's last step, to t = 0
        torch.testing.assert_close(blocks[:, j], last)
        got = torch.autograd.grad(blocks[:, j].square().sum(), params, retain_graph=True)
        want = torch.autograd.grad(last.square().sum(), params)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
        assert any(g.abs().sum() > 0 for g in got)


def test_discriminator_starts_from_the_generators_middle_layer():
    model = random_model(seed=4)
    disc = Discriminator(model, 1)
    context, x = torch.randn(2, 16, model.config.latent_dim), torch.randn(2, 8, model.config.latent_dim)
    t, cond = torch.rand(2), torch.zeros(2, model.config.cond_dim)
    features = model.block_features(context, x, t, cond, 1)
    torch.testing.assert_close(disc.backbone.block_features(context, x, t, cond, 1), features)
    assert features.shape == (2, 8, model.config.width)
    assert not torch.allclose(model.block_features(context[:, :0], x, t, cond, 1), features)  # it sees the context
    assert disc(context, x, t, cond).shape == (2,)
    with pytest.raises(ValueError, match="disc_layer"):
        Discriminator(model, model.config.depth + 1)


def test_mismatched_styles_skip_equal_and_missing_styles():
    cond = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    other, valid = mismatched_conditioning(cond)
    torch.testing.assert_close(other, cond.roll(1, 0))
    assert valid.tolist() == [False, False, True, False]


@pytest.mark.parametrize("disc_context_blocks", [0, 1])
def test_each_loss_changes_its_weights(corpus, lmdm_dir, disc_context_blocks):
    """A few steps move the generator and the discriminator; the contrastive term changes what D learns."""
    def run(**kw):
        torch.manual_seed(0)
        model = Denoiser.from_pretrained(lmdm_dir)
        clips = load_clips(corpus, codec_for(model), "train")
        options = arc_options(disc_context_blocks=disc_context_blocks, **kw)
        stage = ArcForcing(model, clips, options, torch.Generator().manual_seed(0))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        disc_before = {k: v.clone() for k, v in stage.disc.state_dict().items()}
        optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr)
        losses = [stage.step(optimizer, i) for i in range(2)]
        moved = lambda a, b: [k for k in a if not torch.equal(a[k], b[k])]
        return losses, moved(before, model.state_dict()), moved(disc_before, stage.disc.state_dict()), stage

    losses, g_moved, d_moved, stage = run()
    for entry in losses:
        assert set(entry) == {"g_loss", "d_loss", "contrastive"} and all(np.isfinite(list(entry.values())))
    assert losses[0]["contrastive"] > 0  # the corpus's styles differ, so there are mismatched pairs
    assert "out_proj.weight" in g_moved and "blocks.0.attn.qkv.weight" in g_moved
    assert "head.3.weight" in d_moved and "backbone.blocks.0.attn.qkv.weight" in d_moved
    _, _, _, without = run(contrastive_weight=0.0)
    assert not torch.equal(stage.disc.head[3].weight, without.disc.head[3].weight)


def test_train_stage_resumes_to_the_same_losses(tmp_path, corpus, lmdm_dir):
    def logged(run):
        return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]

    straight = tmp_path / "straight"
    train(straight, corpus, arc_options(), init=lmdm_dir, progress=False)
    resumed = tmp_path / "resumed"
    train(resumed, corpus, arc_options(max_minutes=1e-9), init=lmdm_dir, progress=False)  # stops after step 1
    assert len(logged(resumed)) == 1
    train(resumed, corpus, arc_options(), init=lmdm_dir, progress=False)
    for a, b in zip(logged(straight), logged(resumed), strict=True):
        for key in ("g_loss", "d_loss", "contrastive"):
            assert a[key] == pytest.approx(b[key], rel=1e-5)
    model = Denoiser.from_pretrained(resumed / "model")
    assert model.config.extra["stage"] == "arc-forcing" and model.config.attention == "block_causal"
    reference = Denoiser.from_pretrained(straight / "model").state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, reference[k], rtol=1e-5, atol=1e-6)
    files = sorted(p.name for p in (resumed / "train_state").iterdir())
    assert files == ["state.json", "state.safetensors"]


def test_arc_forcing_needs_a_model_to_start_from(tmp_path, corpus):
    with pytest.raises(ValueError, match="init="):
        train(tmp_path, corpus, arc_options(), config=debug_config(), progress=False)


def test_cli_passes_the_arc_options(tmp_path, monkeypatch):
    from lmdm_engine import cli
    from lmdm_engine.cli.train import cmd_train
    from lmdm_engine.train import loop as train_module

    seen = {}
    monkeypatch.setattr(train_module, "train", lambda out, data, options, **kw: seen.setdefault("options", options))
    args = cli.build_parser().parse_args(
        ["train", "--stage", "arc-forcing", "-o", str(tmp_path), "--init", str(tmp_path), "--data", str(tmp_path),
         "--lr", "1e-5", "--disc-lr", "2e-4", "--rollout-blocks", "12", "--max-sampling-steps", "2",
         "--disc-context-blocks", "0", "--contrastive-weight", "0.5", "--rollout-level"])
    assert cmd_train(args) == 0
    o = seen["options"]
    assert (o.stage, o.lr, o.disc_lr, o.rollout_blocks, o.max_sampling_steps, o.disc_context_blocks,
            o.contrastive_weight, o.rollout_level) == ("arc-forcing", 1e-5, 2e-4, 12, 2, 0, 0.5, True)
    assert o.disc_layer == TrainOptions.disc_layer and o.sampler == TrainOptions.sampler  # not given: defaults
    assert not TrainOptions.rollout_level  # runs from before it kept their rollouts
