"""What a Ray worker runs for one attempt: the task through CrewAI, nothing else.

A worker never touches the run folder. It receives a plain ``RemoteRequest`` (the task,
its agent, the spec, its inputs' answers as context), answers it with a model it built
itself from the driver's settings, and sends back a ``RemoteOutcome``: the answer (or the
error) and, in the order they happened, every model call and model event (a retry, a
fallback) the driver must record. The driver writes files, events and checkpoints.

Models are built once per worker process and reused by its later attempts, since a Ray
worker lives on across tasks of the same job. They have no response cache: the driver
answers whole tasks from its replay cache before submitting, so cache hits never leave
it. Paid calls reserve through the driver's ledger actor (``RemoteLedger``).
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrate.crew.config import AgentConfig, TaskConfig
from orchestrate.errors import BackendError

if TYPE_CHECKING:
    from orchestrate.llm.adapter import CallRecord
    from orchestrate.llm.backend import Backend
    from orchestrate.safety.pricing import Pricing
    from orchestrate.safety.ray_budget import RemoteLedger
    from orchestrate.settings import Settings


@dataclass(frozen=True)
class RemoteRequest:
    """One attempt at one task, everything a worker needs and nothing of the run folder."""

    task_name: str
    attempt: int
    task: TaskConfig
    agent: AgentConfig
    model: str  # the agent's model; its fallbacks come from the settings
    spec_text: str
    context: str
    max_tokens: int
    temperature: float


@dataclass(frozen=True)
class WorkerSetup:
    """How a worker builds its models: the driver's settings, prices and ledger."""

    key: str  # one per driver session: workers rebuild their models when it changes
    settings: Settings
    pricing: Pricing | None = None  # None: no spend guard (the run has none)
    ledger: RemoteLedger | None = None


@dataclass(frozen=True)
class ModelEvent:
    """A retry, a circuit change or a fallback, as (kind, fields) for the event log."""

    kind: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class RemoteOutcome:
    """The answer or the error of one attempt, with what happened on the way."""

    answer: str | None
    reports: list[CallRecord | ModelEvent] = field(default_factory=list)
    error: BaseException | None = None
    worker: str = ""  # host:pid, for logs


_chains: dict[tuple[str, str], Backend] = {}
_chains_lock = threading.Lock()


def run_attempt(request: RemoteRequest, setup: WorkerSetup) -> RemoteOutcome:
    """Run one attempt on this worker; a failure comes back as data, not as a raise."""
    from orchestrate.agents import run_crew_task
    from orchestrate.llm.adapter import OrchestrateLLM

    reports: list[CallRecord | ModelEvent] = []
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        llm = OrchestrateLLM(
            backend=model_chain(request.model, setup),
            task=request.task_name,
            agent=request.task.agent,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            # Cancellation comes from the driver as ray.cancel, which ends this process.
            cancel=threading.Event(),
            on_call=reports.append,
            on_event=lambda kind, fields: reports.append(ModelEvent(kind, dict(fields))),
        )
        answer = run_crew_task(
            request.task,
            request.agent,
            spec_text=request.spec_text,
            context=request.context,
            llm=llm,
        )
    except Exception as exc:  # the driver's retry policy decides what it means
        return RemoteOutcome(None, reports, _portable(exc), worker)
    return RemoteOutcome(answer, reports, None, worker)


def model_chain(model: str, setup: WorkerSetup) -> Backend:
    """The agent's model and its fallbacks, built once per worker process and session."""
    with _chains_lock:
        key = (setup.key, model)
        if key not in _chains:
            _chains[key] = _build_chain(model, setup)
        return _chains[key]


def _build_chain(model: str, setup: WorkerSetup) -> Backend:
    from orchestrate.llm.models import LinkFactory
    from orchestrate.safety.gpu import GpuLeaseManager

    settings = setup.settings
    guard = None
    if setup.pricing is not None and setup.ledger is not None:
        from orchestrate.safety.guards import fallback_factory
        from orchestrate.safety.spend import SpendGuard

        fallback = fallback_factory(settings, setup.pricing)
        guard = SpendGuard(setup.ledger, setup.pricing, fallback=fallback)
    # Leases are per machine: a local model on this node takes this node's leases.
    leases = GpuLeaseManager.from_settings(settings)
    links = LinkFactory(settings, leases=leases, spend_guard=guard, cache=None)
    chain = links.chain(settings.model_chain(model))
    chain.prepare()
    return chain


def _portable(error: Exception) -> BaseException:
    """The error itself when it survives the trip to the driver; else a plain copy."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return BackendError(f"{type(error).__name__}: {error}")
    return error
