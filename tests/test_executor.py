"""Tests for orchestrate.scheduler.executor.DagExecutor.

Synchronisation uses Barrier and Event with timeouts, never sleeps: a broken barrier
or an event that never fires makes the task fail, and the test with it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import BUNDLED_CREW_CONTEXTS
from orchestrate.crew.graph import TaskGraph
from orchestrate.errors import (
    BackendError,
    BackendTimeoutError,
    RateLimitedError,
    ServerError,
    SettingsError,
    TaskCancelledError,
)
from orchestrate.scheduler.executor import DagExecutor, ExecutionListener
from orchestrate.scheduler.lifecycle import TaskState
from orchestrate.scheduler.policy import RetryPolicy, TaskPolicy

TIMEOUT = 5.0


class Recorder(ExecutionListener):
    """Collects transitions and task starts from any thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.transitions = []
        self.started = []

    def on_transition(self, task, state, reason):
        with self.lock:
            self.transitions.append((task, state, reason))

    def start(self, attempt):
        with self.lock:
            self.started.append(attempt.task)

    def states_of(self, task):
        return [state for name, state, _ in self.transitions if name == task]


def run_in_thread(executor, cancel):
    result = []
    thread = threading.Thread(target=lambda: result.append(executor.run(cancel)))
    thread.start()
    return thread, result


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        DagExecutor(TaskGraph({"a": []}), lambda attempt: None, workers=0)


def test_independent_tasks_run_at_the_same_time():
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    executor = DagExecutor(TaskGraph({"a": [], "b": []}), lambda attempt: barrier.wait(), workers=2)
    outcome = executor.run()
    assert outcome.states == {"a": TaskState.SUCCEEDED, "b": TaskState.SUCCEEDED}
    assert outcome.reasons == {}
    assert outcome.cancelled is False


def test_one_worker_never_overlaps():
    recorder = Recorder()
    active = 0
    peak = 0
    lock = threading.Lock()

    def run_task(attempt):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        with lock:
            active -= 1

    graph = TaskGraph({name: [] for name in "abcde"})
    outcome = DagExecutor(graph, run_task, workers=1, listener=recorder).run()
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
        lambda attempt: barrier.wait() if attempt.task != "c" else None,
        workers=2,
        listener=recorder,
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

    def run_task(attempt):
        task = attempt.task
        with lock:
            order.append(task)
            violations.extend((task, dep) for dep in deps[task] if dep not in finished)
        with lock:
            finished.add(task)

    recorder = Recorder()
    outcome = DagExecutor(TaskGraph(deps), run_task, workers=4, listener=recorder).run()
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

    def run_task(attempt):
        task = attempt.task
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
    def run_task(attempt):
        raise KeyError

    outcome = DagExecutor(TaskGraph({"a": []}), run_task, workers=1).run()
    assert outcome.reasons == {"a": "KeyError"}


def test_cancel_mid_run():
    started = threading.Event()
    cancel = threading.Event()
    ran = []

    def run_task(attempt):
        task = attempt.task
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


# Run in a process of its own: the scheduler must be on the main thread to receive the
# signal, and a regression would hang there rather than fail.
_SLOW_SIGNAL_HANDLER = textwrap.dedent(
    """
    import os, signal, threading, time
    from orchestrate.crew.graph import TaskGraph
    from orchestrate.errors import TaskCancelledError
    from orchestrate.scheduler.executor import DagExecutor

    cancel, started = threading.Event(), threading.Event()

    def slow_stop(number, frame):
        time.sleep(0.5)  # far past the scheduler's poll: a busy machine printing a notice
        cancel.set()

    def run_task(attempt):
        started.set()
        if attempt.cancel.wait(60):
            raise TaskCancelledError("told to stop")

    signal.signal(signal.SIGUSR1, slow_stop)
    def interrupt():
        started.wait(60)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=interrupt).start()
    outcome = DagExecutor(TaskGraph({"a": []}), run_task, workers=1).run(cancel)
    print(outcome.states["a"].value)
    """
)


