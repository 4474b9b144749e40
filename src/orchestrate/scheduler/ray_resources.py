"""What each task asks Ray for, from the device lease its model takes.

A local model holds a lease of ``lease_mib`` while it generates (see safety/gpu.py), so
its task asks Ray for that much of a GPU: exactly, as the custom resource
``gpu_memory_mib``, when the cluster's nodes advertise it, and as a share of one GPU
(``num_gpus``) sized from that memory per GPU; a whole GPU when the memory per GPU is
unknown, so tasks never crowd a device. On a cluster without GPUs the model computes on
a CPU and takes a whole one. A task whose models are remote (or scripted) only waits on
the network, so it takes a small share of a CPU and many fit on a node.

The leases themselves still apply on every node: Ray's accounting decides where a task
runs, the node's lease file guards what the process may really use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

GPU_MEMORY_RESOURCE = "gpu_memory_mib"
WAITING_CPUS = 0.25  # a task that only waits on a remote model
COMPUTING_CPUS = 1.0  # a task whose model computes on this node


def task_resources(lease_mib: int | None, cluster: Mapping[str, float]) -> dict[str, Any]:
    """Ray task options for a task whose model leases ``lease_mib`` (None: no local model)."""
    if lease_mib is None:
        return {"num_cpus": WAITING_CPUS}
    gpus = float(cluster.get("GPU", 0.0))
    if gpus <= 0:
        return {"num_cpus": COMPUTING_CPUS}
    options: dict[str, Any] = {"num_cpus": COMPUTING_CPUS, "num_gpus": 1.0}
    advertised = float(cluster.get(GPU_MEMORY_RESOURCE, 0.0))
    if advertised > 0:
        options["num_gpus"] = gpu_share(lease_mib, advertised / gpus)
        options["resources"] = {GPU_MEMORY_RESOURCE: float(lease_mib)}
    return options


def gpu_share(lease_mib: int, mib_per_gpu: float) -> float:
    """The fraction of one GPU a lease fills, rounded up to a hundredth, at most 1."""
    if mib_per_gpu <= 0:
        return 1.0
    return min(1.0, max(0.01, math.ceil(lease_mib / mib_per_gpu * 100) / 100))


def largest_lease(leases: Iterable[int | None]) -> int | None:
    """The lease a task must be able to hold: its chain's largest (any link may answer)."""
    known = [mib for mib in leases if mib is not None]
    return max(known) if known else None
