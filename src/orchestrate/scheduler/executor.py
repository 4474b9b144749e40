"""Run a task graph on worker threads, each task the moment its inputs are done.

The executor knows nothing of agents or models. It calls ``run_task(attempt)`` on a
worker thread, hands a successful result to ``commit`` on the scheduling thread (so a
checkpoint is on disk before any dependent starts), and reports every change to a
listener. Around that it owns the run's fault handling:

- a transient failure is retried after a backoff, without holding a worker meanwhile;
- a task that fails for good skips exactly its descendants, or with ``fail_fast``
  stops the whole run;
- a task past its wall-clock limit is cancelled and fails;
- on cancellation nothing new starts, running attempts are told to stop, and any that
  do not within the grace period are abandoned.

Attempts run on a pool of daemon threads rather than a ``ThreadPoolExecutor``, which
joins its threads at interpreter exit: one model call that ignores cancellation would
keep Ctrl-C from exiting. A worker stuck in an abandoned attempt is replaced, and the
attempt's late result is ignored.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from orchestrate.crew.graph import TaskGraph
from orchestrate.errors import TaskCancelledError
from orchestrate.scheduler.lifecycle import TaskState
from orchestrate.scheduler.policy import TaskPolicy

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

# The scheduling thread wakes at least this often to notice a cancel request set by a
# signal handler, which cannot safely wake it any other way.
_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class TaskAttempt:
    """One try at running a task; ``cancel`` is set when the task must stop."""

    task: str
    number: int
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)


class ExecutionListener:
    """Hears about the run as it happens; every method is optional."""

    def on_transition(self, task: str, state: TaskState, reason: str | None) -> None:
        """A task moved to ``state``; ``reason`` says why when it did not succeed."""

    def on_attempt(self, task: str, number: int, max_attempts: int) -> None:
        """Attempt ``number`` of a task is starting."""

    def on_attempt_failed(
        self, task: str, number: int, reason: str, retry_in: float | None
    ) -> None:
        """An attempt failed; ``retry_in`` is the backoff, or None when it is final."""


@dataclass
class ScheduleOutcome:
    """Where every task ended up, and why for those that did not succeed."""

    states: dict[str, TaskState]
    reasons: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    cancelled: bool = False
    root_cause: str | None = None  # the first task that failed for good

    @property
    def failed(self) -> list[str]:
        return [task for task, state in self.states.items() if state is TaskState.FAILED]

    def failure_summary(self) -> str | None:
        """One line naming the root cause and what it took down with it."""
        cause = self.root_cause
        if cause is None:
            return None
        skipped = [
            task
            for task, state in self.states.items()
            if state is TaskState.SKIPPED and self.reasons.get(task) == _skipped_because(cause)
        ]
        summary = f"task '{cause}' failed: {self.reasons.get(cause, 'unknown error')}"
        if skipped:
            summary += f"; skipped because of it: {', '.join(skipped)}"
        others = [task for task in self.failed if task != cause]
        if others:
            summary += f"; also failed: {', '.join(others)}"
        return summary


@dataclass
class _Running:
    attempt: TaskAttempt
    deadline: float | None


class DagExecutor(Generic[Result]):
    """Starts each task as soon as every task it depends on has succeeded."""

    def __init__(
        self,
        graph: TaskGraph,
        run_task: Callable[[TaskAttempt], Result],
        *,
        workers: int,
        commit: Callable[[str, Result], None] | None = None,
        policies: Mapping[str, TaskPolicy] | None = None,
        listener: ExecutionListener | None = None,
        priority: Mapping[str, float] | None = None,
        worker_limit: Callable[[], int] | None = None,
        fail_fast: bool = False,
        done: Collection[str] = (),
        grace_seconds: float = 5.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._graph = graph
        self._run_task = run_task
        self._commit = commit or (lambda task, result: None)
        self._workers = workers
        self._worker_limit = worker_limit
        self._policies = dict(policies or {})
        self._listener = listener or ExecutionListener()
        self._priority = dict(priority or graph.remaining_path())
        self._order = {task: index for index, task in enumerate(graph.tasks)}
        self._fail_fast = fail_fast
        self._done = set(done)
        self._grace_seconds = grace_seconds
        self._outcome = ScheduleOutcome({task: TaskState.PENDING for task in graph.tasks})
        self._ready: list[tuple[float, int, str]] = []
        self._backoff: list[tuple[float, int, str]] = []  # (due, tie-breaker, task)
        self._tie = itertools.count()
        self._running: dict[str, _Running] = {}
        self._first_started: dict[str, float] = {}
        # Not a SimpleQueue: on CPython 3.11 its timed get() waits forever when a signal
        # handler (Ctrl-C's) runs past the timeout, and the run would never see the stop.
        self._results: queue.Queue[tuple[TaskAttempt, BaseException | None, Any]]
        self._results = queue.Queue()
        self._stop_reason: str | None = None
        self._cancel = threading.Event()
        self._grace_deadline = 0.0

    def run(self, cancel: threading.Event | None = None) -> ScheduleOutcome:
        """Run every task that can run; return once none is running or waiting."""
        self._cancel = cancel or threading.Event()
        self._pool = _DaemonPool(self._workers, self._work)
        try:
            self._schedule()
        finally:
            self._pool.shutdown()
        self._outcome.cancelled = self._cancel.is_set()
        return self._outcome

    def _schedule(self) -> None:
        self._restore_done()
        while True:
            now = time.monotonic()
            self._notice_cancel(now)
            if self._stop_reason is None:
                self._promote_due_retries(now)
                self._start_ready(now)
            self._expire(now)
            if not self._running and (self._stop_reason is not None or not self._backoff):
                break
            self._settle_results(self._wait_seconds(now))

    def _notice_cancel(self, now: float) -> None:
        if self._cancel.is_set() and self._stop_reason is None:
            self._stop("the run was interrupted", now)

    def _restore_done(self) -> None:
        for task in self._graph.tasks:
            if task in self._done:
                self._set(task, TaskState.SUCCEEDED, "restored from an earlier attempt")
        for task in self._graph.tasks:
            if task not in self._done:
                self._make_ready_if_inputs_done(task)

    def _start_ready(self, now: float) -> None:
        limit = self._workers
        if self._worker_limit is not None:
            limit = max(1, min(limit, self._worker_limit()))
        while self._ready and len(self._running) < limit:
            _, _, task = heapq.heappop(self._ready)
            self._launch(task, now)

    def _launch(self, task: str, now: float) -> None:
        number = self._outcome.attempts.get(task, 0) + 1
        self._outcome.attempts[task] = number
        attempt = TaskAttempt(task, number)
        started = self._first_started.setdefault(task, now)
        timeout = self._policy(task).timeout_seconds
        self._running[task] = _Running(attempt, started + timeout if timeout else None)
        self._set(task, TaskState.RUNNING)
        self._listener.on_attempt(task, number, self._policy(task).retry.max_attempts)
        self._pool.submit(attempt)

    def _work(self, attempt: TaskAttempt) -> None:
        try:
            result = self._run_task(attempt)
        except BaseException as error:  # reported to the scheduling thread, never lost
            self._results.put((attempt, error, None))
        else:
            self._results.put((attempt, None, result))

    def _wait_seconds(self, now: float) -> float:
        moments = [entry.deadline for entry in self._running.values() if entry.deadline]
        if self._backoff:
            moments.append(self._backoff[0][0])
        if self._stop_reason is not None:
            moments.append(self._grace_deadline)
        soonest = min(moments, default=now + _POLL_SECONDS)
        return max(0.0, min(soonest - now, _POLL_SECONDS))

    def _settle_results(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a result, then take every result already there."""
        try:
            self._settle(*self._results.get(timeout=timeout))
            while True:
                self._settle(*self._results.get_nowait())
        except queue.Empty:
            return

    def _settle(self, attempt: TaskAttempt, error: BaseException | None, result: Any) -> None:
        entry = self._running.get(attempt.task)
        if entry is None or entry.attempt is not attempt:
            logger.debug("ignoring the late end of abandoned %s", attempt)
            return
        del self._running[attempt.task]
        self._notice_cancel(time.monotonic())
        if error is None:
            try:
                self._commit(attempt.task, result)
            except Exception as commit_error:
                error = commit_error
        if error is None:
            self._succeed(attempt.task)
        else:
            self._attempt_failed(attempt, error)

    def _succeed(self, task: str) -> None:
        self._set(task, TaskState.SUCCEEDED)
        if self._stop_reason is None:
            for dependent in self._graph.dependents(task):
                self._make_ready_if_inputs_done(dependent)

    def _attempt_failed(self, attempt: TaskAttempt, error: BaseException) -> None:
        task, reason = attempt.task, describe_error(error)
        if self._stop_reason is not None or isinstance(error, TaskCancelledError):
            self._set(task, TaskState.CANCELLED, self._stop_reason or reason)
            return
        retry = self._policy(task).retry
        if retry.should_retry(error, attempt.number):
            delay = retry.delay_after(error, attempt.number)
            self._listener.on_attempt_failed(task, attempt.number, reason, delay)
            self._set(task, TaskState.RETRYING, reason)
            heapq.heappush(self._backoff, (time.monotonic() + delay, next(self._tie), task))
            return
        logger.debug("task %s failed", task, exc_info=error)
        self._listener.on_attempt_failed(task, attempt.number, reason, None)
        self._fail(task, reason)

    def _fail(self, task: str, reason: str) -> None:
        self._set(task, TaskState.FAILED, reason)
        self._outcome.root_cause = self._outcome.root_cause or task
        for descendant in self._graph.descendants(task):
            if not self._outcome.states[descendant].is_terminal:
                self._set(descendant, TaskState.SKIPPED, _skipped_because(task))
        if self._fail_fast and self._stop_reason is None:
            self._stop(f"stopped by --fail-fast after '{task}' failed", time.monotonic())

    def _promote_due_retries(self, now: float) -> None:
        while self._backoff and self._backoff[0][0] <= now:
            _, _, task = heapq.heappop(self._backoff)
            if self._outcome.states[task] is TaskState.RETRYING:
                self._set(task, TaskState.READY)

    def _expire(self, now: float) -> None:
        """Fail tasks past their wall-clock limit; abandon stragglers after a stop."""
        for task in self._tasks_past_deadline(now):
            limit = self._policy(task).timeout_seconds
            self._abandon(task)
            self._listener.on_attempt_failed(task, self._outcome.attempts[task], "timed out", None)
            self._fail(task, f"TaskTimeoutError: ran past its {limit:g} s limit")
        if self._stop_reason is not None and now >= self._grace_deadline:
            for task in list(self._running):
                self._abandon(task)
                self._set(
                    task,
                    TaskState.CANCELLED,
                    f"{self._stop_reason}; it did not stop within {self._grace_seconds:g} s",
                )

    def _tasks_past_deadline(self, now: float) -> list[str]:
        late = [
            task
            for task, entry in self._running.items()
            if entry.deadline is not None and now >= entry.deadline
        ]
        for _, _, task in self._backoff:
            timeout = self._policy(task).timeout_seconds
            if timeout and now >= self._first_started[task] + timeout:
                late.append(task)
        return [task for task in late if not self._outcome.states[task].is_terminal]

    def _abandon(self, task: str) -> None:
        entry = self._running.pop(task, None)
        if entry is not None:
            entry.attempt.cancel.set()
            self._pool.replace_stuck_worker()

    def _stop(self, reason: str, now: float) -> None:
        """Start nothing more, tell running attempts to stop, cancel the waiting tasks."""
        self._stop_reason = reason
        self._grace_deadline = now + self._grace_seconds
        for entry in self._running.values():
            entry.attempt.cancel.set()
        for task, state in self._outcome.states.items():
            if state in (TaskState.PENDING, TaskState.READY, TaskState.RETRYING):
                self._set(task, TaskState.CANCELLED, f"{reason} before it started")
        self._ready.clear()
        self._backoff.clear()

    def _make_ready_if_inputs_done(self, task: str) -> None:
        inputs = self._graph.dependencies(task)
        done = all(self._outcome.states[dep] is TaskState.SUCCEEDED for dep in inputs)
        if done and self._outcome.states[task] is TaskState.PENDING:
            self._set(task, TaskState.READY)

    def _policy(self, task: str) -> TaskPolicy:
        return self._policies.get(task) or _DEFAULT_POLICY

    def _set(self, task: str, state: TaskState, reason: str | None = None) -> None:
        self._outcome.states[task] = state
        if reason is not None:
            self._outcome.reasons[task] = reason
        if state is TaskState.READY:
            rank = (-self._priority.get(task, 0.0), self._order[task], task)
            heapq.heappush(self._ready, rank)
        self._listener.on_transition(task, state, reason)


