"""Offline batch processing: files, folders and globs through the generative delay and its chains.

    plan = plan_jobs(["stems/", "vox/*.flac"], "out/")   # what goes where; unreadable inputs are reported
    for result in run_batch(plan.jobs, settings, workers=2):
        ...                                               # a FileResult per file, as each one finishes

Naming: a folder's files keep their path below that folder, a glob's files their path below the glob's fixed
leading folders, a named file its name; the suffix becomes the output format's. Folders and globs take the files
whose suffix pedalboard reads (hidden files and the output folder are left out); a file named on its own is always
tried. Each file is read, processed and written buffer by buffer (constant memory, whatever its length), written
to ``<output>.partial`` and renamed when complete. A file that fails is reported with its reason; the rest go on.

One per-file function, ``FileProcessor`` (it loads the effect once, then ``process_file`` for each job); the runners
differ only in who calls it: ``run_batch`` here (in this process, or in ``--jobs`` worker processes) and
``ray_batch.RayRun`` (in Ray actors; imported only for ``--ray``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import glob
import json
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pedalboard.io
import soundfile as sf
from tqdm import tqdm

from lmdm_engine.core.files import atomic_write, partial_path
from lmdm_engine.runtime.interface import DEFAULT_BACKEND, load_runtime

from .effect import GenerativeDelay
from .presets import Preset

READ_SUFFIXES = tuple(s.lower() for s in pedalboard.io.get_supported_read_formats())
# (format, bit depth) -> soundfile subtype; 8-bit WAV is unsigned by the format's definition, 32-bit is float.
SUBTYPES = {
    ("wav", 8): "PCM_U8", ("wav", 16): "PCM_16", ("wav", 24): "PCM_24", ("wav", 32): "FLOAT",
    ("flac", 8): "PCM_S8", ("flac", 16): "PCM_16", ("flac", 24): "PCM_24",
}
OUTPUT_FORMATS = ("wav", "flac")
UNCOMPRESSED_FORMATS = ("WAV", "WAVEX", "AIFF", "RF64", "W64")  # libsndfile's names
# A spectrogram shows at most this much of each file, so drawing one never holds a whole long file in memory.
SPECTROGRAM_SECONDS = 30.0
SPECTROGRAM_COLUMNS = 2000  # STFT columns at most (twice the PNG's width): the hop grows for long excerpts
SPECTROGRAM_HOP = 256
PROGRESS_INTERVAL_SECONDS = 0.2  # how often a worker process reports progress


class PlanError(ValueError):
    """A request that cannot be carried out as a whole (e.g. two inputs named to one output); nothing was run."""


WORKER_STOP_SECONDS = 5.0  # a stopped run waits this long for its workers to clean up, then kills them


class Interrupted(BaseException):
    """Stops a run on SIGTERM (or in a worker whose parent is gone); partial files are removed on the way out."""


def raise_interrupted(signum, frame) -> None:
    """A signal handler: ``signal.signal(signal.SIGTERM, raise_interrupted)``."""
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_noted() -> Iterator[list[int]]:
    """While a run's loop waits on its workers, SIGINT and SIGTERM are only noted, and the loop raises them between
    waits (``raise_noted``): an exception raised in a handler can be swallowed where it lands (Ray's wait turns it
    into a SystemError; a finalizer prints and drops it), and the run would then go on."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def raise_noted(caught: list[int]) -> None:
    """Raise the first signal ``signals_noted`` caught: KeyboardInterrupt for SIGINT, Interrupted for SIGTERM."""
    if caught:
        raise KeyboardInterrupt if caught[0] == signal.SIGINT else Interrupted(signal.Signals(caught[0]).name)


