"""Training data: clips encoded once to codec latents, from the procedural corpus or any folder of audio files."""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmdm_engine.core.codec import Codec, encode_clip
from lmdm_engine.core.conditioning import conditioning_vectors
from lmdm_engine.core.config import ModelConfig
from lmdm_engine.core.files import atomic_write
from lmdm_engine.core.resample import resample

AUDIO_SUFFIXES = (".wav", ".flac", ".aiff", ".aif", ".ogg", ".mp3")


@dataclass
class JamPairs:
    """Stems of the clips that have two parts (pitched + drums), for accompaniment (jamming) training: clip
    ``clip[i]``'s stems as latents [M, 2, frames, D] (pitched, drums), their tag vectors [M, 2, T] and, for text
    models, caption embeddings [M, 2, K, E]."""

    clip: np.ndarray
    stems: np.ndarray
    styles: np.ndarray
    captions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.clip)


@dataclass
class LatentClips:
    """Equal-length clips as codec latents [N, frames, D] (float16 to halve memory) with tag vectors [N, T]; for
    text models, K caption embeddings per clip [N, K, E]; for jamming models, the two-part clips' stems."""

    latents: np.ndarray
    styles: np.ndarray
    names: list[str]
    captions: np.ndarray | None = None
    jam: JamPairs | None = None

    def __len__(self) -> int:
        return len(self.names)

    def conditioning(self, config: ModelConfig, idx) -> np.ndarray:
        """Conditioning vectors [n, cond_dim] of clips ``idx``: their tags and (text models) first caption."""
        prompts = None
        if "text" in config.cond_layout:
            if self.captions is None:
                raise ValueError("a text model needs captioned clips (the procedural corpus)")
            prompts = self.captions[idx, 0]
        return conditioning_vectors(config, self.styles[idx], prompts)


def read_audio_mono(path: Path, sample_rate: int) -> np.ndarray:
    """Any file pedalboard can read, mixed to mono and resampled (core/resample.py) to ``sample_rate``."""
    from pedalboard.io import AudioFile

    try:
        with AudioFile(str(path)) as f:
            rate, audio = int(round(f.samplerate)), f.read(f.frames)
    except Exception as e:  # pedalboard raises several types for unreadable files
        raise ValueError(f"{path}: cannot read audio ({e})") from None
    return resample(audio.mean(0), rate, sample_rate)


def _cached(cache_path: Path, build) -> LatentClips:
    if cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            return LatentClips(z["latents"], z["styles"], list(z["names"]))
    clips = build()
    _save_npz(cache_path, latents=clips.latents, styles=clips.styles, names=np.array(clips.names))
    return clips


def _save_npz(path: Path, **arrays) -> None:
    with atomic_write(path) as partial, open(partial, "wb") as f:
        np.savez(f, **arrays)


def _corpus_rows(corpus_dir: Path, split: str) -> list[dict]:
    from .corpus import read_metadata

    rows = [r for r in read_metadata(corpus_dir) if r["split"] == split]
    if not rows:
        raise ValueError(f"{corpus_dir}: no clips in split {split!r}")
    return rows


def corpus_clips(corpus_dir: str | Path, codec: Codec, split: str) -> LatentClips:
    """Clips of a procedural corpus (see corpus.py) for ``split`` ("train" or "heldout"), cached beside it, with
    caption embeddings for text models and stems for jamming models."""
    from .corpus import style_vector

    config, corpus_dir = codec.config, Path(corpus_dir)
    rows = _corpus_rows(corpus_dir, split)

    def build() -> LatentClips:
        latents = [encode_clip(codec, read_audio_mono(corpus_dir / r["file"], config.sample_rate))
                   for r in tqdm(rows, desc=f"encoding {split} clips", leave=False)]
        styles = np.stack([style_vector(r["tags"], config.style_vocab) for r in rows])
        return LatentClips(np.stack(latents).astype(np.float16), styles, [r["file"] for r in rows])

    clips = _cached(corpus_dir / f"latents-{split}-{codec.key}.npz", build)
    if (config.text_dim or config.accompaniment) and any("info" not in r for r in rows):
        raise ValueError(f"{corpus_dir}: this corpus has no clip info (written before captions existed); "
                         f"render it again with `lmdm corpus -o {corpus_dir}`")
    if config.text_dim:
        clips.captions = corpus_captions(corpus_dir, rows, config.text_encoder, split)
    if config.accompaniment:
        clips.jam = corpus_jam_pairs(corpus_dir, rows, codec, split)
    return clips


