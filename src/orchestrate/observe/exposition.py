"""Where metrics go: an HTTP endpoint for Prometheus, or a push to a Pushgateway.

Two registries serve two audiences. A running build serves (``--metrics-port``) and
pushes (``--pushgateway``) its own process's metrics. ``orchestrate metrics serve``
sums the shared files of every process on the host, dead ones included for counters
and histograms, so a finished build's totals stay visible. Both add the machine-wide
state that lives outside any process: today's budget and the device leases, read
from their SQLite files at each scrape.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from orchestrate.safety.gpu import MIB

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from orchestrate.observe.metrics import Metrics
    from orchestrate.settings import Settings

logger = logging.getLogger(__name__)

PUSH_JOB = "orchestrate_build"
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


class MachineStateCollector:
    """Today's budget and the device leases, as gauges read when Prometheus scrapes."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def describe(self) -> list[Metric]:
        return []  # nothing to read at registration; the state is read per scrape

    def collect(self) -> Iterator[Metric]:
        yield from self._budget()
        yield from self._leases()

    def _budget(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        from orchestrate.safety.guards import open_ledger

        today = open_ledger(self._settings).today()
        for name, value, text in (
            ("limit", today.budget, "Today's budget for paid model calls (UTC day)."),
            ("spent", today.spent, "Money spent today, settled calls and dead reservations."),
            ("reserved", today.reserved, "Money held by paid calls in flight."),
            ("remaining", today.remaining, "What is left of today's budget."),
        ):
            family = GaugeMetricFamily(f"orchestrate_budget_{name}", text, labels=["currency"])
            family.add_metric([today.currency], value)
            yield family

    def _leases(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        from orchestrate.safety.gpu import GpuLeaseManager

        manager = GpuLeaseManager.from_settings(self._settings)
        capacity = GaugeMetricFamily(
            "orchestrate_gpu_capacity_bytes",
            "Device memory that leases may hold (total minus the safety margin).",
            labels=["device"],
        )
        reserved = GaugeMetricFamily(
            "orchestrate_gpu_lease_reserved_bytes",
            "Device memory held by leases now, all processes together.",
            labels=["device"],
        )
        for device in sorted({"cpu", *manager.known_devices()}):
            capacity.add_metric([device], manager.capacity(device).capacity_mib * MIB)
            reserved.add_metric([device], manager.snapshot(device).held_mib * MIB)
        yield capacity
        yield reserved


class HostCollector:
    """Every process's metrics from the shared files, after dropping dead processes' gauges.

    A process that ends normally removes its "live" gauges itself; one killed by SIGKILL
    cannot, so its agents would look busy forever. Counters and histograms of dead
    processes stay: they are what happened.
    """

    def __init__(self, directory: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)  # a fresh state directory has none yet
        self._files = MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for path in self.directory.glob("gauge_live*.db"):
            match = _LIVE_GAUGE_FILE.search(path.name)
            if match and not psutil.pid_exists(int(match.group(1))):
                path.unlink(missing_ok=True)
        yield from self._files.collect()  # type: ignore[no-untyped-call]


def host_registry(settings: Settings) -> CollectorRegistry:
    """What `orchestrate metrics serve` exposes: the sum over every process on the host."""
    from prometheus_client import CollectorRegistry

    from orchestrate.observe.metrics import metrics_directory

    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(metrics_directory(settings.home)))
    registry.register(MachineStateCollector(settings))
    return registry


def process_registry(metrics: Metrics, settings: Settings) -> CollectorRegistry:
    """What a build serves and pushes: its own metrics plus the machine's budget and leases."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Union(metrics.registry))
    registry.register(MachineStateCollector(settings))
    return registry


def push_registry(metrics: Metrics) -> CollectorRegistry:
    """What a build pushes when it ends: its counters and histograms, what happened.

    Gauges are left out: the Pushgateway keeps a push until the next one, so a gauge
    pushed at the end (agents running, a breaker's state, the budget) would be shown as
    the present long after it stopped being true.
    """
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Union(metrics.registry, types=("counter", "histogram")))
    return registry


class _Union:
    """Another registry's metrics (of some types only), collected through this one."""

    def __init__(self, inner: CollectorRegistry, types: tuple[str, ...] | None = None) -> None:
        self._inner = inner
        self._types = types

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            if self._types is None or family.type in self._types:
                yield family


class MetricsServer:
    """An HTTP endpoint (``/metrics``) on a thread, for as long as the ``with`` block lasts."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry, self.host, self.port = registry, host, port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MetricsServer:
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(self.port, self.host, self.registry)
        self.port = self._server.server_port  # the real one when 0 asked for any free port
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}/metrics"


def push_metrics(registry: CollectorRegistry, gateway: str, **grouping: str) -> None:
    """Push a finished batch job's metrics to a Pushgateway, replacing its previous push."""
    from prometheus_client import push_to_gateway

    key = {"instance": socket.gethostname(), **grouping}
    push_to_gateway(gateway, job=PUSH_JOB, registry=registry, grouping_key=key, timeout=10)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