@dataclass(frozen=True)
class OutputFormat:
    """What the outputs are written as: 'wav' (8, 16, 24-bit integer or 32-bit float) or 'flac' (8, 16, 24)."""

    container: str = "wav"
    bit_depth: int = 24

    def __post_init__(self):
        if self.container not in OUTPUT_FORMATS:
            raise PlanError(f"output format {self.container!r}: write one of {', '.join(OUTPUT_FORMATS)}")
        if (self.container, self.bit_depth) not in SUBTYPES:
            depths = [d for c, d in SUBTYPES if c == self.container]
            raise PlanError(f"{self.container} takes bit depths {', '.join(map(str, depths))}, not {self.bit_depth}"
                            + ("; 32-bit float needs wav" if self.bit_depth == 32 else ""))

    @property
    def subtype(self) -> str:
        return SUBTYPES[self.container, self.bit_depth]

    @property
    def is_float(self) -> bool:
        return self.subtype == "FLOAT"


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: float
    channels: int
    frames: int  # as the file's header says (an estimate for some compressed files)

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def _frames_held(path: Path) -> int | None:
    """Frames an uncompressed (WAV / AIFF) file really holds, by libsndfile; None for other formats."""
    try:
        info = sf.info(str(path))
    except Exception:  # a format libsndfile does not read
        return None
    return info.frames if info.format in UNCOMPRESSED_FORMATS else None


def probe(path: Path) -> AudioInfo:
    """Sample rate, channels and length of an audio file pedalboard reads; raises what pedalboard raises, and a
    ValueError for a WAV / AIFF cut short (pedalboard would read the missing part as silence)."""
    with pedalboard.io.AudioFile(str(path)) as f:
        info = AudioInfo(f.samplerate, f.num_channels, f.frames)
    held = _frames_held(path)
    if held is not None and held < info.frames:
        raise ValueError(f"the file is cut short: its header promises {info.frames} frames but it holds {held}")
    return info


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path
    info: AudioInfo | None  # None for a job skipped without reading its input
    spectrogram: Path | None = None

    @property
    def partial(self) -> Path:
        """Where the output is written until it is complete."""
        return partial_path(self.output)


@dataclass
class FileResult:
    """What happened to one input: status 'written', 'skipped' or 'failed'; ``note`` says why or warns."""

    source: str
    output: str | None
    status: str
    note: str = ""
    sample_rate: float | None = None
    channels: int | None = None
    frames_in: int = 0
    frames_out: int = 0
    wall_seconds: float = 0.0
    peak: float = 0.0  # largest absolute output sample before it was written
    clipped_samples: int = 0  # samples beyond full scale, clipped (integer formats only)
    spectrogram: str | None = None
    attempts: int = 0  # times the file was processed: 1, or 2 when a Ray run retried it (0: planned out, skipped)
    worker: str | None = None  # who processed it, on Ray: 'actor 3'
    node: str | None = None  # and on which machine (Ray)

    @classmethod
    def failed(cls, source, output, note: str) -> "FileResult":
        return cls(str(source), None if output is None else str(output), "failed", note)

    @property
    def audio_seconds(self) -> float:
        return self.frames_in / self.sample_rate if self.sample_rate else 0.0


@dataclass(frozen=True)
class BatchSettings:
    """Everything a worker needs to process files (picklable)."""

    preset: Preset  # with the command line's overrides and chains applied
    output_format: OutputFormat = OutputFormat()
    model: str | None = None
    backend: str = DEFAULT_BACKEND
    provider: str | None = None
    tail_seconds: float = 0.0
    buffer_frames: int = 4096


@dataclass
class Plan:
    """What a run will do: jobs to process, jobs skipped because their output exists, inputs that cannot be used."""

    jobs: list[Job]
    skipped: list[Job]
    failed: list[FileResult]
    container: str


# ---- planning ---------------------------------------------------------------------------------------------------
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)  # a write refused by the disk


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _resolved(path: Path) -> Path | None:
    """The path with its symbolic links followed; None for a link that leads round in a loop (or nowhere)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # RuntimeError: "Symlink loop" (Python < 3.13); OSError: ELOOP
        return None


def _audio_files(folder: Path, exclude: Path | None) -> Iterator[Path]:
    """Audio files below a folder, sorted, leaving out hidden names and the ``exclude`` folder (links to folders
    are not followed)."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or _resolved(Path(root, d)) != exclude))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in READ_SUFFIXES:
                yield Path(root, name)


