"""Keeping calls to a flaky backend useful: retries, a circuit breaker, a fallback chain.

A model link is layered, from the outside in: the fallback chain tries each model in
turn; for one model, ``ResilientBackend`` retries transient failures with backoff
(honouring ``Retry-After``) and consults that backend's ``CircuitBreaker``, which every
task of the process shares. A backend that keeps failing is then skipped at once, for
everyone, until a single trial call shows it has recovered.

The breaker is written here rather than taken from pybreaker because pybreaker holds
its lock for the whole guarded call, which would let only one task at a time talk to
a model; this one holds its lock only to read and change its state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from orchestrate.errors import (
    AllBackendsFailedError,
    BackendError,
    BackendRefusedError,
    BudgetExceeded,
    CircuitOpenError,
    RateLimitedError,
    TaskCancelledError,
    TransientError,
    UnparseableOutputError,
)
from orchestrate.llm.backend import Backend, BackendLayer, Completion, CompletionRequest
from orchestrate.scheduler.policy import RetryPolicy


class CircuitState(StrEnum):
    CLOSED = "closed"  # calls go through; consecutive failures are counted
    OPEN = "open"  # calls fail at once until the cool-down ends
    HALF_OPEN = "half_open"  # one trial call goes through; its outcome decides


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5  # consecutive failures that open the circuit
    reset_seconds: float = 30.0  # how long it stays open before a trial call


class CircuitBreaker:
    """A thread-safe circuit breaker for one backend, shared by every task of a process."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> CircuitState:
        with self._lock:
            if self._state is CircuitState.OPEN and self._cooled_down():
                return CircuitState.HALF_OPEN
            return self._state

    def admit(self) -> CircuitState | None:
        """Let a call through, or raise CircuitOpenError; return the new state if it moved."""
        with self._lock:
            if self._state is CircuitState.CLOSED:
                return None
            if self._state is CircuitState.OPEN and not self._cooled_down():
                raise self._open_error(self._opened_at + self.config.reset_seconds - self._clock())
            if self._trial_running:  # half-open: one trial at a time, the rest wait
                raise self._open_error(1.0)
            self._trial_running = True
            moved = self._state is not CircuitState.HALF_OPEN
            self._state = CircuitState.HALF_OPEN
            return CircuitState.HALF_OPEN if moved else None

    def record_success(self) -> CircuitState | None:
        with self._lock:
            self._failures = 0
            self._trial_running = False
            if self._state is CircuitState.CLOSED:
                return None
            self._state = CircuitState.CLOSED
            return CircuitState.CLOSED

    def record_failure(self) -> CircuitState | None:
        with self._lock:
            self._failures += 1
            trial_failed = self._state is CircuitState.HALF_OPEN
            self._trial_running = False
            if not trial_failed and self._failures < self.config.failure_threshold:
                return None
            self._state = CircuitState.OPEN
            self._opened_at = self._clock()
            return CircuitState.OPEN

    def release_trial(self) -> None:
        """A trial call ended without telling anything about the backend (cancelled)."""
        with self._lock:
            self._trial_running = False

    def _cooled_down(self) -> bool:
        return self._clock() - self._opened_at >= self.config.reset_seconds

    def _open_error(self, retry_after: float) -> CircuitOpenError:
        return CircuitOpenError(
            f"{self.name} is skipped after {self._failures} failures in a row "
            f"(circuit open; next try in {max(retry_after, 0):.0f} s)",
            retry_after=max(retry_after, 0.0),
        )


def counts_against_backend(error: BaseException) -> bool:
    """Whether a failure says the backend is unhealthy (and not that the answer was bad)."""
    return isinstance(error, TransientError) and not isinstance(
        error, (UnparseableOutputError, CircuitOpenError)
    )


