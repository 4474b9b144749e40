"""OpenTelemetry traces of a run, following the GenAI semantic conventions.

Off unless the standard variables ask for it: ``OTEL_TRACES_EXPORTER`` (``otlp``,
``console``, or any exporter installed under OpenTelemetry's entry points), or an
``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``, which implies ``otlp``. The exporter reads
its own ``OTEL_EXPORTER_OTLP_*`` settings, and ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` describe the service.

A run gives one tree: ``invoke_workflow`` for the run, an ``invoke_agent`` span per task
under it, and a ``chat`` span per model call under its task. Spans are made from the
run's events (like the metrics), with the times those events report, so tracing adds
nothing to the path of a task or a model call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from orchestrate.errors import SettingsError
from orchestrate.observe.recorder import split_model
from orchestrate.store.events import Event, EventType

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

logger = logging.getLogger(__name__)

SERVICE_NAME = "orchestrate"
WORKFLOW_NAME = "orchestrate build"
_EXPORTER_ALIASES = {"otlp": "otlp_proto_http"}  # the SDK's default protocol is HTTP


def exporter_from_environment() -> SpanExporter | None:
    """The span exporter the ``OTEL_*`` variables name, or None when tracing is off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not names and _otlp_endpoint_set():
        names = "otlp"
    chosen = [name.strip() for name in names.split(",") if name.strip() not in ("", "none")]
    if not chosen:
        return None
    if len(chosen) > 1:
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER={names}: orchestrate sends traces to one exporter"
        )
    return _load_exporter(chosen[0])


def _otlp_endpoint_set() -> bool:
    return any(
        os.environ.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _load_exporter(name: str) -> SpanExporter:
    from importlib.metadata import entry_points

    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        name = "otlp_proto_grpc" if protocol == "grpc" else _EXPORTER_ALIASES[name]
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group="opentelemetry_traces_exporter"))
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER names '{name}', which is not installed; "
            f"use one of: otlp, {', '.join(known)}"
        )
    exporter: SpanExporter = next(iter(found)).load()()
    return exporter


def tracer_provider(exporter: SpanExporter) -> TracerProvider:
    """A provider of our own (not the global one, which CrewAI may also touch)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class TraceRecorder:
    """An event listener that turns a run's events into a span tree."""

    def __init__(self, provider: TracerProvider, *, max_tokens: int, temperature: float) -> None:
        from orchestrate import __version__

        self.provider = provider
        self._tracer = provider.get_tracer("orchestrate", __version__)
        self._request = {
            "gen_ai.request.max_tokens": max_tokens,
            "gen_ai.request.temperature": temperature,
        }
        self._run: Span | None = None
        self._tasks: dict[str, Span] = {}
        self._usage: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def on_event(self, event: Event) -> None:
        kind = event.get("type")
        with self._lock:
            if kind in (EventType.RUN_STARTED, EventType.RUN_RESUMED):
                self._start_run(event)
            elif kind == EventType.TASK_STATE:
                self._task_state(event)
            elif kind == EventType.LLM_CALL:
                self._model_call(event)
            elif kind == EventType.RUN_FINISHED:
                self._finish_run(event)

    def shutdown(self) -> None:
        """Send what is buffered; called once the run has ended."""
        self.provider.shutdown()

    def _start_run(self, event: Event) -> None:
        attributes = {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.workflow.name": WORKFLOW_NAME,
            "orchestrate.run.id": str(event.get("run")),
            "orchestrate.spec.title": str(event.get("spec")),
            "orchestrate.workers": int(event.get("workers") or 0),
            "orchestrate.resumed": event.get("type") == EventType.RUN_RESUMED,
            **_model_attributes(str(event.get("model"))),
        }
        self._run = self._tracer.start_span(
            f"invoke_workflow {WORKFLOW_NAME}", attributes=attributes
        )

    def _task_state(self, event: Event) -> None:
        from opentelemetry.trace import StatusCode

        name, state = event["task"], event["state"]
        if state == "running" and name not in self._tasks:
            self._tasks[name] = self._start_task(name, str(event.get("agent")))
        elif state in ("succeeded", "failed", "cancelled") and name in self._tasks:
            span = self._tasks.pop(name)
            input_tokens, output_tokens = self._usage.pop(name, [0, 0])
            span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
            span.set_attribute("orchestrate.task.outcome", state)
            if state != "succeeded":
                span.set_attribute("error.type", _error_type(event.get("reason"), state))
                span.set_status(StatusCode.ERROR, str(event.get("reason") or state))
            span.end()

    def _start_task(self, task: str, agent: str) -> Span:
        from opentelemetry import trace

        parent = trace.set_span_in_context(self._run) if self._run is not None else None
        attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "orchestrate.task": task,
        }
        return self._tracer.start_span(
            f"invoke_agent {agent}", context=parent, attributes=attributes
        )

    def _model_call(self, event: Event) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, StatusCode

        task = str(event.get("task"))
        owner = self._tasks.get(task) or self._run
        parent = trace.set_span_in_context(owner) if owner is not None else None
        usage = self._usage.setdefault(task, [0, 0])
        usage[0] += int(event.get("prompt_tokens") or 0)
        usage[1] += int(event.get("completion_tokens") or 0)
        ended = time.time_ns()
        started = ended - int(float(event.get("seconds") or 0) * 1e9)
        attributes = {
            "gen_ai.operation.name": "chat",
            **_model_attributes(str(event.get("model"))),
            **self._request,
            "gen_ai.agent.name": str(event.get("agent")),
            "gen_ai.usage.input_tokens": int(event.get("prompt_tokens") or 0),
            "gen_ai.usage.output_tokens": int(event.get("completion_tokens") or 0),
            "orchestrate.cached": bool(event.get("cached")),
            "orchestrate.task": task,
        }
        model = attributes["gen_ai.request.model"]
        span = self._tracer.start_span(
            f"chat {model}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=started,
        )
        if event.get("error"):
            span.set_attribute("error.type", _error_type(event["error"], "error"))
            span.set_status(StatusCode.ERROR, str(event["error"]))
        span.end(end_time=ended)

    def _finish_run(self, event: Event) -> None:
        from opentelemetry.trace import StatusCode

        for span in self._tasks.values():  # tasks the run left behind (interrupted)
            span.set_attribute("orchestrate.task.outcome", "abandoned")
            span.end()
        self._tasks.clear()
        if self._run is None:
            return
        status = str(event.get("status"))
        self._run.set_attribute("orchestrate.run.status", status)
        self._run.set_attribute("gen_ai.usage.input_tokens", int(event.get("prompt_tokens") or 0))
        self._run.set_attribute(
            "gen_ai.usage.output_tokens", int(event.get("completion_tokens") or 0)
        )
        if status != "succeeded":
            self._run.set_status(StatusCode.ERROR, str(event.get("failure") or status))
        self._run.end()
        self._run = None


def _model_attributes(model: str) -> dict[str, Any]:
    backend, label = split_model(model)
    name = label.partition(":")[2] or label
    # gen_ai.system is the attribute's name before semantic conventions 1.37; many
    # trace viewers still read it.
    return {"gen_ai.provider.name": backend, "gen_ai.system": backend, "gen_ai.request.model": name}


def _error_type(reason: Any, fallback: str) -> str:
    text = str(reason or "")
    head = text.split(":", 1)[0].strip()
    return head if head and " " not in head else fallback