def _glob_base(pattern: str) -> Path:
    """The fixed leading folders of a glob: 'stems/*/take?.wav' -> 'stems'."""
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def discover(inputs: Iterable[str], exclude: Path | None = None) -> tuple[list[tuple[Path, Path]], list[FileResult]]:
    """(file, path relative to the output folder) for every input file, and the inputs that matched nothing."""
    found, failed, seen = [], [], set()

    def add(path: Path, relative: Path) -> None:
        resolved = _resolved(path)
        if resolved is None:
            failed.append(FileResult.failed(path, None, "a symbolic link that leads round in a loop"))
        elif resolved not in seen:
            seen.add(resolved)
            found.append((path, relative))

    for text in inputs:
        path = Path(text)
        if path.is_dir():
            for file in _audio_files(path, exclude):
                add(file, file.relative_to(path))
        elif path.is_file() or (path.is_symlink() and _resolved(path) is None):
            add(path, Path(path.name))
        elif glob.has_magic(text):
            base, count = _glob_base(text), len(found)
            for match in map(Path, sorted(glob.glob(text, recursive=True))):
                files = _audio_files(match, exclude) if match.is_dir() else [match]
                for file in files:
                    if file.suffix.lower() in READ_SUFFIXES:
                        add(file, Path(os.path.relpath(file, base)))
            if len(found) == count:
                failed.append(FileResult.failed(text, None, "the pattern matched no audio files"))
        else:
            failed.append(FileResult.failed(text, None, "no such file or folder"))
    return found, failed


def plan_jobs(inputs: list[str], output: str | Path, container: str | None = None, spectrogram: str | None = None,
              skip_existing: bool = False) -> Plan:
    """Name every output and check every input. ``output`` is a file when one file goes in and it ends in .wav or
    .flac, else a folder; ``spectrogram`` is then a PNG path or a folder of PNGs likewise."""
    output = Path(output)
    output_suffixes = tuple("." + c for c in OUTPUT_FORMATS)
    single_file = len(inputs) == 1 and not Path(inputs[0]).is_dir() and not glob.has_magic(inputs[0])
    to_file = single_file and output.suffix.lower() in output_suffixes
    if to_file:
        if container not in (None, output.suffix.lower()[1:]):
            raise PlanError(f"-o {output} is a {output.suffix} file but --format is {container}")
        container = output.suffix.lower()[1:]
    elif output.suffix.lower() in output_suffixes:
        raise PlanError(f"-o {output} names one audio file, but the inputs are a folder, a pattern or several files: "
                        "give an output folder")
    elif output.suffix.lower() in READ_SUFFIXES:
        raise PlanError(f"-o {output}: lmdm writes .wav or .flac files")
    if spectrogram and not to_file and Path(spectrogram).suffix.lower() == ".png":
        raise PlanError(f"--spectrogram {spectrogram} is one PNG, but the outputs go to a folder: give a folder")
    container = container or "wav"
    sources, failed = discover(inputs, exclude=None if to_file else output.resolve())

    by_output: dict[Path, Path] = {}
    inputs_resolved = {source.resolve() for source, _ in sources}
    jobs, skipped = [], []
    for source, relative in sources:
        target = output if to_file else output / relative.with_suffix("." + container)
        if target.resolve() in by_output:
            raise PlanError(f"{by_output[target.resolve()]} and {source} would both be written to {target}; "
                            "process them into different folders")
        by_output[target.resolve()] = source
        picture = None
        if spectrogram:
            picture = Path(spectrogram) if to_file else Path(spectrogram) / relative.with_suffix(".png")
        if target.resolve() in inputs_resolved:
            failed.append(FileResult.failed(source, target, f"refusing to overwrite the input {target}: "
                                                            "choose another output folder or format"))
            continue
        if skip_existing and target.exists():
            skipped.append(Job(source, target, None, picture))
            continue
        try:
            info = probe(source)
        except Exception as e:  # pedalboard raises ValueError, OSError, RuntimeError for files it cannot read
            failed.append(FileResult.failed(source, target, f"cannot read audio: {_describe(e)}"))
            continue
        jobs.append(Job(source, target, info, picture))
    return Plan(jobs, skipped, failed, container)