def test_a_signal_handler_slower_than_the_poll_still_stops_the_run():
    finished = subprocess.run(
        [sys.executable, "-c", _SLOW_SIGNAL_HANDLER], capture_output=True, text=True, timeout=30
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "cancelled"


def test_other_error_after_cancel_counts_as_cancelled():
    cancel = threading.Event()

    def run_task(attempt):
        cancel.set()
        raise RuntimeError("broken by the interruption")

    outcome = DagExecutor(TaskGraph({"a": [], "b": ["a"]}), run_task, workers=1).run(cancel)
    assert outcome.states == {"a": TaskState.CANCELLED, "b": TaskState.CANCELLED}
    assert outcome.failed == []


def test_cancel_before_run_starts_nothing():
    cancel = threading.Event()
    cancel.set()
    ran = []
    outcome = DagExecutor(
        TaskGraph({"a": [], "b": ["a"]}), lambda attempt: ran.append(attempt.task), workers=2
    ).run(cancel)
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
    DagExecutor(graph, lambda attempt: None, workers=2, listener=recorder).run()
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

    def run_task(attempt):
        raise ValueError("bad")

    graph = TaskGraph({"a": [], "b": ["a"]})
    DagExecutor(graph, run_task, workers=1, listener=recorder).run()
    assert ("a", TaskState.FAILED, "ValueError: bad") in recorder.transitions
    assert ("b", TaskState.SKIPPED, "its input 'a' failed") in recorder.transitions
    assert recorder.states_of("b") == [TaskState.SKIPPED]


# Retries, timeouts, fail-fast, resume and worker limits.

NO_WAIT = RetryPolicy(max_attempts=3, base_seconds=0.0, cap_seconds=0.0)


class AttemptLog(Recorder):
    def __init__(self):
        super().__init__()
        self.attempts = []
        self.failures = []

    def on_attempt(self, task, number, max_attempts):
        with self.lock:
            self.attempts.append((task, number, max_attempts))

    def on_attempt_failed(self, task, number, reason, retry_in):
        with self.lock:
            self.failures.append((task, number, reason, retry_in))


def flaky(failures, error=None):
    """A task body that raises ``error`` on its first ``failures`` attempts per task."""
    error = error or ServerError("HTTP 503")

    def run_task(attempt):
        if attempt.number <= failures:
            raise error
        return f"{attempt.task} done"

    return run_task


def test_transient_failure_is_retried_until_it_succeeds():
    log = AttemptLog()
    graph = TaskGraph({"a": [], "b": ["a"]})
    outcome = DagExecutor(
        graph,
        flaky(2),
        workers=1,
        listener=log,
        policies={"a": TaskPolicy(NO_WAIT), "b": TaskPolicy(NO_WAIT)},
    ).run()
    assert outcome.states == {"a": TaskState.SUCCEEDED, "b": TaskState.SUCCEEDED}
    assert outcome.attempts == {"a": 3, "b": 3}
    assert [entry for entry in log.attempts if entry[0] == "a"] == [
        ("a", 1, 3),
        ("a", 2, 3),
        ("a", 3, 3),
    ]
    assert log.failures[:2] == [
        ("a", 1, "ServerError: HTTP 503", 0.0),
        ("a", 2, "ServerError: HTTP 503", 0.0),
    ]
    assert log.states_of("a") == [
        TaskState.READY,
        TaskState.RUNNING,
        TaskState.RETRYING,
        TaskState.READY,
        TaskState.RUNNING,
        TaskState.RETRYING,
        TaskState.READY,
        TaskState.RUNNING,
        TaskState.SUCCEEDED,
    ]


def test_retries_stop_at_max_attempts_and_skip_dependents():
    log = AttemptLog()
    graph = TaskGraph({"a": [], "b": ["a"], "x": []})
    policy = TaskPolicy(RetryPolicy(max_attempts=2, base_seconds=0.0, cap_seconds=0.0))
    outcome = DagExecutor(
        graph, flaky(5), workers=2, listener=log, policies=dict.fromkeys("abx", policy)
    ).run()
    assert outcome.states["a"] is TaskState.FAILED
    assert outcome.states["b"] is TaskState.SKIPPED
    assert outcome.states["x"] is TaskState.FAILED
    assert outcome.attempts == {"a": 2, "x": 2}
    assert ("a", 2, "ServerError: HTTP 503", None) in log.failures
    assert outcome.root_cause in {"a", "x"}


def test_permanent_errors_are_not_retried():
    for error in (BackendError("bad request"), SettingsError("bad setting"), KeyError("bug")):
        outcome = DagExecutor(
            TaskGraph({"a": []}), flaky(1, error), workers=1, policies={"a": TaskPolicy(NO_WAIT)}
        ).run()
        assert outcome.states == {"a": TaskState.FAILED}
        assert outcome.attempts == {"a": 1}


def test_backoff_does_not_hold_a_worker():
    """While 'a' waits out its backoff, 'b' runs on the only worker."""
    order = []
    b_done = threading.Event()

    def run_task(attempt):
        order.append((attempt.task, attempt.number))
        if attempt.task == "a" and attempt.number == 1:
            raise BackendTimeoutError("no answer")
        if attempt.task == "b":
            b_done.set()
        else:
            assert b_done.wait(TIMEOUT)

    slow_retry = TaskPolicy(RetryPolicy(max_attempts=2, base_seconds=0.2, cap_seconds=0.2))
    graph = TaskGraph({"a": [], "b": []})
    outcome = DagExecutor(
        graph, run_task, workers=1, policies={"a": slow_retry}, priority={"a": 2, "b": 1}
    ).run()
    assert set(outcome.states.values()) == {TaskState.SUCCEEDED}
    assert order == [("a", 1), ("b", 1), ("a", 2)]


def test_rate_limit_hint_sets_the_least_delay():
    policy = RetryPolicy(max_attempts=3, base_seconds=0.0, cap_seconds=0.0)
    assert policy.delay_after(RateLimitedError("slow down", retry_after=7.0), 1) == 7.0
    assert policy.delay_after(ServerError("oops"), 1) == 0.0


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(max_attempts=10, base_seconds=1.0, cap_seconds=5.0)
    delays = [policy.delay_after(ServerError("x"), attempt) for attempt in range(1, 8)]
    assert 1.0 <= delays[0] <= 2.0
    assert 2.0 <= delays[1] <= 3.0
    assert all(delay <= 5.0 for delay in delays)
    assert delays[-1] == 5.0


def test_hung_task_times_out_and_is_told_to_stop():
    told_to_stop = threading.Event()

    def run_task(attempt):
        if attempt.task == "hang":
            attempt.cancel.wait(TIMEOUT)
            told_to_stop.set()
            raise TaskCancelledError("stopped")

    graph = TaskGraph({"hang": [], "after": ["hang"], "other": []})
    policies = {"hang": TaskPolicy(timeout_seconds=0.2)}
    outcome = DagExecutor(graph, run_task, workers=2, policies=policies).run()
    assert outcome.states == {
        "hang": TaskState.FAILED,
        "after": TaskState.SKIPPED,
        "other": TaskState.SUCCEEDED,
    }
    assert outcome.reasons["hang"] == "TaskTimeoutError: ran past its 0.2 s limit"
    assert told_to_stop.wait(TIMEOUT)


def test_fail_fast_cancels_everything_else():
    other_started = threading.Event()

    def run_task(attempt):
        if attempt.task == "bad":
            assert other_started.wait(TIMEOUT)
            raise BackendError("broken")
        other_started.set()
        if attempt.cancel.wait(TIMEOUT):
            raise TaskCancelledError("stopped")

    graph = TaskGraph({"bad": [], "slow": [], "later": ["slow"]})
    outcome = DagExecutor(graph, run_task, workers=2, fail_fast=True).run()
    assert outcome.states == {
        "bad": TaskState.FAILED,
        "slow": TaskState.CANCELLED,
        "later": TaskState.CANCELLED,
    }
    assert outcome.reasons["slow"] == "stopped by --fail-fast after 'bad' failed"
    assert outcome.root_cause == "bad"
    assert outcome.cancelled is False


def test_attempt_ignoring_cancel_is_abandoned_after_the_grace_period():
    release = threading.Event()
    started = threading.Event()

    def run_task(attempt):
        started.set()
        release.wait(TIMEOUT)  # ignores attempt.cancel, like a stuck network call

    cancel = threading.Event()
    executor = DagExecutor(TaskGraph({"stuck": []}), run_task, workers=1, grace_seconds=0.1)
    thread, result = run_in_thread(executor, cancel)
    assert started.wait(TIMEOUT)
    cancel.set()
    thread.join(TIMEOUT)
    release.set()
    assert not thread.is_alive()
    assert result[0].states == {"stuck": TaskState.CANCELLED}
    assert "did not stop within 0.1 s" in result[0].reasons["stuck"]


def test_done_tasks_are_not_run_again():
    ran = []
    graph = TaskGraph(BUNDLED_CREW_CONTEXTS)
    outcome = DagExecutor(
        graph, lambda attempt: ran.append(attempt.task), workers=2, done={"design", "implement"}
    ).run()
    assert sorted(ran) == ["deploy", "document", "review", "test"]
    assert set(outcome.states.values()) == {TaskState.SUCCEEDED}


def test_commit_runs_before_dependents_start_and_its_failure_fails_the_task():
    committed = []

    def commit(task, result):
        if task == "b":
            raise OSError("disk full")
        committed.append((task, result))

    def run_task(attempt):
        assert all(
            task in {name for name, _ in committed} for task in graph.dependencies(attempt.task)
        )
        return attempt.task.upper()

    graph = TaskGraph({"a": [], "b": ["a"], "c": ["b"]})
    outcome = DagExecutor(graph, run_task, workers=2, commit=commit).run()
    assert committed == [("a", "A")]
    assert outcome.states == {
        "a": TaskState.SUCCEEDED,
        "b": TaskState.FAILED,
        "c": TaskState.SKIPPED,
    }
    assert outcome.reasons["b"] == "OSError: disk full"


def test_worker_limit_is_asked_before_each_start():
    active = 0
    peak = 0
    lock = threading.Lock()
    asked = []
    overlap = threading.Event()

    def run_task(attempt):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            if active > 1:
                overlap.set()
        overlap.wait(0.05)  # without the limit, a second task starts during this wait
        with lock:
            active -= 1

    def limit():
        asked.append(1)
        return 1

    graph = TaskGraph({name: [] for name in "abcdef"})
    DagExecutor(graph, run_task, workers=4, worker_limit=limit).run()
    assert peak == 1
    assert len(asked) >= 6
