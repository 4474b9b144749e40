"""Exceptions raised by orchestrate.

Every error a user can cause or fix derives from ``OrchestrateError``; the CLI catches
that root once, prints its message on one line and exits with ``exit_code``::

    OrchestrateError                 exit 1: the run itself went wrong
    ├── UserInputError               exit 2: bad input, fixable by the user
    │   ├── SettingsError            a setting or flag has a bad value
    │   ├── SpecError                the spec is empty, missing or unreadable
    │   ├── CrewError                the crew file is invalid (keys, agents, contexts)
    │   │   └── CrewCycleError       its contexts form a cycle
    │   ├── ModelNotFoundError       a model name or path does not resolve
    │   ├── RunNotFoundError         no run matches the id given
    │   └── RunInUseError            another process is running or resuming that run
    ├── BackendError                 a model backend failed while answering (not retried)
    │   └── TransientError           worth retrying: the same request may succeed later
    │       ├── BackendTimeoutError  the backend did not answer in time
    │       ├── RateLimitedError     the backend asked us to slow down (may say how long)
    │       ├── ServerError          the backend failed on its side (HTTP 5xx)
    │       ├── UnparseableOutputError  the answer could not be used (empty, malformed)
    │       └── WorkerLostError      the Ray worker or node running the task died under it
    ├── TaskTimeoutError             a task ran past its wall-clock limit
    ├── RemoteTaskError              Ray could not run a task's code (not retried)
    ├── WriteRefusedError            a generated file was not written
    │   ├── UnsafePathError          its path or content could leave or harm the workspace
    │   └── SecretFoundError         it holds a secret and secrets are refused
    ├── BudgetExceeded               a paid call does not fit today's remaining budget
    ├── GpuLeaseError                a device lease cannot be granted
    │   ├── LeaseTooLargeError       the request exceeds the device's whole capacity
    │   └── LeaseTimeoutError        the wait for free capacity ran past its timeout
    └── TaskCancelledError           the run is being cancelled (Ctrl-C, SIGTERM)

Only ``TransientError`` is retried: a bad setting, a missing model or a bug would fail
the same way again, so retrying it only costs time and money.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class OrchestrateError(Exception):
    """Root of every error orchestrate reports to users."""

    exit_code = 1


class UserInputError(OrchestrateError):
    """The user gave input we cannot use; the message says how to fix it."""

    exit_code = 2


class SettingsError(UserInputError):
    """A setting, environment variable or flag has a bad value."""


class SpecError(UserInputError):
    """The spec is empty, missing or unreadable."""


class CrewError(UserInputError):
    """The crew file is invalid."""


class CrewCycleError(CrewError):
    """The crew's contexts form a cycle, so no task order exists."""


class ModelNotFoundError(UserInputError):
    """A model name or path does not resolve to something we can load."""


class RunNotFoundError(UserInputError):
    """No run in the runs folder matches the id given."""


class RunInUseError(UserInputError):
    """Another live process holds the run (it is running or being resumed)."""


class BackendError(OrchestrateError):
    """A model backend failed while producing an answer."""


class TransientError(BackendError):
    """A failure that may go away on its own; it is retried with backoff.

    ``retry_after`` is the backend's own hint, in seconds, of when to try again.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BackendTimeoutError(TransientError):
    """The backend did not answer in time."""


class RateLimitedError(TransientError):
    """The backend refused the request for now (HTTP 429)."""


class BackendUnavailableError(TransientError):
    """The backend could not be reached, or dropped the connection."""


class CircuitOpenError(TransientError):
    """Recent calls to this backend kept failing, so it is not asked until it cools down."""


class AllBackendsFailedError(TransientError):
    """Every model of the fallback chain failed this call."""


class ServerError(TransientError):
    """The backend failed on its side (an HTTP 5xx or a crashed server)."""


class MalformedReplyError(ServerError):
    """The server's reply was cut short or is not valid JSON: it may have generated it."""


class UnparseableOutputError(TransientError):
    """The answer came back but cannot be used (empty, or cut off mid-file)."""


class WorkerLostError(TransientError):
    """The Ray worker process or node running an attempt died; another may finish it."""


class BackendRefusedError(BackendError):
    """The backend answered that the request itself is wrong: retrying will not help."""


class TaskTimeoutError(OrchestrateError):
    """A task ran longer than its wall-clock limit and was cancelled."""


class RemoteTaskError(OrchestrateError):
    """Ray could not run a task's code on the cluster (it failed to load or to return)."""


class WriteRefusedError(OrchestrateError):
    """A generated file was refused; the message says why and nothing was written."""


class UnsafePathError(WriteRefusedError):
    """A generated path (or its content) was refused: it could leave or harm the workspace."""


class SecretFoundError(WriteRefusedError):
    """The content holds a secret and the secret mode is ``refuse``."""

    def __init__(self, message: str, findings: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.findings = findings  # SecretFinding records: kind and line, never the value


class BudgetExceeded(OrchestrateError):  # noqa: N818 - the name the issue and users know
    """A paid model call does not fit in what is left of today's budget."""


class GpuLeaseError(OrchestrateError):
    """A lease on a device's memory cannot be granted."""


class LeaseTooLargeError(GpuLeaseError):
    """The request is larger than the device's whole capacity; waiting cannot help."""


class LeaseTimeoutError(GpuLeaseError):
    """The wait for capacity ran past the timeout; the message names the holders."""


class TaskCancelledError(OrchestrateError):
    """Raised inside a task when the run is being cancelled."""

    exit_code = 130


def describe_validation_error(exc: ValidationError, *, env_prefix: str | None = None) -> str:
    """Turn pydantic's multi-line report into one line naming each bad key.

    With ``env_prefix`` the keys are named as environment variables (ORCHESTRATE_WORKERS)
    and the rejected value is shown, since a setting's value is short.
    """
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "top level"
        if error["type"] == "extra_forbidden":
            problem = "unknown key (check its spelling)"
        elif error["type"] == "missing":
            problem = "required key is missing"
        else:
            problem = error["msg"]
        if env_prefix is not None:
            where = f"{env_prefix}{where.upper()}"
            problem = f"{problem} (got {error.get('input')!r})"
        problems.append(f"{where}: {problem}")
    return "; ".join(problems)


def failure_kind(reason: str | None) -> str:
    """A short, bounded name for why something failed, fit for a metric label.

    ``reason`` is a ``Type: message`` line (see ``scheduler.executor.describe_error``).
    Our own error types become their snake_case name without ``Error``
    (``RateLimitedError`` -> ``rate_limited``); anything else is ``internal``, so a
    label never holds free text.
    """
    if not reason:
        return "unknown"
    if reason.startswith("timed out"):
        return "task_timeout"
    name = reason.split(":", 1)[0].strip()
    error_type = globals().get(name)
    if not (isinstance(error_type, type) and issubclass(error_type, OrchestrateError)):
        return "internal"
    stem = name.removesuffix("Error") or name
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in stem).lstrip("_")
