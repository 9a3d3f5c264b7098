"""``lmdm process --ray``: the batch runner on Ray, for more stems than one machine should take.

    run = RayRun(settings, address="auto", actors=None)  # "local": a Ray instance here; "ray://HOST:10001", "auto"
    try:
        for result in run.run(plan.jobs):                 # a FileResult per file, as each one finishes
            ...
        run.report()                                      # the cluster, the actors and the retries, for --report
    finally:
        run.close()

Who calls the per-file function is the only difference from ``batch.run_batch``: here a pool of Ray actors, each
holding one ``FileProcessor`` (the runtime loaded once), is handed whole files one at a time; the results, the
summary table and the report are the local runner's, plus which actor on which node did each file. The actors feed
one overall progress bar through a small progress actor.

Nothing lost:
- outputs go through ``<output>.partial`` files renamed when complete, as locally;
- a file that fails, or whose actor dies (a crash, a lost node), is retried once on another actor, then reported with
  its path and reason; a dead actor is replaced, and loses only the file it had;
- stopping the run (Ctrl-C, SIGTERM, an error here) kills the actors and removes the partial files they had.

Every node reads the inputs and writes the outputs itself, at the paths this machine sees (made absolute): they must
be on a filesystem every node mounts at the same place (NFS, a cluster filesystem). Each actor checks that before it
takes a file (the inputs' sizes as planned here, and a marker file written into the output folder); an actor that
cannot see them is retired with the reason. Only paths, settings and results travel through Ray, never audio.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .batch import (PROGRESS_INTERVAL_SECONDS, WORKER_STOP_SECONDS, BatchSettings, FileProcessor, FileResult,
                    Job, ProgressDisplay, discard_stale_partials, raise_noted, signals_noted)

try:
    import ray
except ModuleNotFoundError as e:  # the optional extra: RayRun says how to install it
    if e.name != "ray":
        raise
    ray = None

LOCAL = "local"  # the address meaning "start a Ray instance on this machine's cores"
MAX_ATTEMPTS = 2  # a file is processed at most twice: once, and once more on another actor
ACTOR_START_SECONDS = 300.0  # with no actor ready for this long (no free CPU in the cluster?), the run gives up
VISIBILITY_SAMPLE = 64  # inputs each actor checks it sees as planned (evenly spread over the run)
SEND_PROGRESS_SECONDS = 1.0  # how often an actor reports progress: a thousand actors make a thousand calls a second
MARKER_PREFIX = ".lmdm-ray-check-"  # hidden, so a later run never reads it as an input
ADDRESS = re.compile(r"(ray://)?[A-Za-z0-9_.-]+:\d+")


class RayUnavailable(ValueError):
    """Ray cannot run this request (the extra is not installed, a bad address, no cluster there); nothing was run."""


def check_address(address: str) -> str:
    """The address as given, or RayUnavailable: 'local', 'auto', 'ray://HOST:PORT' or 'HOST:PORT'."""
    if address in (LOCAL, "auto") or ADDRESS.fullmatch(address):
        return address
    raise RayUnavailable(f"{address!r} is not a Ray address: give auto, ray://HOST:PORT or HOST:PORT, or put --ray "
                         "without an address (a Ray instance on this machine) after the inputs")


def require_ray() -> None:
    if ray is None:
        raise RayUnavailable('--ray needs Ray, an optional extra: pip install "lmdm[ray]"')


@dataclass
class Cluster:
    """What this run connected to, for the report."""

    address: str
    connected_here: bool  # this run called ray.init (and disconnects, stopping a local instance it started)
    startup_seconds: float  # ray.init: starting the local instance, or connecting to the cluster
    nodes: int
    cpus: float
    ray_version: str


def _connect(address: str, actors: int | None) -> Cluster:
    """ray.init for ``address`` unless Ray is already initialised in this process (then that connection is used,
    whatever the address: a library caller or a test that made its own)."""
    start = time.perf_counter()
    connecting = not ray.is_initialized()
    if connecting:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network at run time: Ray's usage reports off
        options = dict(logging_level=logging.WARNING, log_to_driver=False)
        if address == LOCAL:  # enough CPUs for --jobs actors, as the local runner starts --jobs processes
            options.update(num_cpus=max(os.cpu_count() or 1, actors or 0), include_dashboard=False)
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayUnavailable(f"--ray {address}: cannot start or reach Ray: {e}") from None
        finally:
            if in_main_thread:  # ray.init replaces the SIGTERM handler with sys.exit; the caller's goes back
                signal.signal(signal.SIGTERM, previous)
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return Cluster(address, connecting, time.perf_counter() - start, nodes, ray.cluster_resources().get("CPU", 0.0),
                   ray.__version__)


# ---- the actors -------------------------------------------------------------------------------------------------
class ProgressSink:
    """A Ray actor: the seconds of audio each file actor has done, until the driver takes them."""

    def __init__(self):
        self._done = collections.defaultdict(float)

    def advance(self, key: tuple[int, int], seconds: float) -> None:
        self._done[key] += seconds

    def take(self) -> dict:
        done, self._done = dict(self._done), collections.defaultdict(float)
        return done


class _SinkProgress:
    """A file's progress callback: sends what it has done to the sink every SEND_PROGRESS_SECONDS."""

    def __init__(self, sink, key: tuple[int, int]):
        self._sink, self._key, self._pending, self._last = sink, key, 0.0, time.monotonic()

    def __call__(self, seconds: float) -> None:
        self._pending += seconds
        if time.monotonic() - self._last >= SEND_PROGRESS_SECONDS:
            self._sink.advance.remote(self._key, self._pending)  # fire and forget
            self._pending, self._last = 0.0, time.monotonic()


