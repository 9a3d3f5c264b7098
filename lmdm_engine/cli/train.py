"""``lmdm corpus``, ``lmdm train`` and ``lmdm eval``: the procedural corpus, the training stages, evaluation."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CORPUS = Path("data/corpus")


def cmd_corpus(args) -> int:
    from lmdm_engine.train.corpus import write_corpus

    path = write_corpus(args.output, args.clips, seconds=args.seconds, seed=args.seed, jobs=args.jobs)
    print(f"corpus ready in {path}")
    return 0


def _ensure_data(args) -> Path:
    if args.data:
        return Path(args.data)
    from lmdm_engine.train.corpus import write_corpus

    return write_corpus(DEFAULT_CORPUS, args.corpus_clips, jobs=2)


# TrainOptions fields the train command passes on only when given (otherwise TrainOptions' defaults hold)
OPTIONAL_TRAIN_OPTIONS = ("threads", "ema_decay", "rollout_blocks", "max_sampling_steps", "sampler", "disc_lr",
                          "disc_layer", "disc_context_blocks", "contrastive_weight", "text_dropout", "style_dropout",
                          "jam_fraction", "rollout_level")


def cmd_train(args) -> int:
    from lmdm_engine.core.config import ModelConfig
    from lmdm_engine.train.loop import train
    from lmdm_engine.train.options import TrainOptions

    data = _ensure_data(args)
    given = {name: getattr(args, name) for name in OPTIONAL_TRAIN_OPTIONS if getattr(args, name) is not None}
    options = TrainOptions(stage=args.stage, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           seed=args.seed, max_minutes=args.max_minutes, **given)
    conditioning = {}
    if args.text_encoder:
        from lmdm_engine.core.conditioning import TEXT_ENCODER_DIMS

        conditioning.update(text_encoder=args.text_encoder, text_dim=TEXT_ENCODER_DIMS[args.text_encoder])
    if args.accompaniment:
        conditioning["accompaniment"] = True
    config = ModelConfig.load(args.config) if args.config else (None if args.init else ModelConfig())
    if config is not None and conditioning:
        config = config.replace(**conditioning)
    model_dir = train(args.output, data, options, config=config, init=args.init, device=args.device,
                      conditioning=conditioning or None)
    print(f"model written to {model_dir}")
    return 0


def cmd_eval(args) -> int:
    import torch

    from lmdm_engine.core.model import Denoiser
    from lmdm_engine.runtime.interface import default_model_dir, load_runtime
    from lmdm_engine.runtime.torch import TorchRuntime
    from lmdm_engine.train.data import load_clips
    from lmdm_engine.train.evaluate import evaluate, evaluation_table, write_result

    model = Path(args.model) if args.model else default_model_dir()
    runtime = load_runtime(model, backend="torch")
    clips = load_clips(_ensure_data(args), runtime.codec, "heldout")
    torch.manual_seed(args.seed)
    untrained = TorchRuntime(Denoiser(runtime.config.replace(extra={})), runtime.codec)
    result = evaluate(runtime, clips, untrained, blocks=args.blocks, steps=args.steps, sampler=args.sampler,
                      max_clips=args.clips, seed=args.seed)
    result["model_dir"] = str(model)
    print(evaluation_table({k: v for k, v in result.items() if k != "model_dir"}))
    if args.output:
        print(f"wrote {write_result(result, args.output)}")
    return 0


# ---- the subcommands (entry points of the lmdm.commands group) ---------------------------------------
def _data_args(p) -> None:
    p.add_argument("--data", default=None,
                   help=f"procedural corpus or any folder of audio files (default: render {DEFAULT_CORPUS})")
    p.add_argument("--corpus-clips", type=int, default=2000)


def add_corpus_parser(subparsers) -> None:
    """``lmdm corpus``."""
    p = subparsers.add_parser("corpus", help="render the procedural training corpus")
    p.add_argument("-o", "--output", default=str(DEFAULT_CORPUS))
    p.add_argument("--clips", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.set_defaults(func=cmd_corpus)


def add_train_parser(subparsers) -> None:
    """``lmdm train``."""
    p = subparsers.add_parser("train", help="train a stage: outpaint (bidirectional baseline), lmdm (block-causal) or "
                                     "arc-forcing (adversarial post-training on the model's own rollouts)")
    p.add_argument("--stage", required=True, choices=["outpaint", "lmdm", "arc-forcing"])
    p.add_argument("-o", "--output", required=True, help="run folder (resumes if it holds training state)")
    p.add_argument("--init", default=None,
                   help="model folder to start from (lmdm: the outpaint model; arc-forcing: the lmdm model)")
    p.add_argument("--config", default=None, help="folder with a config.json for a fresh model")
    _data_args(p)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4,
                   help="peak learning rate (arc-forcing: the generator's; scripts/train_arc_forcing.sh uses 1e-5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop and save after this long (0: no limit)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="decay of the saved EMA weights (default: lmdm_engine.train.options.TrainOptions)")
    cond = p.add_argument_group("conditioning (added to --init's model, or set on a fresh one)")
    cond.add_argument("--text-encoder", default=None, choices=["all-MiniLM-L6-v2"],
                      help="condition on text prompts embedded by this encoder (needs the text extra)")
    cond.add_argument("--accompaniment", action="store_true",
                      help="also learn jamming: generate one stem of a two-part clip given the mix so far")
    cond.add_argument("--text-dropout", type=float, default=None,
                      help="share of examples trained without their caption (classifier-free guidance)")
    cond.add_argument("--style-dropout", type=float, default=None, help="share of examples trained without tags")
    cond.add_argument("--jam-fraction", type=float, default=None,
                      help="share of training sequences that are jamming examples (with --accompaniment)")
    arc = p.add_argument_group("arc-forcing (defaults: lmdm_engine.train.options.TrainOptions)")
    arc.add_argument("--rollout-blocks", type=int, default=None,
                     help="blocks the model streams on its own outputs per training step")
    arc.add_argument("--max-sampling-steps", type=int, default=None,
                     help="sampling steps per rollout block are drawn from 1..this")
    arc.add_argument("--sampler", default=None, choices=["euler", "pingpong"], help="rollout sampler")
    arc.add_argument("--disc-lr", type=float, default=None, help="discriminator learning rate")
    arc.add_argument("--disc-layer", type=int, default=None,
                     help="DiT blocks the discriminator's backbone keeps (0: half the depth)")
    arc.add_argument("--disc-context-blocks", type=int, default=None,
                     help="clean blocks of the stream the discriminator sees before each block it scores")
    arc.add_argument("--rollout-level", action="store_true", default=None,
                     help="re-level each self-rollout block to the context's last block, as rollouts at inference do "
                          "(LatentStream.step's level)")
    arc.add_argument("--contrastive-weight", type=float, default=None,
                     help="weight of the mismatched-style contrastive term in the discriminator loss")
    p.set_defaults(func=cmd_train)


def add_eval_parser(subparsers) -> None:
    """``lmdm eval``."""
    p = subparsers.add_parser("eval", help="Frechet distance of continuations against held-out audio, with references")
    p.add_argument("--model", default=None)
    _data_args(p)
    p.add_argument("--clips", type=int, default=128)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--sampler", default="pingpong", choices=["euler", "pingpong"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default=None, help="write the figures as JSON")
    p.set_defaults(func=cmd_eval)