class ResilientBackend(BackendLayer):
    """One model behind its breaker, with its transient failures retried."""

    def __init__(self, inner: Backend, breaker: CircuitBreaker, retry: RetryPolicy) -> None:
        super().__init__(inner)
        self.breaker = breaker
        self.retry = retry

    def prepare(self) -> None:
        """Reach the server once; a failure counts against it like a failed call."""
        self.breaker.admit()
        try:
            self.inner.prepare()
        except TransientError as exc:
            if counts_against_backend(exc):
                self.breaker.record_failure()
            else:
                self.breaker.release_trial()
            raise
        except BaseException:
            self.breaker.release_trial()
            raise
        self.breaker.record_success()

    def complete(self, request: CompletionRequest) -> Completion:
        attempt = 0
        while True:
            attempt += 1
            self._note_state(request, self.breaker.admit(), "cool-down over: trial call")
            try:
                completion = self.inner.complete(request)
            except TransientError as exc:
                self._record_failure(request, exc)
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
                _report(
                    request,
                    "llm_retry",
                    model=self.name,
                    attempt=attempt,
                    reason=describe(exc),
                    retry_in_seconds=round(delay, 3),
                )
                if request.cancel.wait(delay):
                    raise TaskCancelledError("the task was told to stop") from exc
                continue
            except BaseException:
                self.breaker.release_trial()
                raise
            self._note_state(request, self.breaker.record_success(), "trial call succeeded")
            return completion

    def _record_failure(self, request: CompletionRequest, error: TransientError) -> None:
        if counts_against_backend(error):
            self._note_state(request, self.breaker.record_failure(), describe(error))
        else:
            self.breaker.release_trial()

    def _retry_delay(self, error: TransientError, attempt: int) -> float | None:
        """Seconds to wait before calling again, or None to give up on this model."""
        if isinstance(error, CircuitOpenError) or not self.retry.should_retry(error, attempt):
            return None
        if self.breaker.state is not CircuitState.CLOSED:
            return None  # the circuit opened: let the fallback chain move on
        hint = error.retry_after
        if isinstance(error, RateLimitedError) and hint and hint > self.retry.cap_seconds:
            return None  # a long wait is the scheduler's (or the next model's) business
        return self.retry.delay_after(error, attempt)

    def _note_state(
        self, request: CompletionRequest, state: CircuitState | None, reason: str
    ) -> None:
        if state is not None:
            _report(request, "circuit_changed", model=self.name, state=state.value, reason=reason)


class FallbackChain:
    """Models tried in order; each switch to the next is reported with its reason."""

    def __init__(self, links: Sequence[Backend]) -> None:
        if not links:
            raise ValueError("a fallback chain needs at least one model")
        self.links = list(links)
        self._primary = self.links[0]
        self._prepared: set[int] = set()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._primary.name

    @property
    def context_window(self) -> int:
        return min(link.context_window for link in self.links)

    @property
    def identity(self) -> str:
        return self._primary.identity

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return self._primary.count_tokens(messages)

    def prepare(self) -> None:
        """Get the first model that can answer ready; fail only when none can."""
        failures: list[tuple[str, BaseException]] = []
        for index in range(len(self.links)):
            try:
                self._prepare(index)
                return
            except BackendError as exc:
                failures.append((self.links[index].name, exc))
        raise _all_failed(failures)

    def complete(self, request: CompletionRequest) -> Completion:
        failures: list[tuple[str, BaseException]] = []
        for index, link in enumerate(self.links):
            try:
                self._prepare(index)
                completion = link.complete(request)
            except (BackendError, BudgetExceeded) as exc:
                failures.append((link.name, exc))
                if index + 1 < len(self.links):
                    _report(
                        request,
                        "model_fallback",
                        from_model=link.name,
                        to_model=self.links[index + 1].name,
                        reason=describe(exc, link.name),
                    )
                continue
            return completion if completion.model else replace(completion, model=link.name)
        raise _all_failed(failures)

    def _prepare(self, index: int) -> None:
        with self._lock:
            if index in self._prepared:
                return
            self.links[index].prepare()
            self._prepared.add(index)


def _all_failed(failures: list[tuple[str, BaseException]]) -> BaseException:
    if len(failures) == 1:
        return failures[0][1]
    summary = "; ".join(f"{name}: {describe(error, name)}" for name, error in failures)
    if any(isinstance(error, TransientError) for _, error in failures):
        hints = [e.retry_after for _, e in failures if isinstance(e, TransientError)]
        known = [hint for hint in hints if hint is not None]
        return AllBackendsFailedError(
            f"every model failed: {summary}", retry_after=min(known) if known else None
        )
    return BackendRefusedError(f"every model failed: {summary}")


def describe(error: BaseException, model: str = "") -> str:
    """The error's message, without the model's name when it starts with it."""
    message = str(error) or type(error).__name__
    return message.removeprefix(f"{model}: ") if model else message


def _report(request: CompletionRequest, kind: str, **fields: Any) -> None:
    if request.on_event is not None:
        request.on_event(kind, fields)
