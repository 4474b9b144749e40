"""Turns a run's events into Prometheus metrics.

The recorder listens to the event log (``store/events.py``), the one place where
everything a run does is already reported, so the metrics cannot drift from what
``events.jsonl``, ``show`` and the report say. It keeps just enough state per task
(its current state and when it became ready or started) to turn state changes into
gauges and durations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePath

from orchestrate.errors import failure_kind
from orchestrate.observe.metrics import Metrics
from orchestrate.store.events import Event, EventType

BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
REMOTE_BACKENDS = ("ollama", "openai")
_TASK_OUTCOMES = ("succeeded", "failed", "cancelled")


def split_model(model: str) -> tuple[str, str]:
    """``(backend, model label)`` for a model name, with file paths cut to their name.

    ``scripted:/tmp/x/script.yaml`` and ``embedded:/models/coder.gguf`` name files; a
    label holds only the file's name so that it stays a small, stable set.
    """
    backend, _, name = model.partition(":")
    if backend in ("scripted", "embedded") and ("/" in name or "\\" in name):
        name = PurePath(name).name
    return backend, f"{backend}:{name}" if name else backend


@dataclass
class _TaskClock:
    agent: str
    state: str = "pending"
    ready_since: float | None = None
    started: float | None = None  # the first time it ran, for its total duration
    waited_for_inputs: bool = False


@dataclass
class MetricsRecorder:
    """An event listener (``EventLog.subscribe``) that updates ``metrics``."""

    metrics: Metrics
    currency: str = "USD"
    cache_enabled: bool = True
    clock: Callable[[], float] = time.monotonic
    _tasks: dict[str, _TaskClock] = field(default_factory=dict)
    _run_started: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, event: Event) -> None:
        handler = _HANDLERS.get(event.get("type", ""))
        if handler is not None:
            with self._lock:
                handler(self, event)

    def watch_worker_limit(
        self, limit: Callable[[], int] | None, workers: int
    ) -> Callable[[], int]:
        """The limiter the scheduler asks, reporting each answer as the worker-limit gauge."""
        gauge = self.metrics.worker_limit
        gauge.set(workers)

        def current_limit() -> int:
            value = min(workers, limit()) if limit is not None else workers
            gauge.set(value)
            return value

        return current_limit

    def note_remote_models(self, models: Iterable[str]) -> None:
        """Start each remote model's breaker gauge at closed, before any call fails."""
        for model in models:
            backend, label = split_model(model)
            if backend in REMOTE_BACKENDS:
                self.metrics.circuit_breaker_state.labels(label).set(0)

    def lease_granted(self, device: str, waited_seconds: float) -> None:
        """Called by the GPU lease manager each time it grants a lease."""
        self.metrics.gpu_lease_wait.labels(device).observe(waited_seconds)

    # One handler per event type.

    def _run_began(self, event: Event) -> None:
        self._run_started = self.clock()
        self._tasks.clear()

    def _task_state(self, event: Event) -> None:
        now, name, state = self.clock(), event["task"], event["state"]
        task = self._tasks.setdefault(name, _TaskClock(agent=event.get("agent") or "unknown"))
        self._leave(task)
        task.state = state
        if state == "ready":
            self._became_ready(task, now)
        elif state == "running":
            self._began_running(task, now)
        elif state in _TASK_OUTCOMES:
            self._ended(task, state, now, event.get("reason"))

    def _leave(self, task: _TaskClock) -> None:
        if task.state == "running":
            self.metrics.agents_running.labels(task.agent).dec()
        elif task.state == "ready":
            self.metrics.ready_tasks.dec()

    def _became_ready(self, task: _TaskClock, now: float) -> None:
        self.metrics.ready_tasks.inc()
        task.ready_since = now
        if not task.waited_for_inputs and self._run_started is not None:
            task.waited_for_inputs = True  # a retry's second "ready" waited for no input
            self.metrics.task_input_wait.labels(task.agent).observe(now - self._run_started)

    def _began_running(self, task: _TaskClock, now: float) -> None:
        self.metrics.agents_running.labels(task.agent).inc()
        if task.ready_since is not None:
            self.metrics.task_queue_wait.labels(task.agent).observe(now - task.ready_since)
            task.ready_since = None
        if task.started is None:
            task.started = now

    def _ended(self, task: _TaskClock, outcome: str, now: float, reason: str | None) -> None:
        if task.started is not None:  # a task cancelled before it ran took no time
            self.metrics.task_duration.labels(task.agent, outcome).observe(now - task.started)
        if outcome == "failed":
            self.metrics.task_failures.labels(task.agent, failure_kind(reason)).inc()

    def _attempt_failed(self, event: Event) -> None:
        if event.get("retry_in_seconds") is None:
            return  # the last attempt: counted as a failure when the task fails
        agent = self._agent_of(event.get("task"))
        self.metrics.task_retries.labels(agent, failure_kind(event.get("reason"))).inc()

    def _llm_call(self, event: Event) -> None:
        backend, model = split_model(str(event.get("model") or "unknown"))
        if event.get("cached"):
            self.metrics.cache_hits.labels(model).inc()
            return
        if self.cache_enabled:
            self.metrics.cache_misses.labels(model).inc()
        self.metrics.model_request_duration.labels(backend, model).observe(
            event.get("seconds") or 0
        )
        if event.get("error"):
            reason = failure_kind(event["error"])
            self.metrics.model_request_failures.labels(backend, model, reason).inc()
        agent = event.get("agent") or self._agent_of(event.get("task"))
        for direction, key in (("input", "prompt_tokens"), ("output", "completion_tokens")):
            if event.get(key):
                self.metrics.tokens.labels(agent, model, direction).inc(event[key])
        if event.get("cost"):
            self.metrics.cost.labels(agent, model, self.currency).inc(event["cost"])

    def _llm_retry(self, event: Event) -> None:
        backend, model = split_model(str(event.get("model") or "unknown"))
        self.metrics.model_retries.labels(backend, model).inc()

    def _circuit_changed(self, event: Event) -> None:
        _, model = split_model(str(event.get("model") or "unknown"))
        value = BREAKER_STATE_VALUES.get(str(event.get("state")), 0)
        self.metrics.circuit_breaker_state.labels(model).set(value)

    def _file_written(self, event: Event) -> None:
        self.metrics.files_written.labels(self._agent_of(event.get("task"))).inc()

    def _secret_found(self, event: Event) -> None:
        action = str(event.get("action") or "unknown")
        for finding in event.get("findings") or []:
            self.metrics.secret_findings.labels(str(finding.get("kind")), action).inc()

    def _checks_ran(self, event: Event) -> None:
        status = str(event.get("status") or "unknown")
        self.metrics.checks.labels(str(event.get("kind") or "build"), status).inc()
        for limit in event.get("limits_hit") or []:
            self.metrics.sandbox_limits_hit.labels(str(limit)).inc()

    def _repair_finished(self, event: Event) -> None:
        outcome = "failed" if event.get("error") else "wrote_files"
        self.metrics.repairs.labels(str(event.get("agent") or "unknown"), outcome).inc()

    def _run_finished(self, event: Event) -> None:
        for task in self._tasks.values():  # nothing of this run is running or ready now
            self._leave(task)
            task.state = "ended"
        self.metrics.runs.labels(str(event.get("status"))).inc()

    def _agent_of(self, task: str | None) -> str:
        known = self._tasks.get(task or "")
        return known.agent if known is not None else "unknown"


_HANDLERS: dict[str, Callable[[MetricsRecorder, Event], None]] = {
    EventType.RUN_STARTED: MetricsRecorder._run_began,
    EventType.RUN_RESUMED: MetricsRecorder._run_began,
    EventType.TASK_STATE: MetricsRecorder._task_state,
    EventType.ATTEMPT_FAILED: MetricsRecorder._attempt_failed,
    EventType.LLM_CALL: MetricsRecorder._llm_call,
    EventType.LLM_RETRY: MetricsRecorder._llm_retry,
    EventType.CIRCUIT_CHANGED: MetricsRecorder._circuit_changed,
    EventType.FILE_WRITTEN: MetricsRecorder._file_written,
    EventType.SECRET_FOUND: MetricsRecorder._secret_found,
    EventType.CHECKS_RAN: MetricsRecorder._checks_ran,
    EventType.REPAIR_FINISHED: MetricsRecorder._repair_finished,
    EventType.RUN_FINISHED: MetricsRecorder._run_finished,
}