CAPTIONS_PER_CLIP = 8


def corpus_captions(corpus_dir: Path, rows: list[dict], encoder: str, split: str) -> np.ndarray:
    """Embeddings [N, CAPTIONS_PER_CLIP, E] (float16) of "seen"-phrasing captions of each row's clip, cached."""
    from lmdm_engine.core.conditioning import encode_text

    from .captions import CAPTIONS_VERSION, clip_captions

    path = corpus_dir / f"captions-{split}-{encoder}-v{CAPTIONS_VERSION}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if list(z["files"]) == [r["file"] for r in rows]:
                return z["embeddings"]
    texts = [c for r in rows for c in clip_captions(r["info"], r["tags"], CAPTIONS_PER_CLIP, r["seed"])]
    emb = np.concatenate([encode_text(texts[i:i + 1024], encoder)
                          for i in tqdm(range(0, len(texts), 1024), desc=f"embedding {split} captions", leave=False)])
    emb = emb.reshape(len(rows), CAPTIONS_PER_CLIP, -1).astype(np.float16)
    _save_npz(path, embeddings=emb, texts=np.array(texts), files=np.array([r["file"] for r in rows]))
    return emb


def corpus_jam_pairs(corpus_dir: Path, rows: list[dict], codec: Codec, split: str) -> JamPairs:
    """The stems of every pitched + drums clip of ``rows``, re-rendered from their seeds and encoded, cached."""
    from .captions import CAPTIONS_VERSION, clip_captions, stem_info
    from .corpus import render_clip_parts, style_vector

    config = codec.config
    picked = [i for i, r in enumerate(rows) if r["info"]["drums"] and r["info"]["timbre"] != "drums"]
    if not picked:
        raise ValueError(f"{corpus_dir}: no pitched + drums clips in split {split!r} to learn jamming from")
    path = corpus_dir / f"jam-{split}-{codec.key}-{config.text_encoder or 'notext'}-v{CAPTIONS_VERSION}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if list(z["clip"]) == picked:
                return JamPairs(z["clip"], z["stems"], z["styles"], z["captions"] if config.text_dim else None)
    rates = {rows[i]["sample_rate"] for i in picked}
    if rates != {config.sample_rate}:
        raise ValueError(f"{corpus_dir}: clips at {sorted(rates)} Hz; the model runs at {config.sample_rate}")
    stems, styles, texts = [], [], []
    for i in tqdm(picked, desc=f"rendering {split} stems", leave=False):
        r = rows[i]
        clip = render_clip_parts(r["seed"], r["sample_rate"], r["seconds"], stems=True)
        pair = []
        for name in ("pitched", "drums"):
            pair.append(encode_clip(codec, clip.stems[name]))
            tags = [t for t in r["tags"] if t != (r["info"]["timbre"] if name == "drums" else "drums")]
            styles.append(style_vector(tags, config.style_vocab))
            texts += clip_captions(stem_info(r["info"], name), tags, CAPTIONS_PER_CLIP, r["seed"] + 1)
        stems.append(np.stack(pair))
    styles = np.stack(styles).reshape(len(picked), 2, -1)
    captions = None
    if config.text_dim:
        from lmdm_engine.core.conditioning import encode_text

        captions = encode_text(texts, config.text_encoder).reshape(len(picked), 2, CAPTIONS_PER_CLIP, -1)
        captions = captions.astype(np.float16)
    pairs = JamPairs(np.array(picked), np.stack(stems).astype(np.float16), styles, captions)
    _save_npz(path, clip=pairs.clip, stems=pairs.stems, styles=pairs.styles,
              captions=captions if captions is not None else np.zeros(0, np.float16))
    return pairs


