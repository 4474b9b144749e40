"""How hard the scheduler tries: retries with backoff, and a wall-clock limit per task.

A policy comes from three layers, the most specific winning: the task in the crew file,
then its agent, then the settings. Only transient failures are retried (see errors.py);
the backoff between attempts is tenacity's exponential wait with jitter, and a rate
limit's own ``retry_after`` hint is honoured when it asks for longer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tenacity

from orchestrate.errors import TransientError


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``max_attempts`` tries; waits grow from ``base_seconds`` to ``cap_seconds``."""

    max_attempts: int = 3
    base_seconds: float = 1.0
    cap_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_seconds < 0 or self.cap_seconds < 0:
            raise ValueError("retry waits cannot be negative")

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """True when ``error`` ended attempt number ``attempt`` and another may succeed."""
        return isinstance(error, TransientError) and attempt < self.max_attempts

    def delay_after(self, error: BaseException, attempt: int) -> float:
        """Seconds to wait before the attempt after number ``attempt``."""
        # Jitter spreads retries of tasks that failed together (one outage, many tasks)
        # so they do not hit the recovering backend at the same instant.
        wait = tenacity.wait_exponential_jitter(
            initial=self.base_seconds, max=self.cap_seconds, jitter=self.base_seconds
        )
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        delay = float(wait(state))
        hint = error.retry_after if isinstance(error, TransientError) else None
        return max(delay, hint) if hint is not None else delay


@dataclass(frozen=True)
class TaskPolicy:
    """Everything the scheduler needs to know about how to run one task."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_seconds: float | None = None  # wall clock from the first attempt's start
