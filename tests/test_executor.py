"""Tests for orchestrate.scheduler.executor.DagExecutor.

Synchronisation uses Barrier and Event with timeouts, never sleeps: a broken barrier
or an event that never fires makes the task fail, and the test with it.
"""

from __future__ import annotations

import threading

import pytest

from conftest import BUNDLED_CREW_CONTEXTS
from orchestrate.crew.graph import TaskGraph
from orchestrate.errors import TaskCancelledError
from orchestrate.scheduler.executor import DagExecutor
from orchestrate.scheduler.lifecycle import TaskState

TIMEOUT = 5.0


class Recorder:
    """Collects transitions and task starts from any thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.transitions = []
        self.started = []

    def on_transition(self, task, state, reason):
        with self.lock:
            self.transitions.append((task, state, reason))

    def start(self, task):
        with self.lock:
            self.started.append(task)

    def states_of(self, task):
        return [state for name, state, _ in self.transitions if name == task]


def run_in_thread(executor, cancel):
    result = []
    thread = threading.Thread(target=lambda: result.append(executor.run(cancel)))
    thread.start()
    return thread, result


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        DagExecutor(TaskGraph({"a": []}), lambda task: None, workers=0)


def test_independent_tasks_run_at_the_same_time():
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    executor = DagExecutor(TaskGraph({"a": [], "b": []}), lambda task: barrier.wait(), workers=2)
    outcome = executor.run()
    assert outcome.states == {"a": TaskState.SUCCEEDED, "b": TaskState.SUCCEEDED}
    assert outcome.reasons == {}
    assert outcome.cancelled is False


def test_one_worker_never_overlaps():
    recorder = Recorder()
    active = 0
    peak = 0
    lock = threading.Lock()

    def run_task(task):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        with lock:
            active -= 1

    graph = TaskGraph({name: [] for name in "abcde"})
    outcome = DagExecutor(graph, run_task, workers=1, on_transition=recorder.on_transition).run()
    assert set(outcome.states.values()) == {TaskState.SUCCEEDED}
    assert peak == 1
    # Each start is followed by that task's end before the next start.
    flow = [(t, s) for t, s, _ in recorder.transitions if s in ("running", "succeeded")]
    assert len(flow) == 10
    for index in range(0, 10, 2):
        assert flow[index][1] is TaskState.RUNNING
        assert flow[index + 1] == (flow[index][0], TaskState.SUCCEEDED)


def test_two_workers_start_two_tasks_before_either_finishes():
    recorder = Recorder()
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    graph = TaskGraph({"a": [], "b": [], "c": []})
    DagExecutor(
        graph,
        lambda task: barrier.wait() if task != "c" else None,
        workers=2,
        on_transition=recorder.on_transition,
        priority={"a": 3, "b": 2, "c": 1},
    ).run()
    states = [(t, s) for t, s, _ in recorder.transitions if s in ("running", "succeeded")]
    assert states[:2] == [("a", TaskState.RUNNING), ("b", TaskState.RUNNING)]


def test_task_starts_only_after_its_dependencies_succeeded():
    deps = BUNDLED_CREW_CONTEXTS
    lock = threading.Lock()
    finished = set()
    violations = []
    order = []

    def run_task(task):
        with lock:
            order.append(task)
            violations.extend((task, dep) for dep in deps[task] if dep not in finished)
        with lock:
            finished.add(task)

    recorder = Recorder()
    outcome = DagExecutor(
        TaskGraph(deps), run_task, workers=4, on_transition=recorder.on_transition
    ).run()
    assert violations == []
    assert sorted(order) == sorted(deps)
    assert set(outcome.states.values()) == {TaskState.SUCCEEDED}
    log = [(t, s) for t, s, _ in recorder.transitions]
    for task, task_deps in deps.items():
        started_at = log.index((task, TaskState.RUNNING))
        for dep in task_deps:
            assert log.index((dep, TaskState.SUCCEEDED)) < started_at


def test_failure_skips_descendants_but_not_independent_branch():
    ran = []

    def run_task(task):
        ran.append(task)
        if task == "a":
            raise RuntimeError("boom\nsecond line")

    graph = TaskGraph({"a": [], "b": ["a"], "c": ["b"], "x": [], "y": ["x"]})
    outcome = DagExecutor(graph, run_task, workers=1).run()
    assert outcome.states == {
        "a": TaskState.FAILED,
        "b": TaskState.SKIPPED,
        "c": TaskState.SKIPPED,
        "x": TaskState.SUCCEEDED,
        "y": TaskState.SUCCEEDED,
    }
    assert outcome.reasons == {
        "a": "RuntimeError: boom",
        "b": "its input 'a' failed",
        "c": "its input 'a' failed",
    }
    assert outcome.failed == ["a"]
    assert outcome.cancelled is False
    assert sorted(ran) == ["a", "x", "y"]


def test_failure_with_empty_message_uses_exception_name():
    def run_task(task):
        raise KeyError

    outcome = DagExecutor(TaskGraph({"a": []}), run_task, workers=1).run()
    assert outcome.reasons == {"a": "KeyError"}


def test_cancel_mid_run():
    started = threading.Event()
    cancel = threading.Event()
    ran = []

    def run_task(task):
        ran.append(task)
        started.set()
        if cancel.wait(TIMEOUT):
            raise TaskCancelledError("cancelled")

    graph = TaskGraph({"a": [], "b": ["a"], "c": []})
    executor = DagExecutor(graph, run_task, workers=1)
    thread, result = run_in_thread(executor, cancel)
    assert started.wait(TIMEOUT)
    cancel.set()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    outcome = result[0]
    assert ran == ["a"]  # the longer chain starts first
    assert outcome.states == {
        "a": TaskState.CANCELLED,
        "b": TaskState.CANCELLED,
        "c": TaskState.CANCELLED,
    }
    assert outcome.reasons["a"] == "the run was interrupted"
    assert outcome.reasons["b"] == "the run was interrupted before it started"
    assert outcome.reasons["c"] == "the run was interrupted before it started"
    assert outcome.cancelled is True
    assert outcome.failed == []


def test_other_error_after_cancel_counts_as_cancelled():
    cancel = threading.Event()

    def run_task(task):
        cancel.set()
        raise RuntimeError("broken by the interruption")

    outcome = DagExecutor(TaskGraph({"a": [], "b": ["a"]}), run_task, workers=1).run(cancel)
    assert outcome.states == {"a": TaskState.CANCELLED, "b": TaskState.CANCELLED}
    assert outcome.failed == []


def test_cancel_before_run_starts_nothing():
    cancel = threading.Event()
    cancel.set()
    ran = []
    outcome = DagExecutor(TaskGraph({"a": [], "b": ["a"]}), ran.append, workers=2).run(cancel)
    assert ran == []
    assert outcome.states == {"a": TaskState.CANCELLED, "b": TaskState.CANCELLED}
    assert outcome.cancelled is True


def test_priority_longer_remaining_chain_starts_first():
    graph = TaskGraph({"short": [], "long1": [], "long2": ["long1"], "long3": ["long2"]})
    assert graph.tasks.index("short") < graph.tasks.index("long1")  # order alone would pick short
    recorder = Recorder()
    DagExecutor(graph, recorder.start, workers=1).run()
    assert recorder.started[0] == "long1"
    assert recorder.started.index("long1") < recorder.started.index("short")


def test_explicit_priority_is_used():
    graph = TaskGraph({"short": [], "long1": [], "long2": ["long1"]})
    recorder = Recorder()
    priority = {"short": 10.0, "long1": 1.0, "long2": 1.0}
    DagExecutor(graph, recorder.start, workers=1, priority=priority).run()
    assert recorder.started == ["short", "long1", "long2"]


def test_equal_priority_falls_back_to_graph_order():
    graph = TaskGraph({"a": [], "b": [], "c": []})
    recorder = Recorder()
    DagExecutor(graph, recorder.start, workers=1).run()
    assert recorder.started == list(graph.tasks)


def test_on_transition_sees_each_state_in_order():
    recorder = Recorder()
    graph = TaskGraph({"a": [], "b": ["a"], "c": []})
    DagExecutor(graph, lambda task: None, workers=2, on_transition=recorder.on_transition).run()
    for task in graph.tasks:
        # Every task leaves PENDING through READY; PENDING itself is the initial state.
        assert recorder.states_of(task) == [
            TaskState.READY,
            TaskState.RUNNING,
            TaskState.SUCCEEDED,
        ]
    assert all(reason is None for _, _, reason in recorder.transitions)
    log = [(t, s) for t, s, _ in recorder.transitions]
    assert log.index(("a", TaskState.SUCCEEDED)) < log.index(("b", TaskState.READY))


def test_on_transition_reports_failure_and_skip_reasons():
    recorder = Recorder()

    def run_task(task):
        raise ValueError("bad")

    graph = TaskGraph({"a": [], "b": ["a"]})
    DagExecutor(graph, run_task, workers=1, on_transition=recorder.on_transition).run()
    assert ("a", TaskState.FAILED, "ValueError: bad") in recorder.transitions
    assert ("b", TaskState.SKIPPED, "its input 'a' failed") in recorder.transitions
    assert recorder.states_of("b") == [TaskState.SKIPPED]
