"""A timbre classifier for the procedural corpus: which of the eight timbre families a clip plays.

It scores prompt adherence (bench_prompts.py, docs/PROMPTS.md): a generation asked for "a warm pad" should be
classified as ``pad``. A small CNN over log-mel frames (64 bands, 1024-point FFT, hop 256 at 22,050 Hz; each clip
first brought to the corpus's -20 dBFS RMS, so level does not matter) with three conv blocks, then mean and max
pooling over time, so it takes clips of any length from about half a second (it is trained on random crops of 1.5
to 4 s, for the benchmarks' 2-4 s generations). Labels are ``info["timbre"]`` of the corpus's metadata (config.TIMBRES):
clips with a pitched part over drums (about a quarter) are kept and labelled with the pitched timbre, as the
captions describe them ("pad over drums"): the classifier learns to hear the pitched part through a drum layer, and a
generation asked for a pitched timbre that adds drums still counts. "drums" means drums alone.

Trained on the corpus's train split, evaluated on its heldout split (whole clips and their first 2 s), on CPU in
about two to three minutes, then cached as safetensors + JSON (never pickle) in ``--cache``; it is retrained when
that is missing or its settings or the corpus differ.

    python benchmarks/timbre_classifier.py [--data data/corpus] [--cache runs/timbre_classifier] [--retrain]
        [--threads 1] [--fresh N] [--markdown] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import lmdm_engine  # noqa: F401  (before torch and numpy: the product's BLAS setting)
import numpy as np
import soundfile as sf
import torch
from torch import nn
from torch.nn import functional as F

from lmdm_engine.core.config import TIMBRES
from lmdm_engine.core.metrics import mel_filterbank
from lmdm_engine.core.resample import resample

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / "runs" / "timbre_classifier"
DEFAULT_DATA = ROOT / "data" / "corpus"
WEIGHTS_NAME = "classifier.safetensors"
SETTINGS_NAME = "classifier.json"
CLASSIFIER_VERSION = 1

# Everything that shapes the weights; a cached classifier whose settings differ is retrained.
SETTINGS = {
    "version": CLASSIFIER_VERSION,
    "timbres": list(TIMBRES),
    "sample_rate": 22050,
    "n_fft": 1024,
    "hop": 256,
    "n_mels": 64,
    "target_rms": 0.1,
    "channels": [16, 32, 48],
    "dropout": 0.3,
    "epochs": 12,
    "batch_size": 32,
    "max_lr": 3e-3,
    "weight_decay": 1e-2,
    "label_smoothing": 0.05,
    "crop_seconds": [1.5, 4.0],
    "seed": 0,
}
SHORT_SECONDS = 2.0  # the held-out evaluation also classifies each clip's first 2 s


# ---- features ----------------------------------------------------------------------------------------------------
class LogMel:
    """Log-mel frames [n_mels, frames] in torch (the same filterbank as lmdm_engine.metrics.log_mel)."""

    def __init__(self, settings: dict):
        self.s = settings
        self.window = torch.hann_window(settings["n_fft"], periodic=True)
        self.fb = torch.from_numpy(mel_filterbank(settings["sample_rate"], settings["n_fft"],
                                                  settings["n_mels"]).astype(np.float32))

    def __call__(self, audio: np.ndarray, sample_rate: int) -> torch.Tensor:
        """audio [samples] or [N, samples] (mono float) -> [N, n_mels, frames]."""
        a = np.atleast_2d(np.asarray(audio, np.float32))
        a = np.stack([resample(x, sample_rate, self.s["sample_rate"]) for x in a])
        rms = np.sqrt(np.mean(np.square(a, dtype=np.float64), axis=1, keepdims=True))
        a = (a * (self.s["target_rms"] / np.maximum(rms, 1e-6))).astype(np.float32)
        spec = torch.stft(torch.from_numpy(a), self.s["n_fft"], self.s["hop"], window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        return torch.log(torch.einsum("mf,nft->nmt", self.fb, spec.abs().square()) + 1e-5)


# ---- the network -------------------------------------------------------------------------------------------------
class TimbreNet(nn.Module):
    """Conv-BN-ReLU-pool blocks over [1, mels, frames], then mean and max over time of (channels x bands)."""

    def __init__(self, settings: dict):
        super().__init__()
        layers, c_in = [], 1
        for c in settings["channels"]:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        bands = settings["n_mels"] // 2 ** len(settings["channels"])
        self.head = nn.Sequential(nn.Dropout(settings["dropout"]),
                                  nn.Linear(2 * c_in * bands, len(settings["timbres"])))
        self.register_buffer("band_mean", torch.zeros(settings["n_mels"], 1))
        self.register_buffer("band_std", torch.ones(settings["n_mels"], 1))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [N, n_mels, frames] -> logits [N, classes]."""
        h = self.features(((mel - self.band_mean) / self.band_std).unsqueeze(1)).flatten(1, 2)  # [N, C*bands, T]
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], 1))


