"""The Prometheus metrics of orchestrate, shared by every process on the machine.

Every `orchestrate` process that does work (a build, a resume, a fine-tune) writes its
metrics into memory-mapped files in ``$ORCHESTRATE_HOME/metrics`` (prometheus_client's
multiprocess mode), so that ``orchestrate metrics serve`` can show the sum of every build
on the host, including those that already ended. Names carry the ``orchestrate_`` prefix
and their base unit; labels are bounded sets (agents, models, devices, reasons), never
run ids or paths.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

TASK_SECONDS_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# A local model on a CPU can take minutes for one answer; a hosted one, a fraction of a second.
MODEL_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
WAIT_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True)
class Metrics:
    """Every metric orchestrate records, registered on one private registry."""

    registry: CollectorRegistry
    directory: Path
    task_duration: Any
    agents_running: Any
    task_input_wait: Any
    task_queue_wait: Any
    ready_tasks: Any
    worker_limit: Any
    model_request_duration: Any
    model_request_failures: Any
    model_retries: Any
    tokens: Any
    cost: Any
    gpu_lease_wait: Any
    task_retries: Any
    task_failures: Any
    cache_hits: Any
    cache_misses: Any
    circuit_breaker_state: Any
    files_written: Any
    secret_findings: Any
    crews_rejected: Any
    checks: Any
    sandbox_limits_hit: Any
    repairs: Any
    runs: Any


_active: dict[Path, Metrics] = {}
_activation_lock = threading.Lock()


def metrics_for(directory: Path) -> Metrics:
    """This process's metrics, written into ``directory`` for `orchestrate metrics serve`.

    prometheus_client decides at import time whether values live in memory or in shared
    files, from ``PROMETHEUS_MULTIPROC_DIR``; the state directory is known only once the
    settings are read, so the choice is made here, before any metric exists.
    """
    directory = directory.resolve()
    with _activation_lock:
        if directory not in _active:
            _active[directory] = _create(directory)
        return _active[directory]


def _create(directory: Path) -> Metrics:
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROCESS_ENV] = str(directory)
    from prometheus_client import CollectorRegistry, values

    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    metrics = _define(registry, directory)
    atexit.register(_forget_live_gauges, directory, os.getpid())
    return metrics


def _define(registry: CollectorRegistry, directory: Path) -> Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, text, labels, registry=registry)

    def histogram(name: str, text: str, labels: tuple[str, ...], buckets: Any) -> Histogram:
        return Histogram(name, text, labels, buckets=buckets, registry=registry)

    def gauge(name: str, text: str, labels: tuple[str, ...], mode: Any) -> Gauge:
        # "live" modes drop a process's values when it ends: a finished build runs nothing.
        return Gauge(name, text, labels, multiprocess_mode=mode, registry=registry)

    prefix = "orchestrate_"
    return Metrics(
        registry=registry,
        directory=directory,
        task_duration=histogram(
            prefix + "task_duration_seconds",
            "Wall-clock time of a task from its start to its end, all attempts included.",
            ("agent", "outcome"),
            TASK_SECONDS_BUCKETS,
        ),
        agents_running=gauge(
            prefix + "agents_running", "Tasks running now, per agent.", ("agent",), "livesum"
        ),
        task_input_wait=histogram(
            prefix + "task_input_wait_seconds",
            "Time from the start of the run until every input of a task was done.",
            ("agent",),
            WAIT_SECONDS_BUCKETS,
        ),
        task_queue_wait=histogram(
            prefix + "task_queue_wait_seconds",
            "Time a ready task waited for a free worker.",
            ("agent",),
            WAIT_SECONDS_BUCKETS,
        ),
        ready_tasks=gauge(
            prefix + "ready_tasks",
            "Tasks whose inputs are done, waiting for a worker.",
            (),
            "livesum",
        ),
        worker_limit=gauge(
            prefix + "worker_limit",
            "Most tasks a build may run at once now (lowered as the budget runs out).",
            (),
            "livemax",
        ),
        model_request_duration=histogram(
            prefix + "model_request_duration_seconds",
            "Time of one call answered by a model (cache hits excluded).",
            ("backend", "model"),
            MODEL_SECONDS_BUCKETS,
        ),
        model_request_failures=counter(
            prefix + "model_request_failures_total",
            "Model calls that failed, after the call's own retries.",
            ("backend", "model", "reason"),
        ),
        model_retries=counter(
            prefix + "model_retries_total",
            "Model calls tried again after a timeout, rate limit or server error.",
            ("backend", "model"),
        ),
        tokens=counter(
            prefix + "tokens_total",
            "Tokens sent to (input) and generated by (output) models.",
            ("agent", "model", "direction"),
        ),
        cost=counter(
            prefix + "cost_total",
            "Money spent on paid model calls, in the budget's currency.",
            ("agent", "model", "currency"),
        ),
        gpu_lease_wait=histogram(
            prefix + "gpu_lease_wait_seconds",
            "Time a local inference or fine-tune waited for its device-memory lease.",
            ("device",),
            WAIT_SECONDS_BUCKETS,
        ),
        task_retries=counter(
            prefix + "task_retries_total",
            "Task attempts that failed and will be tried again.",
            ("agent", "reason"),
        ),
        task_failures=counter(
            prefix + "task_failures_total", "Tasks that failed for good.", ("agent", "reason")
        ),
        cache_hits=counter(
            prefix + "cache_hits_total", "Model calls answered from the response cache.", ("model",)
        ),
        cache_misses=counter(
            prefix + "cache_misses_total",
            "Model calls the response cache could not answer (while it was on).",
            ("model",),
        ),
        circuit_breaker_state=gauge(
            prefix + "circuit_breaker_state",
            "Circuit breaker of a remote model: 0 closed, 1 half-open, 2 open.",
            ("model",),
            "livemax",
        ),
        files_written=counter(
            prefix + "files_written_total", "Generated files written into outputs.", ("agent",)
        ),
        secret_findings=counter(
            prefix + "secret_findings_total",
            "Secrets found in generated files, by kind and what was done.",
            ("kind", "action"),
        ),
        crews_rejected=counter(
            prefix + "crews_rejected_total",
            "Crew files refused before a run (a cycle, or invalid).",
            ("reason",),
        ),
        checks=counter(
            prefix + "checks_total",
            "Rounds of sandboxed checks of generated projects, by kind and outcome.",
            ("kind", "status"),
        ),
        sandbox_limits_hit=counter(
            prefix + "sandbox_limits_hit_total",
            "Sandboxed checks stopped or refused by a limit (cpu time, wall time, processes...).",
            ("limit",),
        ),
        repairs=counter(
            prefix + "repairs_total",
            "Repair rounds after failing checks, by agent and whether they wrote files.",
            ("agent", "outcome"),
        ),
        runs=counter(prefix + "runs_total", "Runs that ended, by status.", ("status",)),
    )


def _forget_live_gauges(directory: Path, pid: int) -> None:
    """A process that ends runs nothing: drop its "live" gauges from the shared files."""
    from prometheus_client import multiprocess

    if pid == os.getpid():
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def metrics_directory(home: Path) -> Path:
    """The folder of shared metric files under the state directory ``home``."""
    return home / "metrics"