def plan_listing(plan: Plan) -> str:
    """The plan as text, for --dry-run."""
    lines = []
    for job in plan.jobs:
        info = job.info
        lines.append(f"process  {job.source} -> {job.output}  "
                     f"({info.seconds:.1f} s, {info.sample_rate:g} Hz, {info.channels} ch)")
    lines += [f"skip     {job.source} ({job.output} exists)" for job in plan.skipped]
    lines += [f"fail     {r.source}: {r.note}" for r in plan.failed]
    lines.append(f"{len(plan.jobs)} to process, {len(plan.skipped)} to skip, {len(plan.failed)} that cannot be used")
    return "\n".join(lines)


def skipped_result(job: Job) -> FileResult:
    return FileResult(str(job.source), str(job.output), "skipped", "output exists")


def discard_stale_partials(jobs: Iterable[Job]) -> None:
    """Remove the partial files of jobs that will not be finished: left by a killed run, or by a dead worker."""
    for job in jobs:
        with contextlib.suppress(OSError):
            job.partial.unlink(missing_ok=True)


# ---- one file ---------------------------------------------------------------------------------------------------
class _Excerpt:
    """The first ``limit`` frames of a stream, mixed to mono (bounded memory however long the stream)."""

    def __init__(self, limit: int):
        self.limit, self.frames, self.parts = limit, 0, []

    def add(self, audio: np.ndarray) -> None:
        take = min(self.limit - self.frames, audio.shape[1])
        if take > 0:
            self.parts.append(audio[:, :take].mean(0))
            self.frames += take

    def audio(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)


def _read_with_tail(reader, buffer_frames: int, tail_frames: int, tap: Callable) -> Iterator[np.ndarray]:
    """The file's audio then ``tail_frames`` of silence, in chunks of ``buffer_frames``; each chunk also goes to tap."""
    while (chunk := reader.read(buffer_frames)).shape[1]:
        tap(chunk)
        yield chunk
    for start in range(0, tail_frames, buffer_frames):
        chunk = np.zeros((reader.num_channels, min(buffer_frames, tail_frames - start)), np.float32)
        tap(chunk)
        yield chunk


def _render_file(job: Job, settings: BatchSettings, effect: GenerativeDelay, result: FileResult,
                 on_progress: Callable[[float], None] | None) -> tuple[_Excerpt, _Excerpt]:
    """Read, process and write the file buffer by buffer into its partial file, then rename it; fills in
    ``result``. Returns the input and output excerpts for the spectrogram."""
    fmt = settings.output_format
    with pedalboard.io.AudioFile(str(job.source)) as reader:
        rate, channels = reader.samplerate, reader.num_channels
        result.sample_rate, result.channels = rate, channels
        if fmt.container == "flac" and channels > 8:
            raise ValueError(f"{channels} channels: FLAC holds at most 8, write wav (--format wav)")
        excerpt_frames = int(SPECTROGRAM_SECONDS * rate) if job.spectrogram else 0
        dry, wet = _Excerpt(excerpt_frames), _Excerpt(excerpt_frames)
        tail = int(round(settings.tail_seconds * rate))
        job.output.parent.mkdir(parents=True, exist_ok=True)
        # opened by Python first: libsndfile would report a read-only folder as "System error."
        with atomic_write(job.output) as partial, open(partial, "wb") as raw, sf.SoundFile(
                raw, "w", int(rate), channels, subtype=fmt.subtype, format=fmt.container.upper()) as writer:
            for out in effect.render(_read_with_tail(reader, settings.buffer_frames, tail, dry.add), rate):
                result.peak = max(result.peak, float(np.abs(out).max(initial=0.0)))
                if not fmt.is_float:
                    result.clipped_samples += int(np.count_nonzero(np.abs(out) > 1.0))
                    out = np.clip(out, -1.0, 1.0)
                writer.write(out.T)
                wet.add(out)
                result.frames_out += out.shape[1]
                if on_progress is not None:
                    on_progress(out.shape[1] / rate)
            held = _frames_held(job.source)  # cut short while it was read: its end was read as silence
            if held is not None and held < reader.frames:
                raise ValueError(f"{job.source} was cut short while it was read: its header promises {reader.frames} "
                                 f"frames but it now holds {held}; no output written")
    result.frames_in = result.frames_out - tail  # render gives back exactly the frames fed in
    return dry, wet


