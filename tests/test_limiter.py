"""Tests for orchestrate.safety.limiter and the executor asking it before each start."""

from __future__ import annotations

import threading

import pytest

from orchestrate.crew.graph import TaskGraph
from orchestrate.safety.limiter import LimiterConfig, WorkerLimiter
from orchestrate.scheduler.executor import DagExecutor
from orchestrate.scheduler.lifecycle import TaskState

TIMEOUT = 5.0
CONFIG = LimiterConfig(max_workers=8, thresholds=(0.5, 0.2, 0.1), hysteresis=0.02)


@pytest.mark.parametrize(
    ("share", "workers"),
    [(1.0, 8), (0.51, 8), (0.5, 4), (0.21, 4), (0.2, 2), (0.11, 2), (0.1, 1), (0.0, 1)],
)
def test_workers_follow_the_remaining_share(share, workers):
    assert CONFIG.workers_at(CONFIG.level_for(share)) == workers


def test_max_workers_below_a_step_caps_every_step():
    config = LimiterConfig(max_workers=3)
    assert [config.workers_at(config.level_for(s)) for s in (0.9, 0.3, 0.15, 0.05)] == [3, 3, 2, 1]


def test_going_down_is_immediate_going_up_needs_the_hysteresis():
    shares = [0.6, 0.49, 0.51, 0.519, 0.521, 0.15, 0.205, 0.25, 0.9]
    limiter = WorkerLimiter(lambda: shares.pop(0), CONFIG)
    assert [limiter.limit() for _ in range(9)] == [8, 4, 4, 4, 8, 2, 2, 4, 8]


def test_custom_thresholds():
    config = LimiterConfig(max_workers=6, thresholds=(0.8, 0.6, 0.4), hysteresis=0.0)
    assert [config.workers_at(config.level_for(s)) for s in (0.9, 0.7, 0.5, 0.3)] == [6, 4, 2, 1]


class Concurrency:
    """Counts tasks running at once, from the tasks themselves."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc):
        with self.lock:
            self.now -= 1


def test_the_executor_never_runs_more_than_the_limit():
    graph = TaskGraph({name: [] for name in "abcdef"})
    pairs = threading.Barrier(2, timeout=TIMEOUT)  # proves two do run together
    running = Concurrency()

    def task(name):
        with running:
            pairs.wait()

    executor = DagExecutor(graph, task, workers=6, worker_limit=lambda: 2)
    outcome = executor.run()

    assert set(outcome.states.values()) == {TaskState.SUCCEEDED}
    assert running.peak == 2


def test_a_falling_limit_applies_to_the_next_start():
    graph = TaskGraph({"a": [], "b": [], "c": [], "d": []})
    limit = [4]
    first_two = threading.Barrier(2, timeout=TIMEOUT)
    lock = threading.Lock()
    starts: list[str] = []
    later_started = threading.Event()
    overlapped = []

    def task(name):
        with lock:
            starts.append(name)
            order = len(starts)
        if order <= 2:
            first_two.wait()  # two ran together under the old limit
            limit[0] = 1  # then the budget fell
        elif order == 3:
            # Sound in one direction: under a limit of 1 the fourth task cannot start now.
            overlapped.append(later_started.wait(timeout=0.3))
        else:
            later_started.set()

    executor = DagExecutor(graph, task, workers=2, worker_limit=lambda: limit[0])
    outcome = executor.run()

    assert set(outcome.states.values()) == {TaskState.SUCCEEDED}
    assert overlapped == [False]


def test_a_limit_below_one_still_runs_one_task():
    executor = DagExecutor(
        TaskGraph({"a": [], "b": []}), lambda task: None, workers=2, worker_limit=lambda: 0
    )
    assert set(executor.run().states.values()) == {TaskState.SUCCEEDED}
