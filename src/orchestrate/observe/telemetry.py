"""Metrics and traces for one `orchestrate build` or `resume`, from start to end.

``RunTelemetry`` is what the CLI holds: it records into the host's shared metric files
from the moment the command starts (so a crew rejected for a cycle is counted too),
listens to the run's events, serves ``--metrics-port`` while the run lasts, pushes to
``--pushgateway`` when it ends, and flushes the traces.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrate.errors import CrewCycleError, CrewError, UserInputError

if TYPE_CHECKING:
    from orchestrate.build import BuildRun
    from orchestrate.observe.exposition import MetricsServer
    from orchestrate.observe.metrics import Metrics
    from orchestrate.observe.recorder import MetricsRecorder
    from orchestrate.observe.tracing import TraceRecorder
    from orchestrate.safety.gpu import GpuLeaseManager
    from orchestrate.settings import Settings

logger = logging.getLogger(__name__)


class RunTelemetry:
    """The metrics recorder, the optional trace recorder and their exits, for one run."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics_port: int | None = None,
        pushgateway: str | None = None,
        cache_enabled: bool = True,
        warn: Callable[[str], None] = logger.warning,
    ) -> None:
        from orchestrate.observe.metrics import metrics_directory, metrics_for
        from orchestrate.observe.recorder import MetricsRecorder
        from orchestrate.observe.tracing import exporter_from_environment

        self.settings = settings
        self.metrics: Metrics = metrics_for(metrics_directory(settings.home))
        self.recorder: MetricsRecorder = MetricsRecorder(
            self.metrics, currency=settings.currency, cache_enabled=cache_enabled
        )
        self.metrics_port = metrics_port
        self.pushgateway = pushgateway
        self.exporter = exporter_from_environment()
        self.tracer: TraceRecorder | None = None
        self._server: MetricsServer | None = None
        self._warn = warn

    def crew_rejected(self, error: CrewError) -> None:
        reason = "cycle" if isinstance(error, CrewCycleError) else "invalid"
        self.metrics.crews_rejected.labels(reason).inc()

    def watch_leases(self, leases: GpuLeaseManager) -> None:
        """Time every lease grant; the CPU's series exists from the start, at zero."""
        leases.on_granted = self.recorder.lease_granted
        self.metrics.gpu_lease_wait.labels("cpu")

    def attach(self, run: BuildRun, models: list[str]) -> None:
        """Listen to ``run``'s events and report its worker limit; call before it executes."""
        run.events.subscribe(self.recorder.on_event)
        watched = self.recorder.watch_worker_limit(run.guards.worker_limit, run.options.workers)
        run.guards = dataclasses.replace(run.guards, worker_limit=watched)
        self.recorder.note_remote_models(models)
        if self.exporter is not None:
            from orchestrate.observe.tracing import TraceRecorder, tracer_provider

            self.tracer = TraceRecorder(
                tracer_provider(self.exporter),
                max_tokens=run.options.max_tokens,
                temperature=run.options.temperature,
            )
            run.events.subscribe(self.tracer.on_event)

    def __enter__(self) -> RunTelemetry:
        """Start serving ``--metrics-port``: before the run exists, so a busy port costs nothing."""
        if self.metrics_port is not None:
            self._server = self._serve(self.metrics_port)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.pushgateway:
                self._push(self.pushgateway)
            if self.tracer is not None:
                self.tracer.shutdown()
        finally:
            if self._server is not None:
                self._server.__exit__(None, None, None)

    @property
    def metrics_url(self) -> str | None:
        return self._server.url if self._server is not None else None

    def _serve(self, port: int) -> MetricsServer:
        from orchestrate.observe.exposition import MetricsServer, process_registry

        server = MetricsServer(process_registry(self.metrics, self.settings), "127.0.0.1", port)
        try:
            return server.__enter__()
        except OSError as exc:
            raise UserInputError(
                f"--metrics-port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
                f"choose a free port, or 0 for any"
            ) from None

    def _push(self, gateway: str) -> None:
        """Push the run's metrics; a gateway that is down costs a warning, not the run."""
        from orchestrate.observe.exposition import push_metrics, push_registry

        try:
            push_metrics(push_registry(self.metrics), gateway)
        except OSError as exc:
            self._warn(f"could not push metrics to {gateway}: {exc}")