def visibility_problems(inputs: list[tuple[str, int]], marker: tuple[str, str] | None) -> list[str]:
    """What this machine does not see as the driver planned it: (path, size) inputs, and the (path, text) marker
    file in the output folder."""
    problems = []
    for path, size in inputs:
        try:
            seen = os.stat(path).st_size
        except OSError as e:
            problems.append(f"cannot see {path} ({e.strerror or e})")
            continue
        if seen != size:
            problems.append(f"sees {path} with {seen} bytes, not {size}")
    if marker is not None:
        path, text = marker
        try:
            if Path(path).read_text() != text:
                problems.append(f"sees another {path} than the driver wrote")
        except OSError:
            problems.append(f"cannot see the output folder {Path(path).parent} as the driver does")
    return problems


class FileActor:
    """A Ray actor: one FileProcessor (the runtime loaded once), handed whole files."""

    def __init__(self, settings: BatchSettings, sink):
        self._processor, self._sink = FileProcessor(settings), sink

    def ready(self, inputs: list[tuple[str, int]], marker: tuple[str, str] | None) -> dict:
        """Where the actor is and what it cannot see; loads the runtime (raising what loading raises) when it sees
        everything."""
        problems = visibility_problems(inputs, marker)
        if not problems:
            self._processor.load()
        return {"node": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(), "problems": problems}

    def process(self, job: Job, key: tuple[int, int]) -> FileResult:
        return self._processor(job, _SinkProgress(self._sink, key))


# ---- the driver -------------------------------------------------------------------------------------------------
def _absolute(job: Job) -> Job:
    """The job as every node reads it: its paths absolute (the nodes' working folders are not this one)."""
    return Job(job.source.absolute(), job.output.absolute(), job.info,
               job.spectrogram.absolute() if job.spectrogram else None)


@dataclass
class _Task:
    job: Job  # as planned: the paths the report shows
    remote: Job  # as the actors read it
    key: int
    attempts: int = 0
    tried_on: list[str] = field(default_factory=list)
    shown: float = 0.0  # seconds of progress shown for the file
    progress: float = 0.0  # seconds this attempt has reported


@dataclass
class _Actor:
    name: str  # 'actor 3': in the report and the summary table
    handle: object
    ready: object | None  # the ready() call until it returns
    created: float
    node: str | None = None
    task: _Task | None = None
    call: object | None = None  # the process() call in flight

    @property
    def waiting_on(self):
        """The call this actor owes an answer to, if any."""
        return self.ready if self.ready is not None else self.call


class RayRun:
    """One ``lmdm process --ray`` run: connects on creation (starting a local instance for address 'local'), runs
    jobs through a pool of ``actors`` actors (default: one per CPU of the cluster), and disconnects on close()."""

    def __init__(self, settings: BatchSettings, address: str = LOCAL, actors: int | None = None,
                 show_progress: bool = True):
        require_ray()
        self.cluster = _connect(check_address(address), actors)
        self.actors = actors or max(1, int(self.cluster.cpus))
        self.settings, self.show_progress = settings, show_progress
        self.log = {"actors_started": [], "actors_retired": [], "actors_lost": 0, "files_retried": 0}

    def report(self) -> dict:
        """The cluster, the actors (where each ran; those retired, and why) and the retries."""
        return {"kind": "ray", **dataclasses.asdict(self.cluster), "actors": self.actors, **self.log}

    def close(self) -> None:
        if self.cluster.connected_here and ray.is_initialized():
            ray.shutdown()

    def run(self, jobs: list[Job]) -> Iterator[FileResult]:
        """Process the jobs on the pool; yields each file's result as it finishes. Closing the generator early
        (Ctrl-C, SIGTERM) kills the actors and removes their partial files."""
        if not jobs:
            return
        pool = _Pool(self, jobs)
        with signals_noted() as caught:  # a second Ctrl-C while stopping is noted too, and changes nothing
            try:
                yield from pool.results(caught)
            finally:
                pool.stop()