class TimbreClassifier:
    """The trained network with its settings and held-out figures (``report``)."""

    def __init__(self, net: TimbreNet, settings: dict, report: dict):
        self.net = net.eval()
        self.settings = settings
        self.report = report
        self.timbres = tuple(settings["timbres"])
        self.features = LogMel(settings)

    @property
    def heldout_accuracy(self) -> float:
        return float(self.report["heldout"]["accuracy"])

    @torch.inference_mode()
    def probabilities(self, clips, sample_rate: int, batch: int = 64) -> np.ndarray:
        """Class probabilities [N, classes] of mono clips (a list of 1-D arrays of any lengths >= 0.5 s, or an
        array [N, samples]) at ``sample_rate``."""
        clips = [np.asarray(c, np.float32).reshape(-1) for c in clips]
        min_samples = int(0.5 * sample_rate)
        for c in clips:
            if len(c) < min_samples:
                raise ValueError(f"clips must be at least 0.5 s long, got {len(c) / sample_rate:.2f} s")
        out = np.zeros((len(clips), len(self.timbres)), np.float32)
        by_length: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            by_length.setdefault(len(c), []).append(i)
        for idx in by_length.values():
            for start in range(0, len(idx), batch):
                part = idx[start:start + batch]
                mel = self.features(np.stack([clips[i] for i in part]), sample_rate)
                out[part] = torch.softmax(self.net(mel), -1).numpy()
        return out

    def predict(self, clips, sample_rate: int) -> list[str]:
        """The timbre family of each clip."""
        return [self.timbres[i] for i in self.probabilities(clips, sample_rate).argmax(1)]


# ---- data --------------------------------------------------------------------------------------------------------
def clip_timbre(row: dict) -> str:
    """A metadata row's label: ``info["timbre"]``, or for corpora written before ``info`` existed, the pitched
    timbre among its tags (drums when there is none)."""
    info = row.get("info") or {}
    if info.get("timbre") in TIMBRES:
        return info["timbre"]
    pitched = [t for t in row["tags"] if t in TIMBRES and t != "drums"]
    return pitched[0] if pitched else "drums"


def corpus_fingerprint(rows: list[dict]) -> str:
    keys = [(r["file"], r.get("seed"), r["split"], clip_timbre(r)) for r in rows]
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]


def load_corpus(data: Path, progress: bool = True) -> list[dict]:
    """The corpus's metadata rows; the corpus is rendered first (lmdm_engine.corpus defaults) when missing."""
    from lmdm_engine.train.corpus import read_metadata, write_corpus

    if not (data / "metadata.jsonl").is_file():
        print(f"no corpus in {data}: rendering the default one (2000 clips)", flush=True)
        write_corpus(data, 2000, jobs=2, progress=progress)
    return read_metadata(data)


def corpus_features(data: Path, rows: list[dict], features: LogMel) -> tuple[torch.Tensor, np.ndarray]:
    """Log-mel [N, n_mels, frames] and labels [N] of the corpus's clips (all of one length)."""
    mels = []
    for start in range(0, len(rows), 100):
        audio, sr = [], None
        for r in rows[start:start + 100]:
            a, sr = sf.read(data / r["file"], dtype="float32")
            audio.append(a if a.ndim == 1 else a.mean(1))
        mels.append(features(np.stack(audio), sr))
    labels = np.array([TIMBRES.index(clip_timbre(r)) for r in rows])
    return torch.cat(mels), labels


# ---- training and evaluation -------------------------------------------------------------------------------------
def _evaluate(net: TimbreNet, mel: torch.Tensor, labels: np.ndarray, with_drums: np.ndarray,
              short_frames: int) -> dict:
    net.eval()
    with torch.inference_mode():
        pred = np.concatenate([net(mel[i:i + 100]).argmax(1).numpy() for i in range(0, len(mel), 100)])
        short = np.concatenate([net(mel[i:i + 100, :, :short_frames]).argmax(1).numpy()
                                for i in range(0, len(mel), 100)])
    right, right_short = pred == labels, short == labels
    pitched_drums = with_drums & (labels != TIMBRES.index("drums"))
    confusion = np.zeros((len(TIMBRES), len(TIMBRES)), int)
    np.add.at(confusion, (labels, pred), 1)
    return {
        "clips": int(len(labels)),
        "accuracy": float(right.mean()),
        "accuracy_first_2s": float(right_short.mean()),
        "per_class": {t: float(right[labels == i].mean()) for i, t in enumerate(TIMBRES) if (labels == i).any()},
        "per_class_first_2s": {t: float(right_short[labels == i].mean()) for i, t in enumerate(TIMBRES)
                               if (labels == i).any()},
        "clips_per_class": {t: int((labels == i).sum()) for i, t in enumerate(TIMBRES)},
        "pitched_over_drums": {"clips": int(pitched_drums.sum()),
                               "accuracy": float(right[pitched_drums].mean()) if pitched_drums.any() else None},
        "confusion": confusion.tolist(),  # rows: true timbre, columns: predicted (TIMBRES order)
    }


