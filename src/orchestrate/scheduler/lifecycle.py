"""The states a task moves through during a run."""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    PENDING = "pending"  # some of its inputs are not done yet
    READY = "ready"  # every input succeeded; waiting for a free worker
    RUNNING = "running"  # a worker is executing it
    RETRYING = "retrying"  # an attempt failed transiently; waiting out the backoff
    SUCCEEDED = "succeeded"  # finished with an answer
    FAILED = "failed"  # failed for good (or timed out); its dependents are skipped
    SKIPPED = "skipped"  # never ran because an input failed
    CANCELLED = "cancelled"  # the run was interrupted before or while it ran

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED}
)