class _Pool:
    """The actors of one run and the files they have: starts, assigns, retries, replaces and stops."""

    def __init__(self, run: RayRun, jobs: list[Job]):
        self.run, self.log = run, run.log
        self.pending = collections.deque(_Task(job, _absolute(job), key) for key, job in enumerate(jobs))
        self.display = ProgressDisplay(jobs, run.settings.tail_seconds, run.show_progress, file_bars=False)
        self.marker = _write_marker(jobs)
        self.checks = (_input_sample(jobs), self.marker)
        self.prefix = f"lmdm-{secrets.token_hex(4)}"  # the actors' Ray names: lmdm-<run>-actor-<n>
        self.sink = ray.remote(ProgressSink).options(num_cpus=0, name=f"{self.prefix}-progress").remote()
        self.settings = dataclasses.replace(  # as the actors read it
            run.settings, model=None if run.settings.model is None else str(Path(run.settings.model).absolute()))
        self.gpus = 1 if (run.settings.provider or "").lower() == "cuda" else 0
        self.actor_class = ray.remote(FileActor)
        self.actors: list[_Actor] = []
        self.count = 0
        self.no_actor = "no Ray actor is running"
        for _ in range(min(run.actors, len(jobs))):
            self.start_actor()

    def results(self, caught: list[int]) -> Iterator[FileResult]:
        last_progress = time.monotonic()
        while self.pending or any(a.task for a in self.actors):
            for actor in self.actors:
                if actor.ready is None and actor.task is None and self.pending:
                    self.assign(actor)
            if self.stuck():  # nothing can take the files: they fail, with the reason
                for task in self.pending:
                    yield self.as_planned(FileResult.failed(task.job.source, task.job.output, self.no_actor), task)
                return
            waiting = {a.waiting_on: a for a in self.actors if a.waiting_on is not None}
            done, _ = ray.wait(list(waiting), num_returns=1, timeout=PROGRESS_INTERVAL_SECONDS)
            raise_noted(caught)
            for ref in done:
                actor = waiting[ref]
                if actor.ready is not None:
                    self.on_ready(actor)
                elif (result := self.on_done(actor)) is not None:
                    yield result
            if time.monotonic() - last_progress >= PROGRESS_INTERVAL_SECONDS:
                self.show_progress()
                last_progress = time.monotonic()

    # ---- actors ----
    def start_actor(self) -> None:
        handle = self.actor_class.options(name=f"{self.prefix}-actor-{self.count}", num_cpus=1,
                                          num_gpus=self.gpus).remote(self.settings, self.sink)
        self.actors.append(_Actor(f"actor {self.count}", handle, handle.ready.remote(*self.checks), time.monotonic()))
        self.count += 1

    def retire(self, actor: _Actor, reason: str) -> None:
        self.actors.remove(actor)
        with contextlib.suppress(Exception):  # dead already
            ray.kill(actor.handle)
        self.log["actors_retired"].append({"actor": actor.name, "node": actor.node, "reason": reason})
        self.no_actor = f"no Ray actor could take the files; the last one said: {reason}"
        tqdm.write(f"lmdm process: {actor.name} retired: {reason}", file=sys.stderr)

    def on_ready(self, actor: _Actor) -> None:
        try:
            info = ray.get(actor.ready)
        except ray.exceptions.RayError as e:  # the runtime did not load, or the actor died starting
            return self.retire(actor, f"cannot set up the effect: {_cause(e)}")
        actor.ready, actor.node = None, info["node"]
        if info["problems"]:
            more = f" (and {len(info['problems']) - 1} more)" if len(info["problems"]) > 1 else ""
            return self.retire(actor, f"{info['node']} {info['problems'][0]}{more}: inputs and outputs must be on a "
                                      "filesystem every node mounts at the same path")
        self.log["actors_started"].append({"actor": actor.name, **info})

    def stuck(self) -> bool:
        """No actor is ready and none will be: all gone, or none started within ACTOR_START_SECONDS."""
        if any(a.ready is None for a in self.actors):
            return False
        if self.actors and time.monotonic() - min(a.created for a in self.actors) > ACTOR_START_SECONDS:
            self.no_actor = f"no Ray actor started within {ACTOR_START_SECONDS:g} s: does the cluster have a free CPU?"
            return True
        return not self.actors

    # ---- files ----
    def assign(self, actor: _Actor) -> None:
        """Give the actor the first file it may take: a retry waits for another actor, when there is one."""
        for task in self.pending:
            others = [a for a in self.actors if a is not actor and a.name not in task.tried_on]
            if actor.name not in task.tried_on or not others:
                self.pending.remove(task)
                if not task.attempts:
                    self.display.start(task.job, slot=1)
                task.attempts += 1
                task.tried_on.append(actor.name)
                task.progress = 0.0
                actor.task, actor.call = task, actor.handle.process.remote(task.remote, (task.key, task.attempts))
                return

    def on_done(self, actor: _Actor) -> FileResult | None:
        """The result of the actor's file when the file is done with; None when it goes again."""
        task, call = actor.task, actor.call
        actor.task = actor.call = None
        try:
            result = ray.get(call)
            reason = result.note
        except ray.exceptions.RayActorError as e:  # the actor or its node died: its file goes again
            result, reason = None, f"the Ray actor died while processing this file ({_cause(e)})"
            self.log["actors_lost"] += 1
            discard_stale_partials([task.remote])
            self.retire(actor, reason)
            self.start_actor()
        except ray.exceptions.RayError as e:
            result, reason = None, _cause(e)
        if result is None or result.status == "failed":
            if task.attempts < MAX_ATTEMPTS:
                self.log["files_retried"] += 1
                self.pending.appendleft(task)
                return None
            result = result or FileResult.failed(task.job.source, task.job.output, reason)
            result.note = f"{reason} (tried on {' and '.join(task.tried_on)})"
        self.display.finish(task.job)
        return self.as_planned(result, task, actor)

    def as_planned(self, result: FileResult, task: _Task, actor: _Actor | None = None) -> FileResult:
        """The actor's result with the paths as planned here, and who processed it."""
        return dataclasses.replace(
            result, source=str(task.job.source), output=str(task.job.output),
            spectrogram=str(task.job.spectrogram) if result.spectrogram else None, attempts=task.attempts,
            worker=actor.name if actor else None, node=actor.node if actor else None)

    def show_progress(self) -> None:
        """Take what the actors have reported and move the bar; a lost progress actor costs the bar, not the run."""
        in_hand = {a.task.key: a.task for a in self.actors if a.task is not None}
        with contextlib.suppress(ray.exceptions.RayError):
            for (key, attempt), seconds in ray.get(self.sink.take.remote(), timeout=5.0).items():
                task = in_hand.get(key)
                if task is not None and task.attempts == attempt:
                    task.progress += seconds
                    if task.progress > task.shown:
                        self.display.advance(task.job, task.progress - task.shown)
                        task.shown = task.progress

    def stop(self) -> None:
        """Kill every actor and the sink; wait a little for the killed ones to go, then remove the partial files of
        the files they had, and the marker."""
        calls = [a.call for a in self.actors if a.call is not None]
        for handle in [a.handle for a in self.actors] + [self.sink]:
            with contextlib.suppress(Exception):  # dead already
                ray.kill(handle)
        if calls:
            ray.wait(calls, num_returns=len(calls), timeout=WORKER_STOP_SECONDS)
        discard_stale_partials(a.task.remote for a in self.actors if a.task is not None)
        if self.marker is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.marker[0])
        self.display.close()


def _cause(error: BaseException) -> str:
    """The first line of a Ray error, which says what happened (the rest is a traceback or the actor's ids)."""
    text = str(getattr(error, "cause", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _input_sample(jobs: list[Job]) -> list[tuple[str, int]]:
    """Up to VISIBILITY_SAMPLE inputs, evenly spread, with their sizes as this machine sees them (an input gone since
    it was planned is left out: its own result will say so)."""
    sample = []
    for job in jobs[::max(1, len(jobs) // VISIBILITY_SAMPLE)][:VISIBILITY_SAMPLE]:
        with contextlib.suppress(OSError):
            sample.append((str(job.source.absolute()), job.source.stat().st_size))
    return sample


def _write_marker(jobs: list[Job]) -> tuple[str, str] | None:
    """A hidden marker file in the outputs' common folder, which every actor must see; None when that folder
    cannot be written (each file then reports why)."""
    root = Path(os.path.commonpath([str(job.output.absolute().parent) for job in jobs]))
    path, text = root / f"{MARKER_PREFIX}{secrets.token_hex(8)}", secrets.token_hex(16)
    try:
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError:
        return None
    return str(path), text
