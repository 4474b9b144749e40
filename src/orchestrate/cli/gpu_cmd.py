"""`orchestrate gpu`: devices, their leasable memory, and who holds or waits for it."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from orchestrate.cli.common import console, reports_errors

if TYPE_CHECKING:
    from orchestrate.safety.gpu import DeviceCapacity, DeviceLeases


@reports_errors
def gpu(
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """List devices (CPU, CUDA, MPS), their leasable memory and current leases.

    Leases of processes that died are reclaimed before the list is shown.

    Example: orchestrate gpu --json
    """
    from orchestrate.safety.gpu import GpuLeaseManager
    from orchestrate.settings import load_settings

    manager = GpuLeaseManager.from_settings(load_settings())
    devices = sorted(set(detect_devices()) | set(manager.known_devices()))
    rows = [(manager.capacity(device), manager.snapshot(device)) for device in devices]
    if json_output:
        console.print_json(json.dumps([_as_json(cap, leases) for cap, leases in rows]))
        return
    _print_devices(rows)
    _print_leases(rows)


def detect_devices() -> list[str]:
    """The CPU, plus each CUDA device and MPS when torch sees them."""
    devices = ["cpu"]
    import torch

    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _print_devices(rows: list[tuple[DeviceCapacity, DeviceLeases]]) -> None:
    table = Table(header_style="bold", box=None)
    for column in ("device", "total MiB", "leasable MiB", "leased MiB", "waiting", "source"):
        table.add_column(column, justify="right" if "MiB" in column else "left")
    for capacity, leases in rows:
        table.add_row(
            capacity.device,
            str(capacity.total_mib),
            str(capacity.capacity_mib),
            str(leases.held_mib),
            str(len(leases.waiting)),
            capacity.source,
        )
    console.print(table)


def _print_leases(rows: list[tuple[DeviceCapacity, DeviceLeases]]) -> None:
    entries = [(e, "held") for _, leases in rows for e in leases.held]
    entries += [(e, "waiting") for _, leases in rows for e in leases.waiting]
    if not entries:
        console.print("No leases held or requested.")
        return
    table = Table(header_style="bold", box=None)
    for column in ("device", "state", "holder", "pid", "MiB", "priority", "since"):
        table.add_column(column)
    for entry, state in entries:
        since = entry.granted_at if entry.granted_at is not None else entry.requested_at
        table.add_row(
            entry.device,
            state,
            entry.holder,
            f"{entry.pid}{' (this)' if entry.pid == os.getpid() else ''}",
            str(entry.mib),
            str(entry.priority),
            datetime.fromtimestamp(since).strftime("%H:%M:%S"),
        )
    console.print(table)


def _as_json(capacity: DeviceCapacity, leases: DeviceLeases) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        **asdict(capacity),
        "leased_mib": leases.held_mib,
        "held": [asdict(entry) for entry in leases.held],
        "waiting": [asdict(entry) for entry in leases.waiting],
    }