def train(data: Path, settings: dict = SETTINGS, threads: int = 1, progress: bool = True) -> TimbreClassifier:
    """Train on the corpus's train split; the report holds the held-out figures."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    rows = load_corpus(data, progress)
    features = LogMel(settings)
    mel, labels = corpus_features(data, rows, features)
    split = np.array([r["split"] for r in rows])
    with_drums = np.array([bool((r.get("info") or {}).get("drums", "drums" in r["tags"])) for r in rows])
    train_idx, held_idx = np.flatnonzero(split == "train"), np.flatnonzero(split == "heldout")
    if len(held_idx) == 0:
        raise ValueError(f"{data}: the corpus has no heldout clips to evaluate on")
    if progress:
        print(f"timbre classifier: {len(train_idx)} train / {len(held_idx)} heldout clips, features "
              f"{time.perf_counter() - start:.0f} s", flush=True)

    torch.manual_seed(settings["seed"])
    rng = np.random.default_rng(settings["seed"])
    net = TimbreNet(settings)
    x_train, y_train = mel[train_idx], torch.from_numpy(labels[train_idx])
    net.band_mean.copy_(x_train.mean((0, 2)).unsqueeze(1))
    net.band_std.copy_(x_train.std((0, 2)).unsqueeze(1) + 1e-4)
    fps = settings["sample_rate"] / settings["hop"]
    lo, hi = (min(int(s * fps), mel.shape[-1]) for s in settings["crop_seconds"])
    batches = -(-len(train_idx) // settings["batch_size"])
    opt = torch.optim.AdamW(net.parameters(), settings["max_lr"], weight_decay=settings["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings["max_lr"], total_steps=settings["epochs"] * batches)
    for epoch in range(settings["epochs"]):
        net.train()
        order = torch.from_numpy(rng.permutation(len(train_idx)))
        total = 0.0
        for b in range(batches):
            i = order[b * settings["batch_size"]:(b + 1) * settings["batch_size"]]
            length = int(rng.integers(lo, hi + 1))
            offset = int(rng.integers(0, mel.shape[-1] - length + 1))
            loss = F.cross_entropy(net(x_train[i][..., offset:offset + length]), y_train[i],
                                   label_smoothing=settings["label_smoothing"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if progress:
            print(f"  epoch {epoch + 1}/{settings['epochs']}: loss {total / batches:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    held = _evaluate(net, mel[held_idx], labels[held_idx], with_drums[held_idx], int(SHORT_SECONDS * fps))
    report = {"heldout": held, "train_clips": int(len(train_idx)), "corpus": corpus_fingerprint(rows),
              "data": str(data), "train_seconds": round(time.perf_counter() - start, 1), "threads": threads}
    return TimbreClassifier(net, settings, report)


def save(classifier: TimbreClassifier, cache: Path) -> Path:
    from safetensors.torch import save_file

    cache.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in classifier.net.state_dict().items()}
    save_file(state, str(cache / WEIGHTS_NAME))
    (cache / SETTINGS_NAME).write_text(json.dumps({"settings": classifier.settings, "report": classifier.report},
                                                  indent=1) + "\n")
    return cache


def load(cache: Path) -> TimbreClassifier:
    from safetensors.torch import load_file

    saved = json.loads((cache / SETTINGS_NAME).read_text())
    net = TimbreNet(saved["settings"])
    net.load_state_dict(load_file(str(cache / WEIGHTS_NAME)))
    return TimbreClassifier(net, saved["settings"], saved["report"])


def load_or_train(cache: str | Path = DEFAULT_CACHE, data: str | Path = DEFAULT_DATA, retrain: bool = False,
                  threads: int = 1, progress: bool = True) -> TimbreClassifier:
    """The cached classifier, trained (and cached) first when missing, unreadable, trained with other settings or
    on another corpus, or when ``retrain``."""
    cache, data = Path(cache), Path(data)
    if not retrain and (cache / SETTINGS_NAME).is_file() and (cache / WEIGHTS_NAME).is_file():
        try:
            classifier = load(cache)
            same_corpus = True
            if (data / "metadata.jsonl").is_file():
                from lmdm_engine.train.corpus import read_metadata

                same_corpus = corpus_fingerprint(read_metadata(data)) == classifier.report.get("corpus")
            if classifier.settings == SETTINGS and same_corpus:
                return classifier
            reason = "its settings differ" if classifier.settings != SETTINGS else "the corpus differs"
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            reason = f"unreadable ({e})"
        if progress:
            print(f"timbre classifier in {cache}: {reason}; retraining", flush=True)
    elif progress:
        print(f"timbre classifier: training (cache {cache})", flush=True)
    threads_before = torch.get_num_threads()
    try:
        classifier = train(data, SETTINGS, threads, progress)
    finally:
        torch.set_num_threads(threads_before)
    save(classifier, cache)
    return classifier


def fresh_evaluation(classifier: TimbreClassifier, n: int, seed: int = 20261121, progress: bool = True) -> dict:
    """Accuracy on ``n`` freshly rendered clips (``corpus.render_clip_parts`` with seeds of their own, so none is a
    corpus clip): a larger test set than the corpus's heldout split, for tighter per-class figures."""
    from lmdm_engine.train.corpus import render_clip_parts

    sr = classifier.settings["sample_rate"]
    audio, labels, drums = [], [], []
    start = time.perf_counter()
    for i in range(n):
        clip = render_clip_parts(int(np.random.SeedSequence((seed, i)).generate_state(1)[0]), sr, 4.0)
        audio.append(clip.audio)
        labels.append(TIMBRES.index(clip.info["timbre"]))
        drums.append(bool(clip.info["drums"]))
        if progress and (i + 1) % 250 == 0:
            print(f"  rendered {i + 1}/{n} fresh clips ({time.perf_counter() - start:.0f} s)", flush=True)
    mel = classifier.features(np.stack(audio), sr)
    fps = sr / classifier.settings["hop"]
    return _evaluate(classifier.net, mel, np.array(labels), np.array(drums), int(SHORT_SECONDS * fps))


