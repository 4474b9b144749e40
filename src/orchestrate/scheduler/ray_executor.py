"""Carry out a build's attempts as Ray tasks, keeping the one scheduler on the driver.

``DagExecutor`` still decides what runs when (priority, the worker limit as a cap on
tasks in flight, retries with backoff, timeouts, cancellation, fail-fast) and commits
each result on its scheduling thread. Only how an attempt is carried out changes: the
worker thread that would have run the model here submits one Ray task instead, waits for
it and hands its answer back, so everything after (events, tokens, files, checkpoint)
happens on the driver exactly as for a local run.

Each Ray task runs with ``max_retries=0``: whether to try again is our retry policy's
call, and a worker or node that died mid-task surfaces as ``WorkerLostError``, a
transient error the policy retries like any other. Cancelling an attempt force-kills
its worker process, since nothing else interrupts a model call in another process.
Importing this module does not import ray.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrate.errors import (
    RemoteTaskError,
    SettingsError,
    TaskCancelledError,
    WorkerLostError,
)
from orchestrate.scheduler.ray_resources import largest_lease, task_resources
from orchestrate.scheduler.ray_tasks import (
    ModelEvent,
    RemoteOutcome,
    RemoteRequest,
    WorkerSetup,
    run_attempt,
)

if TYPE_CHECKING:
    from orchestrate.llm.adapter import CallRecord
    from orchestrate.llm.backend import Backend
    from orchestrate.llm.models import ModelRouter
    from orchestrate.safety.guards import SafetyGuards
    from orchestrate.scheduler.executor import TaskAttempt
    from orchestrate.settings import Settings

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'unified-orchestrator[ray]'"
PROBE_SECONDS = 5.0  # ray.init waits minutes for an address nobody answers on
_WAIT_SECONDS = 0.1  # how often a waiting attempt looks at its cancel flag

Report = Callable[["CallRecord | ModelEvent"], None]


def connect_ray(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (None: start a local one), or say why not."""
    try:
        import ray
    except ImportError:
        raise SettingsError(
            f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    if address:
        _probe(address)
    if ray.is_initialized():  # a caller that set Ray up itself (a test, a notebook)
        _keep_stdout_clean()
        return
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,  # workers' output would tear through the live table
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "on this machine"
        raise SettingsError(
            f"cannot start or join a Ray cluster {where}: {_first_line(exc)}"
        ) from None
    _keep_stdout_clean()


def _keep_stdout_clean() -> None:
    """Send the raylet's messages ("a worker died...") to stderr instead of stdout.

    Ray prints them on the driver's stdout whatever ``log_to_driver`` says, and stdout
    carries ``--json``'s result; the event log records the same failure anyway.
    """
    from ray._private import worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "orchestrate_redirect", False):
        return  # a Ray that prints elsewhere, or already redirected

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        printer({**data, "is_err": True}, ignore_prefix)

    to_stderr.orchestrate_redirect = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def _probe(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at a host:port address."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself, quickly
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_SECONDS):
            pass
    except OSError as exc:
        raise SettingsError(
            f"cannot reach the Ray cluster at {address} (--ray-address): {exc}"
        ) from None


class RayTasks:
    """Runs attempts as Ray tasks; what the build's worker threads call instead of a model."""

    def __init__(self, setup: WorkerSetup, resources: dict[str, dict[str, Any]]) -> None:
        import ray

        self._setup = setup
        self._resources = resources  # Ray options per agent model
        self._remote = ray.remote(max_retries=0)(run_attempt)

    def run(self, attempt: TaskAttempt, request: RemoteRequest, report: Report) -> str:
        """Run ``request`` on the cluster; report its model calls, then answer or raise."""
        options = self._resources.get(request.model, {})
        ref = self._remote.options(**options).remote(request, self._setup)
        outcome = wait_for(ref, attempt)
        if not isinstance(outcome, RemoteOutcome):
            raise RemoteTaskError(f"a Ray task returned {type(outcome).__name__}")
        logger.debug("%s attempt %s ran on %s", request.task_name, attempt.number, outcome.worker)
        for item in outcome.reports:
            report(item)
        if outcome.error is not None:
            raise outcome.error
        return outcome.answer or ""


def wait_for(ref: Any, attempt: TaskAttempt) -> Any:
    """The Ray task's return value; cancels it when the attempt is told to stop."""
    import ray

    while True:
        ready, _ = ray.wait([ref], timeout=_WAIT_SECONDS)
        if ready:
            try:
                return ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise task_error(exc) from exc
        if attempt.cancel.is_set():
            ray.cancel(ref, force=True)
            raise TaskCancelledError("the task was told to stop; its Ray task was cancelled")


def task_error(error: BaseException) -> BaseException:
    """Our error for a Ray failure: a lost worker or node is worth another attempt."""
    import ray.exceptions as rex

    lost = (
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.OutOfMemoryError,
        rex.ObjectLostError,
        rex.LocalRayletDiedError,
    )
    if isinstance(error, lost):
        return WorkerLostError(f"the Ray worker running it died ({_first_line(error)})")
    if isinstance(error, rex.TaskCancelledError):
        return TaskCancelledError("its Ray task was cancelled")
    return RemoteTaskError(f"Ray could not run it: {_first_line(error)}")


def open_ray_tasks(settings: Settings, router: ModelRouter, guards: SafetyGuards) -> RayTasks:
    """Everything the cluster needs for this build: the ledger actor, resources per model."""
    import ray

    pricing = guards.spend_guard.pricing if guards.spend_guard is not None else None
    ledger = None
    if pricing is not None and not all(pricing.price_of(m).is_free for m in router.models):
        from orchestrate.safety.guards import open_ledger
        from orchestrate.safety.ray_budget import start_ledger_keeper

        ledger = start_ledger_keeper(open_ledger(settings))
    setup = WorkerSetup(uuid.uuid4().hex, settings, pricing if ledger else None, ledger)
    totals = ray.cluster_resources()  # type: ignore[no-untyped-call]
    cluster = {name: float(amount) for name, amount in totals.items()}
    resources = {
        model: task_resources(local_lease_mib(chain), cluster)
        for model, chain in router.chains.items()
    }
    return RayTasks(setup, resources)


def local_lease_mib(backend: Backend) -> int | None:
    """The largest device lease a local model of ``backend``'s chain takes; None: none."""
    from orchestrate.llm.backend import BackendLayer, parse_model_name
    from orchestrate.llm.resilience import FallbackChain

    if isinstance(backend, FallbackChain):
        return largest_lease(local_lease_mib(link) for link in backend.links)
    if isinstance(backend, BackendLayer):
        return local_lease_mib(backend.inner)
    if parse_model_name(backend.name)[0] != "embedded":
        return None
    from orchestrate.llm.embedded import EmbeddedBackend

    return backend.lease_mib if isinstance(backend, EmbeddedBackend) else None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