def process_file(job: Job, settings: BatchSettings, effect: GenerativeDelay,
                 on_progress: Callable[[float], None] | None = None) -> FileResult:
    """Stream one file through the effect into its output; never raises for a bad file (see the result)."""
    result = FileResult(str(job.source), str(job.output), "failed", attempts=1)
    start = time.perf_counter()
    try:
        dry, wet = _render_file(job, settings, effect, result, on_progress)
        result.status = "written"
        if result.clipped_samples:
            result.note = (f"{result.clipped_samples} samples beyond full scale were clipped "
                           "(lower the mix or gain, or write 32-bit float)")
        if job.spectrogram and result.frames_out:
            from .plots import save_spectrograms

            shown = f" (first {SPECTROGRAM_SECONDS:g} s)" if result.frames_out > wet.frames else ""
            save_spectrograms(job.spectrogram, [("Input" + shown, dry.audio()), ("Output" + shown, wet.audio())],
                              result.sample_rate, hop=max(SPECTROGRAM_HOP, wet.frames // SPECTROGRAM_COLUMNS))
            result.spectrogram = str(job.spectrogram)
    except Exception as e:  # a bad file, a full or read-only disk: report it, the rest go on
        if result.status == "written":
            result.status = "failed"
            result.note = f"wrote {job.output} but not the spectrogram {job.spectrogram}: {_describe(e)}"
        elif isinstance(e, OSError) and e.errno in _DISK_ERRORS and not e.filename:
            result.note = f"cannot write {job.output}: {e.strerror}"
        else:
            result.note = _describe(e)
    result.wall_seconds = time.perf_counter() - start
    return result


class FileProcessor:
    """The per-file function of both runners: processes files with one effect, made on first use (so each process
    or Ray actor loads the model once)."""

    def __init__(self, settings: BatchSettings):
        self.settings = settings
        self._effect = None

    def load(self) -> None:
        """Load the runtime and make the effect now; raises what loading raises."""
        if self._effect is None:
            s = self.settings
            self._effect = GenerativeDelay(s.preset, runtime=load_runtime(s.model, backend=s.backend,
                                                                          provider=s.provider))

    def __call__(self, job: Job, on_progress: Callable[[float], None] | None) -> FileResult:
        try:
            self.load()
        except Exception as e:
            return FileResult.failed(job.source, job.output, f"cannot set up the effect: {_describe(e)}")
        return process_file(job, self.settings, self._effect, on_progress)


# ---- many files -------------------------------------------------------------------------------------------------
class ProgressDisplay:
    """An overall bar (audio seconds of every file) and, with ``file_bars``, a bar per file being processed."""

    def __init__(self, jobs: list[Job], tail_seconds: float, enabled: bool, file_bars: bool = True):
        self._tail, self._enabled, self._file_bars = tail_seconds, enabled, file_bars
        total = sum(self._seconds(job) for job in jobs)
        self._overall = tqdm(total=total, desc=f"{len(jobs)} files", unit="s", position=0,
                             disable=not enabled, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} "
                                                             "s audio [{elapsed}<{remaining}]")
        self._bars: dict[Job, tqdm] = {}
        self._done: dict[Job, float] = {}

    def _seconds(self, job: Job) -> float:
        return job.info.seconds + self._tail

    def start(self, job: Job, slot: int) -> None:
        self._bars[job] = tqdm(total=self._seconds(job), desc=job.source.name[-40:], unit="s",
                               position=slot, leave=False, disable=not (self._enabled and self._file_bars),
                               bar_format="{desc}: {percentage:3.0f}%|{bar}| {rate_fmt}")
        self._done[job] = 0.0

    def advance(self, job: Job, seconds: float) -> None:
        seconds = min(seconds, self._seconds(job) - self._done[job])  # compressed files' lengths are estimates
        self._bars[job].update(seconds)
        self._add(seconds)
        self._done[job] += seconds

    def finish(self, job: Job) -> None:
        self._add(self._seconds(job) - self._done.pop(job))  # a failed file counts as done
        self._bars.pop(job).close()

    def _add(self, seconds: float) -> None:
        # never past the total: sums of many small float updates overshoot it (tqdm then warns)
        self._overall.update(max(0.0, min(seconds, self._overall.total - self._overall.n)))

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._overall.close()


def run_batch(jobs: list[Job], settings: BatchSettings, workers: int = 1,
              show_progress: bool = True) -> Iterator[FileResult]:
    """Process the jobs, ``workers`` files at a time (in worker processes when more than one); yields each
    file's result as it finishes. Closing the generator early stops the workers and removes their partial files."""
    display = ProgressDisplay(jobs, settings.tail_seconds, show_progress)
    try:
        if workers <= 1 or len(jobs) <= 1:
            process = FileProcessor(settings)
            for job in jobs:
                display.start(job, slot=1)
                result = process(job, lambda seconds: display.advance(job, seconds))
                display.finish(job)
                yield result
        else:
            yield from _run_in_processes(jobs, settings, min(workers, len(jobs)), display)
    finally:
        display.close()


class _PipeProgress:
    """A worker's progress callback: reports to the parent every PROGRESS_INTERVAL_SECONDS, and stops the work
    when the parent process is gone (killed), so no orphan keeps writing."""

    def __init__(self, events, worker: int, parent_pid: int):
        self._events, self._worker, self._parent_pid = events, worker, parent_pid
        self._pending, self._last = 0.0, time.monotonic()

    def __call__(self, seconds: float) -> None:
        self._pending += seconds
        if time.monotonic() - self._last >= PROGRESS_INTERVAL_SECONDS:
            if os.getppid() != self._parent_pid:
                raise Interrupted("the parent process is gone")
            self.flush()

    def flush(self) -> None:
        try:
            self._events.send(("advance", self._worker, self._pending))
        except BrokenPipeError:
            raise Interrupted("the parent process is gone") from None
        self._pending, self._last = 0.0, time.monotonic()


def _worker_main(worker: int, settings: BatchSettings, tasks, events, parent_pid: int) -> None:
    """A worker process: processes the jobs the parent sends until it sends None; reports on ``events``, the
    sending end of a pipe of its own (a worker killed mid-message leaves only its own pipe unreadable, where a
    shared queue would stay locked for every other worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers
    signal.signal(signal.SIGTERM, raise_interrupted)  # stopped mid-file, a worker removes its partial file
    process = FileProcessor(settings)
    with contextlib.suppress(Interrupted, BrokenPipeError):  # stopped, or the parent is gone
        for job in iter(tasks.get, None):
            progress = _PipeProgress(events, worker, parent_pid)
            result = process(job, progress)
            progress.flush()
            events.send(("result", worker, result))


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    tasks: object
    events: multiprocessing.connection.Connection  # the receiving end of the worker's own pipe
    job: Job | None = None


def _run_in_processes(jobs: list[Job], settings: BatchSettings, workers: int,
                      display: ProgressDisplay) -> Iterator[FileResult]:
    context = multiprocessing.get_context("spawn")  # no forked copies of a parent's threads (torch, tqdm)
    pending = collections.deque(jobs)
    pool: dict[int, _Worker] = {}

    def start(worker: int) -> None:
        tasks = context.Queue()
        events, sender = context.Pipe(duplex=False)
        process = context.Process(target=_worker_main, args=(worker, settings, tasks, sender, os.getpid()),
                                  name=f"lmdm-worker-{worker}", daemon=True)
        process.start()
        sender.close()  # the worker holds the only sending end: its death is the pipe's end
        pool[worker] = _Worker(process, tasks, events)
        assign(worker)

    def receive() -> Iterator[tuple]:
        """The workers' messages that arrive within PROGRESS_INTERVAL_SECONDS."""
        ready = multiprocessing.connection.wait([w.events for w in pool.values()], PROGRESS_INTERVAL_SECONDS)
        for connection in ready:
            with contextlib.suppress(EOFError, OSError, pickle.UnpicklingError):  # a dead worker: handled below
                yield connection.recv()

    def assign(worker: int) -> None:
        w = pool[worker]
        w.job = pending.popleft() if pending else None
        if w.job is not None:
            w.tasks.put(w.job)
            display.start(w.job, slot=worker + 1)

    finished = False
    try:
        with signals_noted() as caught:  # raised between waits, so a stop is never lost inside a finalizer
            for worker in range(workers):
                start(worker)
            while any(w.job is not None for w in pool.values()):
                messages = list(receive())
                raise_noted(caught)
                for kind, worker, payload in messages:
                    w = pool[worker]
                    if kind == "advance" and w.job is not None:
                        display.advance(w.job, payload)
                    elif kind == "result" and w.job is not None and payload.source == str(w.job.source):
                        display.finish(w.job)
                        assign(worker)
                        yield payload
                for worker, w in list(pool.items()):
                    if w.job is not None and not w.process.is_alive():  # a crash in a decoder or a plugin
                        job = w.job
                        discard_stale_partials([job])
                        display.finish(job)
                        w.events.close()
                        start(worker)
                        yield FileResult.failed(job.source, job.output, "the worker process died "
                                                f"(exit code {w.process.exitcode}) while processing this file")
        finished = True
    finally:
        for w in pool.values():
            if finished:
                w.tasks.put(None)
            elif w.process.is_alive():
                w.process.terminate()  # SIGTERM: the worker removes its partial file and exits
        # one shared deadline: a stopped run exits within WORKER_STOP_SECONDS however many workers it has
        deadline = time.monotonic() + (30.0 if finished else WORKER_STOP_SECONDS)
        for w in pool.values():
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():  # stuck (a signal can land inside a lock at exit): killed, its file cleaned
                w.process.kill()
                w.process.join()
                if w.job is not None:
                    discard_stale_partials([w.job])
            w.events.close()


# ---- reporting --------------------------------------------------------------------------------------------------
def summary_table(results: list[FileResult], wall_seconds: float) -> str:
    """One row per file and a totals line; a column of who processed each file when a Ray run says so."""
    by_worker = any(r.worker for r in results)
    rows = [("status", "audio s", "rate Hz", "ch", "x real time", *(["by"] if by_worker else []), "file")]
    for r in results:
        speed = f"{r.audio_seconds / r.wall_seconds:.1f}" if r.status == "written" and r.wall_seconds else "-"
        where = f"{r.source} -> {r.output}" if r.status == "written" else str(r.source)
        by = [f"{r.worker} on {r.node}" if r.worker else "-"] if by_worker else []
        rows.append((r.status, f"{r.audio_seconds:.1f}" if r.status == "written" else "-",
                     f"{r.sample_rate:g}" if r.sample_rate else "-", str(r.channels or "-"), speed, *by,
                     where + (f": {r.note}" if r.note else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    counts = collections.Counter(r.status for r in results)
    audio = sum(r.audio_seconds for r in results if r.status == "written")
    lines.append(f"{len(results)} file{'s' * (len(results) != 1)}: {counts['written']} written, "
                 f"{counts['skipped']} skipped, {counts['failed']} failed; "
                 f"{audio:.1f} s of audio in {wall_seconds:.1f} s"
                 + (f" ({audio / wall_seconds:.1f}x real time)" if wall_seconds > 0 and audio else ""))
    return "\n".join(lines)


def batch_report(results: list[FileResult], settings: BatchSettings, workers: int, wall_seconds: float,
                 interrupted: bool = False, runner: dict | None = None) -> dict:
    """The run as a JSON-ready dict: settings, totals and one entry per file; ``runner`` (a Ray run's cluster,
    actors and start-up) goes in as it is."""
    counts = collections.Counter(r.status for r in results)
    audio = sum(r.audio_seconds for r in results if r.status == "written")
    return {
        "settings": {
            "preset": settings.preset.to_dict(),
            "format": settings.output_format.container,
            "bit_depth": settings.output_format.bit_depth,
            "tail_seconds": settings.tail_seconds,
            "model": settings.model,
            "backend": settings.backend,
            "provider": settings.provider,
            "buffer_frames": settings.buffer_frames,
            "jobs": workers,
        },
        "totals": {
            "files": len(results),
            "written": counts["written"],
            "skipped": counts["skipped"],
            "failed": counts["failed"],
            "interrupted": interrupted,
            "audio_seconds": audio,
            "wall_seconds": wall_seconds,
            "real_time_factor": audio / wall_seconds if wall_seconds > 0 else None,
        },
        "files": [dataclasses.asdict(r) for r in results],
        **({"runner": runner} if runner is not None else {}),
    }


def write_report(path: str | Path, report: dict) -> Path:
    """Write the report as JSON (through a partial file, like the audio)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path