def _folder_files(folder: Path, split: str, heldout_fraction: float = 0.1) -> list[Path]:
    """The audio files under ``folder`` in ``split``: a file is held out when a hash of its relative path falls
    under ``heldout_fraction``, so the split is stable when files are added."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)})")

    def in_split(p: Path) -> bool:
        bucket = zlib.crc32(str(p.relative_to(folder)).encode()) % 1000 / 1000
        return (bucket < heldout_fraction) == (split == "heldout")

    chosen = [p for p in files if in_split(p)]
    if not chosen:
        raise ValueError(f"{folder}: no files fall in split {split!r}; add more files")
    return chosen


def folder_clips(folder: str | Path, codec: Codec, split: str, seconds: float = 4.0,
                 heldout_fraction: float = 0.1) -> LatentClips:
    """Clips of ``seconds`` cut from every audio file under ``folder`` in ``split`` (see :func:`_folder_files`;
    unlabelled: zero tag vector)."""
    config, folder = codec.config, Path(folder)
    chosen = _folder_files(folder, split, heldout_fraction)
    clip_samples = int(seconds * config.sample_rate) // config.hop * config.hop

    def build() -> LatentClips:
        latents, names = [], []
        for p in tqdm(chosen, desc=f"encoding {split} files", leave=False):
            audio = read_audio_mono(p, config.sample_rate)
            for i in range(audio.shape[0] // clip_samples):
                latents.append(encode_clip(codec, audio[i * clip_samples:(i + 1) * clip_samples]))
                names.append(f"{p.relative_to(folder)}#{i}")
        if not latents:
            raise ValueError(f"{folder}: every file in split {split!r} is shorter than {seconds} s")
        styles = np.zeros((len(latents), len(config.style_vocab)), np.float32)
        return LatentClips(np.stack(latents).astype(np.float16), styles, names)

    key = hashlib.sha1("|".join(str(p) for p in chosen).encode()).hexdigest()[:8]
    cache_dir = folder / ".lmdm_cache"
    cache_dir.mkdir(exist_ok=True)
    return _cached(cache_dir / f"latents-{split}-{codec.key}-{key}-{seconds}.npz", build)


def load_clips(data: str | Path, codec: Codec, split: str) -> LatentClips:
    """A procedural corpus folder (it has metadata.jsonl) or any folder of audio files, encoded by ``codec``."""
    data = Path(data)
    if (data / "metadata.jsonl").is_file():
        return corpus_clips(data, codec, split)
    return folder_clips(data, codec, split)


def fit_codec(data: str | Path, config: ModelConfig, max_files: int = 600, weights: np.ndarray | None = None) -> Codec:
    """A codec basis fitted on up to ``max_files`` training files of ``data`` (a corpus or a folder of audio),
    spread evenly over them (``weights``: see :meth:`Codec.fit`)."""
    data = Path(data)
    if (data / "metadata.jsonl").is_file():
        files = [data / r["file"] for r in _corpus_rows(data, "train")]
    else:
        files = _folder_files(data, "train")
    files = files[:: max(1, len(files) // max_files)][:max_files]
    return Codec.fit(config, (read_audio_mono(p, config.sample_rate)
                              for p in tqdm(files, desc="fitting the codec", leave=False)), weights)


def fit_latent_scale(clips: LatentClips, floor_fraction: float = 0.05) -> np.ndarray:
    """Per-channel standard deviation of the latents, floored at a fraction of the median channel's."""
    lat = clips.latents.reshape(-1, clips.latents.shape[-1]).astype(np.float32)
    std = lat.std(0)
    return np.maximum(std, floor_fraction * np.median(std)).astype(np.float32)