def report_lines(classifier: TimbreClassifier) -> str:
    held = classifier.report["heldout"]
    pd = held["pitched_over_drums"]
    return (f"timbre classifier: held-out accuracy {held['accuracy']:.1%} on {held['clips']} clips "
            f"({held['accuracy_first_2s']:.1%} on their first 2 s; {pd['accuracy']:.1%} on the {pd['clips']} "
            f"pitched-over-drums clips); chance {1 / len(classifier.timbres):.1%}")


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import machine, print_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the procedural corpus (rendered when missing)")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the classifier is cached")
    parser.add_argument("--retrain", action="store_true", help="train even when a cached classifier fits")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--fresh", type=int, default=0, metavar="N",
                        help="also test on N freshly rendered clips (not in the corpus; about 50 ms each)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", default=None, metavar="JSON")
    args = parser.parse_args()

    classifier = load_or_train(args.cache, args.data, args.retrain, args.threads)
    torch.set_num_threads(args.threads)
    tests = {"heldout split": classifier.report["heldout"]}
    if args.fresh > 0:
        tests[f"{args.fresh} fresh clips"] = fresh_evaluation(classifier, args.fresh)
    print(f"\nmachine: {machine()}; trained in {classifier.report['train_seconds']:.0f} s on "
          f"{classifier.report['threads']} thread(s) (as cached), {classifier.report['train_clips']} train clips")
    print(report_lines(classifier))
    headers, rows = ["timbre"], [[t] for t in classifier.timbres] + [["all"], ["pitched over drums"]]
    for name, r in tests.items():
        headers += [f"{name}: clips", "accuracy (4 s)", "accuracy (first 2 s)"]
        for row, t in zip(rows, classifier.timbres):
            row += [str(r["clips_per_class"][t]), f"{r['per_class'][t]:.1%}", f"{r['per_class_first_2s'][t]:.1%}"]
        rows[-2] += [str(r["clips"]), f"{r['accuracy']:.1%}", f"{r['accuracy_first_2s']:.1%}"]
        pd = r["pitched_over_drums"]
        rows[-1] += [str(pd["clips"]), f"{pd['accuracy']:.1%}" if pd["accuracy"] is not None else "-", ""]
    print_table(headers, rows, args.markdown)
    for name, r in tests.items():
        print(f"\nconfusion on the {name} (rows: true, columns: predicted):")
        conf = r["confusion"]
        print_table(["true \\ predicted", *classifier.timbres],
                    [[t, *(str(v) for v in conf[i])] for i, t in enumerate(classifier.timbres)], args.markdown)
    if args.json:
        out = {"machine": machine(), "cache": args.cache, "settings": classifier.settings, "report": classifier.report,
               "tests": tests}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
