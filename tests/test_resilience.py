"""The circuit breaker, call retries and the fallback chain, on in-process backends."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from orchestrate.errors import (
    AllBackendsFailedError,
    BackendRefusedError,
    CircuitOpenError,
    RateLimitedError,
    ServerError,
    TaskCancelledError,
    UnparseableOutputError,
)
from orchestrate.llm.backend import Completion, CompletionRequest
from orchestrate.llm.resilience import (
    BreakerConfig,
    CircuitBreaker,
    CircuitState,
    FallbackChain,
    ResilientBackend,
)
from orchestrate.scheduler.policy import RetryPolicy

NO_WAIT = RetryPolicy(max_attempts=3, base_seconds=0.0, cap_seconds=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FlakyBackend:
    """Fails with the queued errors, then answers; counts the calls it gets."""

    name: str = "ollama:flaky"
    errors: list[BaseException] = field(default_factory=list)
    calls: int = 0
    prepared: int = 0
    identity: str = "flaky"
    context_window: int = 4096

    def prepare(self) -> None:
        self.prepared += 1

    def complete(self, request: CompletionRequest) -> Completion:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Completion(f"answer from {self.name}", 3, 4)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return 3


def request_with_events(events: list[tuple[str, dict[str, Any]]]) -> CompletionRequest:
    return CompletionRequest(
        messages=[{"role": "user", "content": "hi"}],
        agent="architect",
        max_tokens=16,
        on_event=lambda kind, fields: events.append((kind, fields)),
    )


def test_the_breaker_opens_after_the_threshold_and_closes_after_a_trial() -> None:
    clock = Clock()
    breaker = CircuitBreaker("ollama:m", BreakerConfig(3, 10.0), clock=clock)

    assert [breaker.record_failure() for _ in range(3)] == [None, None, CircuitState.OPEN]
    with pytest.raises(CircuitOpenError) as refused:
        breaker.admit()
    assert refused.value.retry_after == pytest.approx(10.0)

    clock.now += 10.0
    assert breaker.admit() is CircuitState.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        breaker.admit()  # one trial at a time
    assert breaker.record_success() is CircuitState.CLOSED
    assert breaker.admit() is None


def test_a_failed_trial_reopens_the_circuit_at_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker("ollama:m", BreakerConfig(2, 5.0), clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 5.0
    breaker.admit()

    assert breaker.record_failure() is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        breaker.admit()


def test_a_success_resets_the_count_of_failures_in_a_row() -> None:
    breaker = CircuitBreaker("ollama:m", BreakerConfig(2, 5.0))
    breaker.record_failure()
    breaker.record_success()
    assert breaker.record_failure() is None
    assert breaker.state is CircuitState.CLOSED


def test_the_breaker_is_consistent_under_concurrent_failures() -> None:
    breaker = CircuitBreaker("ollama:m", BreakerConfig(50, 60.0))
    opened: list[CircuitState | None] = []
    barrier = threading.Barrier(8)

    def fail_many() -> None:
        barrier.wait()
        for _ in range(25):
            opened.append(breaker.record_failure())

    threads = [threading.Thread(target=fail_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The 50th failure opens it; every later one re-opens it (the clock restarts).
    assert opened.count(CircuitState.OPEN) == 200 - 49


def test_transient_failures_are_retried_with_an_event_each() -> None:
    inner = FlakyBackend(errors=[ServerError("503"), RateLimitedError("429", retry_after=0.0)])
    backend = ResilientBackend(inner, CircuitBreaker(inner.name, BreakerConfig()), NO_WAIT)
    events: list[tuple[str, dict[str, Any]]] = []

    completion = backend.complete(request_with_events(events))

    assert completion.text == "answer from ollama:flaky"
    assert inner.calls == 3
    assert [kind for kind, _ in events] == ["llm_retry", "llm_retry"]
    assert events[1][1]["reason"] == "429" and events[1][1]["attempt"] == 2


def test_a_refused_request_is_not_retried_and_does_not_trip_the_breaker() -> None:
    inner = FlakyBackend(errors=[BackendRefusedError("no such model")])
    breaker = CircuitBreaker(inner.name, BreakerConfig(1, 60.0))
    backend = ResilientBackend(inner, breaker, NO_WAIT)

    with pytest.raises(BackendRefusedError):
        backend.complete(request_with_events([]))
    assert inner.calls == 1
    assert breaker.state is CircuitState.CLOSED


def test_an_empty_answer_is_retried_but_says_nothing_about_the_backend() -> None:
    inner = FlakyBackend(errors=[UnparseableOutputError("empty")] * 5)
    breaker = CircuitBreaker(inner.name, BreakerConfig(2, 60.0))

    with pytest.raises(UnparseableOutputError):
        ResilientBackend(inner, breaker, NO_WAIT).complete(request_with_events([]))
    assert breaker.state is CircuitState.CLOSED


def test_retries_stop_once_the_circuit_opens() -> None:
    inner = FlakyBackend(errors=[ServerError("503")] * 10)
    breaker = CircuitBreaker(inner.name, BreakerConfig(2, 60.0))
    events: list[tuple[str, dict[str, Any]]] = []
    backend = ResilientBackend(inner, breaker, RetryPolicy(10, 0.0, 0.0))

    with pytest.raises(ServerError):
        backend.complete(request_with_events(events))
    assert inner.calls == 2
    assert ("circuit_changed", {"model": inner.name, "state": "open", "reason": "503"}) in events
    with pytest.raises(CircuitOpenError):
        backend.complete(request_with_events(events))
    assert inner.calls == 2  # the open circuit answered for the model


def test_a_long_retry_after_is_not_slept_through() -> None:
    inner = FlakyBackend(errors=[RateLimitedError("429", retry_after=3600.0)])
    backend = ResilientBackend(
        inner, CircuitBreaker(inner.name, BreakerConfig()), RetryPolicy(3, 0.0, 10.0)
    )
    with pytest.raises(RateLimitedError):
        backend.complete(request_with_events([]))
    assert inner.calls == 1


def test_a_retry_after_hint_sets_the_wait() -> None:
    policy = RetryPolicy(3, 0.01, 10.0)
    assert policy.delay_after(RateLimitedError("429", retry_after=2.5), 1) == 2.5


def test_cancellation_interrupts_the_backoff() -> None:
    inner = FlakyBackend(errors=[ServerError("503")] * 3)
    backend = ResilientBackend(
        inner, CircuitBreaker(inner.name, BreakerConfig()), RetryPolicy(3, 30.0, 30.0)
    )
    request = request_with_events([])
    request.cancel.set()
    with pytest.raises(TaskCancelledError):
        backend.complete(request)


def test_the_chain_falls_back_and_says_why() -> None:
    primary = FlakyBackend(name="openai:gpt-4o-mini", errors=[ServerError("HTTP 503")])
    backup = FlakyBackend(name="ollama:llama3.2")
    events: list[tuple[str, dict[str, Any]]] = []

    completion = FallbackChain([primary, backup]).complete(request_with_events(events))

    assert completion.text == "answer from ollama:llama3.2"
    assert completion.model == "ollama:llama3.2"
    assert events == [
        (
            "model_fallback",
            {"from_model": primary.name, "to_model": backup.name, "reason": "HTTP 503"},
        )
    ]


def test_the_chain_prepares_a_fallback_only_when_it_is_needed() -> None:
    primary, backup = FlakyBackend(name="openai:a"), FlakyBackend(name="ollama:b")
    chain = FallbackChain([primary, backup])

    chain.prepare()
    chain.complete(request_with_events([]))

    assert (primary.prepared, backup.prepared) == (1, 0)


def test_when_every_model_fails_the_error_names_each() -> None:
    chain = FallbackChain(
        [
            FlakyBackend(name="openai:a", errors=[ServerError("HTTP 503")]),
            FlakyBackend(name="ollama:b", errors=[CircuitOpenError("circuit open")]),
        ]
    )
    with pytest.raises(AllBackendsFailedError) as failed:
        chain.complete(request_with_events([]))
    assert str(failed.value) == "every model failed: openai:a: HTTP 503; ollama:b: circuit open"


def test_a_single_model_chain_passes_its_error_through() -> None:
    chain = FallbackChain([FlakyBackend(errors=[BackendRefusedError("401")])])
    with pytest.raises(BackendRefusedError, match="401"):
        chain.complete(request_with_events([]))
