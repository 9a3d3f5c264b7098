"""Cross-session batching: sessions in worker threads meet in a BatchingRuntime and run as one batch."""

import threading

import numpy as np
import pytest

from lmdm_bridge.hosting.batching import BatchingRuntime
from lmdm_engine.stream.session import Session

from conftest import preset_params
from test_bridge_support import DELAY, RATE, stereo_noise


class CountingRuntime:
    """Counts calls and batch rows on the wrapped runtime."""

    def __init__(self, runtime):
        self.runtime, self.calls, self.rows = runtime, 0, 0
        self.name, self.config, self.latent_scale = "counting", runtime.config, runtime.latent_scale

    def __getattr__(self, name):
        return getattr(self.runtime, name)

    def velocity(self, state, x, t, cond):
        self.calls, self.rows = self.calls + 1, self.rows + x.shape[0]
        return self.runtime.velocity(state, x, t, cond)


def run_in_threads(runtime: BatchingRuntime, sessions, inputs, buffer: int) -> list[np.ndarray]:
    """Each session processes its input buffer by buffer in its own thread. Every thread is a participant before
    any calls the runtime, and stays one to the end, so calls that can meet always do."""
    outputs = [[] for _ in sessions]
    all_in = threading.Barrier(len(sessions))

    def work(i):
        with runtime.participant():
            all_in.wait()
            for pos in range(0, inputs[i].shape[1], buffer):
                outputs[i].append(sessions[i].process(inputs[i][:, pos: pos + buffer]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a batching participant deadlocked"
    return [np.concatenate(o, 1) for o in outputs]


@pytest.mark.parametrize("mixed, parallel", [(False, 1), (False, 2), (True, 2)],
                         ids=["same schedule", "same schedule, two calls at once", "mixed schedules"])
def test_batched_sessions_equal_sessions_run_alone(debug_runtime, mixed, parallel):
    counting = CountingRuntime(debug_runtime)
    batching = BatchingRuntime(counting, parallel=parallel)
    params = [dict(steps=3, seed=i) for i in range(4)]
    if mixed:  # different steps, strength and sampler: calls only batch where their times agree
        params[1], params[2] = dict(steps=5, seed=1), dict(strength=0.9, sampler="euler", seed=2)
    channels = [2, 1, 2, 1]
    inputs = [stereo_noise(24000, seed=i)[:c] for i, c in enumerate(channels)]
    alone = [Session(debug_runtime, RATE, c, preset_params("tape_echo", delay_seconds=DELAY, **p)).process(x)
             for c, p, x in zip(channels, params, inputs)]
    sessions = [Session(batching, RATE, c, preset_params("tape_echo", delay_seconds=DELAY, **p))
                for c, p in zip(channels, params)]
    together = run_in_threads(batching, sessions, inputs, buffer=4800)
    for a, b in zip(alone, together):
        np.testing.assert_allclose(b, a, atol=2e-5)
    if mixed:  # calls meet only where their times agree
        assert batching.requests / 4 < batching.calls < batching.requests
    elif parallel == 1:  # four sessions on one schedule: every call carries all four
        assert batching.calls * 4 == batching.requests
    else:  # two cores: a group is shared between the free ones, so calls carry one to four sessions
        assert batching.requests / 4 < batching.calls < batching.requests


def test_calls_outside_a_participant_scope_go_straight_through(debug_runtime):
    counting = CountingRuntime(debug_runtime)
    batching = BatchingRuntime(counting)
    session = Session(batching, RATE, 2, preset_params("tape_echo", delay_seconds=DELAY))
    reference = Session(debug_runtime, RATE, 2, preset_params("tape_echo", delay_seconds=DELAY))
    x = stereo_noise(9600)
    np.testing.assert_array_equal(session.process(x), reference.process(x))
    assert batching.calls == batching.requests > counting.calls > 0


def test_a_failing_batch_fails_each_of_its_callers_and_nothing_hangs(debug_runtime):
    class Exploding(CountingRuntime):
        def velocity(self, state, x, t, cond):
            if x.shape[0] == 3:  # the batch of the stereo and the mono session
                raise RuntimeError("boom")
            return super().velocity(state, x, t, cond)

    batching = BatchingRuntime(Exploding(debug_runtime), parallel=1)
    sessions = [Session(batching, RATE, c, preset_params("tape_echo", delay_seconds=DELAY)) for c in (2, 1)]
    inputs = [stereo_noise(9600)[:c] for c in (2, 1)]
    both_in = threading.Barrier(2)
    errors = []

    def work(i):
        with batching.participant():
            both_in.wait()  # both are participants before either calls the runtime: their calls meet
            try:
                sessions[i].process(inputs[i])
            except RuntimeError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a batching participant deadlocked"
    assert errors == ["boom", "boom"]
