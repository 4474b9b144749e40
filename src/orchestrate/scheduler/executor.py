"""Run a task graph on a pool of threads, each task the moment its inputs are done.

The executor knows nothing of agents or models: it calls ``run_task(name)`` on a worker
thread and reports every state change through ``on_transition``. When more tasks are
ready than workers are free, the one heading the longest remaining chain starts first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from orchestrate.crew.graph import TaskGraph
from orchestrate.errors import TaskCancelledError
from orchestrate.scheduler.lifecycle import TaskState

logger = logging.getLogger(__name__)

TransitionListener = Callable[[str, TaskState, str | None], None]


@dataclass
class ScheduleOutcome:
    """Where every task ended up, and why for those that did not succeed."""

    states: dict[str, TaskState]
    reasons: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False

    @property
    def failed(self) -> list[str]:
        return [task for task, state in self.states.items() if state is TaskState.FAILED]


class DagExecutor:
    """Starts each task as soon as every task it depends on has succeeded."""

    def __init__(
        self,
        graph: TaskGraph,
        run_task: Callable[[str], None],
        *,
        workers: int,
        on_transition: TransitionListener | None = None,
        priority: Mapping[str, float] | None = None,
        worker_limit: Callable[[], int] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._graph = graph
        self._run_task = run_task
        self._workers = workers
        self._notify = on_transition or (lambda task, state, reason: None)
        self._priority = dict(priority or graph.remaining_path())
        self._order = {task: index for index, task in enumerate(graph.tasks)}
        self._outcome = ScheduleOutcome({task: TaskState.PENDING for task in graph.tasks})
        self._ready: list[str] = []
        # Asked before each start (the budget limiter); it can only lower ``workers``.
        self._worker_limit = worker_limit

    def run(self, cancel: threading.Event | None = None) -> ScheduleOutcome:
        """Run every task; return when none is running and none can start."""
        cancel = cancel or threading.Event()
        for task in self._graph.tasks:
            if not self._graph.dependencies(task):
                self._set(task, TaskState.READY)
        with ThreadPoolExecutor(self._workers, thread_name_prefix="task") as pool:
            running: dict[Future[None], str] = {}
            while True:
                if cancel.is_set():
                    self._cancel_waiting()
                else:
                    self._start_ready(pool, running)
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    self._settle(running.pop(future), future, cancel)
        self._outcome.cancelled = cancel.is_set()
        return self._outcome

    def _start_ready(self, pool: ThreadPoolExecutor, running: dict[Future[None], str]) -> None:
        while self._ready and len(running) < self._current_limit():
            self._ready.sort(key=lambda task: (-self._priority.get(task, 0.0), self._order[task]))
            task = self._ready.pop(0)
            self._set(task, TaskState.RUNNING)
            running[pool.submit(self._run_task, task)] = task

    def _current_limit(self) -> int:
        if self._worker_limit is None:
            return self._workers
        return max(1, min(self._workers, self._worker_limit()))

    def _settle(self, task: str, future: Future[None], cancel: threading.Event) -> None:
        error = future.exception()
        if error is None:
            self._set(task, TaskState.SUCCEEDED)
            self._release_dependents(task)
        elif isinstance(error, TaskCancelledError) or cancel.is_set():
            self._set(task, TaskState.CANCELLED, "the run was interrupted")
        else:
            logger.debug("task %s failed", task, exc_info=error)
            self._set(task, TaskState.FAILED, _describe(error))
            for dependent in self._graph.descendants(task):
                if not self._outcome.states[dependent].is_terminal:
                    self._set(dependent, TaskState.SKIPPED, f"its input '{task}' failed")

    def _release_dependents(self, task: str) -> None:
        for dependent in self._graph.dependents(task):
            inputs = self._graph.dependencies(dependent)
            done = all(self._outcome.states[dep] is TaskState.SUCCEEDED for dep in inputs)
            if done and self._outcome.states[dependent] is TaskState.PENDING:
                self._set(dependent, TaskState.READY)

    def _cancel_waiting(self) -> None:
        for task, state in self._outcome.states.items():
            if state in (TaskState.PENDING, TaskState.READY):
                self._set(task, TaskState.CANCELLED, "the run was interrupted before it started")
        self._ready.clear()

    def _set(self, task: str, state: TaskState, reason: str | None = None) -> None:
        self._outcome.states[task] = state
        if reason is not None:
            self._outcome.reasons[task] = reason
        if state is TaskState.READY:
            self._ready.append(task)
        self._notify(task, state, reason)


def _describe(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    text = message[0] if message else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
