"""The one model config: a versioned dataclass saved as ``config.json`` beside ``model.safetensors``.

Every module (codec, denoiser, session, training, export) takes this object; nothing reads loose kwargs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_write

CONFIG_VERSION = 2  # 2: the log-magnitude PCA codec (latent_size, log_floor)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Style vocabulary of the procedural corpus: timbre families, then production tags (see train/corpus.py).
TIMBRES = ("keys", "pluck", "bell", "pad", "organ", "bass", "lead", "drums")
STYLE_TAGS = ("bright", "dark", "reverb", "distorted", "fast", "slow")
STYLE_VOCAB = TIMBRES + STYLE_TAGS

ATTENTION_MODES = ("bidirectional", "block_causal")


class ConfigError(ValueError):
    """A config.json that cannot be used; the message names the file and the field."""


# Bounds on every dimension a config file gives, checked before anything is built: a file with a huge width or
# window would otherwise ask for gigabytes at the first open. Far beyond any model this project makes (the shipped
# one: width 256, depth 6, a 66-frame cache of 0.13 MiB a channel and layer pair).
BOUNDS = {
    "sample_rate": (1000, 384000), "n_fft": (4, 16384), "width": (2, 4096), "depth": (1, 128), "heads": (1, 128),
    "mlp_ratio": (0.125, 16.0), "block_frames": (1, 4096), "window_blocks": (1, 64), "text_dim": (0, 4096),
    "min_block_frames": (1, 4096),
}
MAX_STYLE_TAGS = 1024
MAX_WEIGHT_BYTES = 4 << 30  # the denoiser's float32 weights, estimated
MAX_CACHE_BYTES = 1 << 30  # one stream's KV cache (one channel), float32


@dataclass
class ModelConfig:
    """Codec + denoiser hyper-parameters. Sizes are in latent frames unless the name says samples."""

    version: int = CONFIG_VERSION
    # Codec: log-magnitude STFT on a fitted PCA basis, peak-locked phases (see codec.py). 22,050 Hz keeps the
    # spectrum musicians hear most (to 11 kHz) while halving the frames a 2-core CPU must generate versus 44.1 kHz.
    sample_rate: int = 22050
    n_fft: int = 1024
    hop: int = 512
    latent_size: int = 128  # principal components of the log-magnitude kept per frame
    log_floor: float = 1e-3  # log(|X| + log_floor): magnitudes far below it are not told apart
    # Denoiser: block-causal DiT, at the shipped model's size (docs/SOUND.md: sizes against per-block time).
    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    block_frames: int = 22  # default block length (= delay time), about 0.51 s
    window_blocks: int = 4  # W: a block attends to itself and W-1 blocks of context
    attention: str = "block_causal"  # or "bidirectional" for the outpainting baseline
    style_vocab: tuple[str, ...] = STYLE_VOCAB
    # Text prompts: width of the sentence embedding the model is conditioned on (0 = no prompts) and the encoder
    # that makes it (see conditioning.py; "all-MiniLM-L6-v2" gives 384).
    text_dim: int = 0
    text_encoder: str = ""
    # Jamming: one conditioning slot that asks for a part accompanying the context instead of continuing it.
    accompaniment: bool = False
    rope_base: float = 10000.0
    min_block_frames: int = 4
    extra: dict = field(default_factory=dict)  # free-form provenance (training stage, data), never read by code

    def __post_init__(self):
        self.style_vocab = tuple(self.style_vocab)
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        """Channels of one latent frame: the codec's principal components."""
        return self.latent_size

    @property
    def context_frames(self) -> int:
        """Clean frames a target block attends to: W-1 default blocks (the KV cache length)."""
        return (self.window_blocks - 1) * self.block_frames

    @property
    def max_block_frames(self) -> int:
        """Longest block (delay) the session accepts: the delayed input must still be in the context."""
        return max(self.context_frames, self.block_frames)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def cond_dim(self) -> int:
        """Width of the conditioning vector (the model's ``cond`` input): tags, then the accompaniment flag, then the
        text embedding (see :attr:`cond_layout`)."""
        return len(self.style_vocab) + int(self.accompaniment) + self.text_dim

    @property
    def cond_layout(self) -> dict[str, tuple[int, int]]:
        """Where each part of the conditioning vector lies: name -> [start, stop)."""
        tags = len(self.style_vocab)
        layout = {"tags": (0, tags)}
        if self.accompaniment:
            layout["accompaniment"] = (tags, tags + 1)
        if self.text_dim:
            start = tags + int(self.accompaniment)
            layout["text"] = (start, start + self.text_dim)
        return layout

    @property
    def codec_latency(self) -> int:
        """Samples the streaming codec delays its reconstruction by."""
        return self.n_fft - self.hop

    def validate(self) -> None:
        def need(cond: bool, name: str, msg: str):
            if not cond:
                raise ConfigError(f"config field '{name}': {msg} (got {getattr(self, name)!r})")

        need(self.version == CONFIG_VERSION, "version", f"this lmdm reads config version {CONFIG_VERSION}")
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high, name,
                 f"must be in [{low}, {high}]")
        need(isinstance(self.style_vocab, tuple) and len(self.style_vocab) <= MAX_STYLE_TAGS, "style_vocab",
             f"must hold at most {MAX_STYLE_TAGS} tags")
        need(self.n_fft > 0 and self.n_fft % 2 == 0, "n_fft", "must be a positive even number")
        need(self.n_fft == 2 * self.hop, "hop", "must be n_fft / 2 (sqrt-Hann overlap-add reconstructs exactly)")
        need(1 <= self.latent_size <= self.n_fft // 2 + 1, "latent_size", "must be in [1, n_fft / 2 + 1]")
        need(self.log_floor > 0, "log_floor", "must be positive")
        need(self.width % self.heads == 0, "width", "must be divisible by heads")
        need((self.width // self.heads) % 2 == 0, "heads", "width / heads must be even (rotary embedding)")
        need(self.depth >= 1, "depth", "must be >= 1")
        need(self.window_blocks >= 1, "window_blocks", "must be >= 1")
        need(self.block_frames >= self.min_block_frames, "block_frames", "must be >= min_block_frames")
        need(self.attention in ATTENTION_MODES, "attention", f"must be one of {ATTENTION_MODES}")
        need(len(self.style_vocab) > 0, "style_vocab", "must not be empty")
        need(self.text_dim >= 0, "text_dim", "must be >= 0")
        need((self.text_dim > 0) == bool(self.text_encoder), "text_encoder",
             "names the prompt encoder exactly when text_dim > 0")
        weights = 4 * self.depth * (4 + 2 * self.mlp_ratio) * self.width ** 2 + 4 * 2 * self.latent_dim * self.width
        need(weights <= MAX_WEIGHT_BYTES, "width", f"with depth {self.depth} and mlp_ratio {self.mlp_ratio} the "
             f"weights would take {weights / 2**30:.1f} GiB; at most {MAX_WEIGHT_BYTES >> 30} GiB")
        cache = 4 * 2 * self.depth * self.context_frames * self.width
        need(cache <= MAX_CACHE_BYTES, "window_blocks", f"with block_frames {self.block_frames}, depth {self.depth} "
             f"and width {self.width} a stream's cache would take {cache / 2**30:.1f} GiB; at most "
             f"{MAX_CACHE_BYTES >> 30} GiB")

    # ---- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["style_vocab"] = list(self.style_vocab)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}; known fields are {sorted(known)}")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as partial:
            partial.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "ModelConfig":
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"{path}: missing (a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(d, source=str(path))

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def debug_config(**overrides) -> ModelConfig:
    """A tiny config that builds in milliseconds, for tests."""
    base = dict(sample_rate=8000, n_fft=64, hop=32, latent_size=16, width=32, depth=2, heads=2, block_frames=16,
                window_blocks=3, min_block_frames=4)
    base.update(overrides)
    return ModelConfig(**base)