_DEFAULT_POLICY = TaskPolicy()


class _DaemonPool:
    """Daemon worker threads taking attempts from a queue, as many as there are workers."""

    def __init__(self, size: int, work: Callable[[TaskAttempt], None]) -> None:
        self._jobs: queue.SimpleQueue[TaskAttempt | None] = queue.SimpleQueue()
        self._work = work
        self._size = 0
        for _ in range(size):
            self._spawn()

    def submit(self, attempt: TaskAttempt) -> None:
        self._jobs.put(attempt)

    def replace_stuck_worker(self) -> None:
        """An abandoned attempt may never return; keep the pool at full strength."""
        self._spawn()

    def shutdown(self) -> None:
        for _ in range(self._size):
            self._jobs.put(None)  # stuck workers never read theirs; they are daemons

    def _spawn(self) -> None:
        self._size += 1
        threading.Thread(target=self._serve, name="task-worker", daemon=True).start()

    def _serve(self) -> None:
        while (attempt := self._jobs.get()) is not None:
            self._work(attempt)


def _skipped_because(failed_task: str) -> str:
    return f"its input '{failed_task}' failed"


def describe_error(error: BaseException) -> str:
    """``Type: first line of the message``, short enough for a table cell."""
    message = str(error).strip().splitlines()
    text = message[0] if message else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
