"""Leases on a device's memory (CUDA, MPS or CPU), shared by every process on the machine.

Every local-model generation and every fine-tune holds a lease: who, which device, how
many MiB, and an optional priority. A lease is a context manager, released on any exit.

The leases of every device live in one SQLite file, ``<state>/gpu/leases.sqlite3``
(WAL), one row of state per device, read and rewritten only inside a ``BEGIN
IMMEDIATE`` transaction, which excludes every other writer on the machine and survives
a crash of the process holding it. A request joins a queue; only the head of the queue
(highest priority, then first come) may take memory, so a large request is not starved
by a stream of small ones. Entries whose process is gone (its pid missing, or reused
by a process started later) are dropped at every look, so a holder killed with SIGKILL
never leaks its lease.

Capacity: CUDA's total memory from ``torch.cuda.mem_get_info``, MPS's
``torch.mps.recommended_max_memory``, the CPU's a setting (default: a share of RAM),
each minus a safety margin. Memory used by programs that take no lease is not seen.
Where torch allows it, a process is capped to what its leases hold
(``set_per_process_memory_fraction``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from orchestrate.errors import GpuLeaseError, LeaseTimeoutError, LeaseTooLargeError
from orchestrate.safety.budget import process_alive
from orchestrate.store.sqlite import connect_shared

logger = logging.getLogger(__name__)

MIB = 1024**2
POLL_SECONDS = (0.001, 0.01)  # first and longest pause between looks at the queue
ALIVE_CACHE_SECONDS = 0.1  # how long another process's liveness check is trusted


@dataclass(frozen=True)
class DeviceCapacity:
    device: str
    total_mib: int  # what the device (or the CPU setting) offers
    capacity_mib: int  # leasable: total minus the safety margin
    source: str  # where the total came from


@dataclass(frozen=True)
class LeaseEntry:
    """One lease or one waiting request, as stored in the device's state file."""

    id: str
    holder: str
    device: str
    mib: int
    priority: int
    pid: int
    pid_started: float
    seq: int
    requested_at: float  # wall clock (time.time), for people reading `orchestrate gpu`
    granted_at: float | None = None


@dataclass(frozen=True)
class DeviceLeases:
    """A device's leases and waiting requests, after dead processes' entries were dropped."""

    device: str
    held: tuple[LeaseEntry, ...]
    waiting: tuple[LeaseEntry, ...]

    @property
    def held_mib(self) -> int:
        return sum(entry.mib for entry in self.held)


def normalise_device(device: str) -> str:
    """'cuda' -> 'cuda:0'; 'cpu', 'mps' and 'cuda:N' stay as they are."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        return f"cuda:{int(index or 0)}"
    if kind in ("cpu", "mps") and not index:
        return kind
    raise GpuLeaseError(f"unknown device '{device}': use cpu, mps, cuda or cuda:N")


def measure_capacity(
    device: str, *, margin_mib: int, cpu_capacity_mib: int | None, cpu_ram_share: float
) -> DeviceCapacity:
    """The leasable memory of a device; imports torch only for CUDA and MPS."""
    device = normalise_device(device)
    if device == "cpu":
        if cpu_capacity_mib is not None:
            total, source = cpu_capacity_mib, "ORCHESTRATE_CPU_CAPACITY_MIB"
        else:
            total = int(psutil.virtual_memory().total * cpu_ram_share) // MIB
            source = f"{cpu_ram_share:.0%} of RAM (psutil)"
    elif device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise GpuLeaseError("no MPS device on this machine")
        total, source = int(torch.mps.recommended_max_memory()) // MIB, "recommended_max_memory"
    else:
        import torch

        index = int(device.partition(":")[2])
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise GpuLeaseError(f"no CUDA device {device} on this machine")
        _, total_bytes = torch.cuda.mem_get_info(index)
        total, source = int(total_bytes) // MIB, "torch.cuda.mem_get_info"
    return DeviceCapacity(device, total, max(0, total - margin_mib), source)


class GpuLease:
    """A granted lease; leaving the ``with`` block (or ``release()``) gives it back."""

    def __init__(self, manager: GpuLeaseManager, entry: LeaseEntry) -> None:
        self.manager = manager
        self.entry = entry
        self.released = False

    @property
    def device(self) -> str:
        return self.entry.device

    @property
    def mib(self) -> int:
        return self.entry.mib

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.manager.release(self)

    def __enter__(self) -> GpuLease:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class GpuLeaseManager:
    """Grants device memory first come, first served, across all processes."""

    def __init__(
        self,
        state_dir: Path,
        *,
        capacity: Callable[[str], DeviceCapacity],
        timeout: float = 600.0,
    ) -> None:
        self.folder = state_dir / "gpu"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "leases.sqlite3"
        self._measure = capacity
        self._capacities: dict[str, DeviceCapacity] = {}
        self.timeout = timeout
        self._lock = threading.Lock()
        self._db_lock = threading.Lock()  # one transaction at a time on this connection
        self._db: sqlite3.Connection | None = None
        self._db_pid = 0
        # Told (device, seconds waited) at each grant; the metrics recorder listens here.
        self.on_granted: Callable[[str, float], None] | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> GpuLeaseManager:
        """The machine's lease manager, configured by ``Settings``."""

        def capacity(device: str) -> DeviceCapacity:
            return measure_capacity(
                device,
                margin_mib=settings.gpu_safety_margin_mib,
                cpu_capacity_mib=settings.cpu_capacity_mib,
                cpu_ram_share=settings.cpu_ram_share,
            )

        return cls(settings.home, capacity=capacity, timeout=settings.lease_timeout)

    def capacity(self, device: str) -> DeviceCapacity:
        device = normalise_device(device)
        with self._lock:
            if device not in self._capacities:
                self._capacities[device] = self._measure(device)
            return self._capacities[device]

    def lease(
        self, holder: str, device: str, mib: int, *, priority: int = 0, timeout: float | None = None
    ) -> GpuLease:
        """Wait for ``mib`` MiB on ``device`` and return the lease (a context manager)."""
        device = normalise_device(device)
        capacity = self.capacity(device)
        if mib > capacity.capacity_mib:
            raise LeaseTooLargeError(
                f"{holder} asks for {mib} MiB on {device} but its capacity is "
                f"{capacity.capacity_mib} MiB ({capacity.total_mib} MiB from {capacity.source} "
                f"minus the safety margin)"
            )
        asked = time.monotonic()
        entry, granted = self._enqueue(holder, device, max(0, mib), priority, capacity.capacity_mib)
        try:
            if granted is None:
                granted = self._wait_for_turn(entry, capacity, timeout or self.timeout)
        except BaseException:
            self._update(device, lambda held, waiting: (held, _without(waiting, entry.id)))
            raise
        if self.on_granted is not None:
            self.on_granted(device, time.monotonic() - asked)
        lease = GpuLease(self, granted)
        try:
            self._cap_process(device)
        except BaseException:
            lease.release()
            raise
        return lease

    def release(self, lease: GpuLease) -> None:
        """Give a lease back; called by ``GpuLease`` on leaving its block."""
        self._update(lease.device, lambda held, waiting: (_without(held, lease.entry.id), waiting))
        logger.debug("released %s MiB on %s for %s", lease.mib, lease.device, lease.entry.holder)

    def snapshot(self, device: str) -> DeviceLeases:
        """The device's current leases and queue, dead processes' entries dropped."""
        device = normalise_device(device)
        with self._state(device) as state:
            return DeviceLeases(device, tuple(state["held"]), tuple(state["waiting"]))

    def known_devices(self) -> list[str]:
        """Every device a lease was ever taken on."""
        with self._db_lock:
            rows = self._connection().execute("SELECT device FROM device_state").fetchall()
        return sorted(row[0] for row in rows)

    def _enqueue(
        self, holder: str, device: str, mib: int, priority: int, capacity_mib: int
    ) -> tuple[LeaseEntry, LeaseEntry | None]:
        """Join the queue, and take the memory at once when nobody is ahead and it fits."""
        pid = os.getpid()
        with self._state(device) as state:
            state["seq"] += 1
            entry = LeaseEntry(
                id=uuid.uuid4().hex,
                holder=holder,
                device=device,
                mib=mib,
                priority=priority,
                pid=pid,
                pid_started=_start_time(pid),
                seq=state["seq"],
                requested_at=time.time(),
            )
            state["waiting"].append(entry)
            return entry, _grant_if_first(state, entry, capacity_mib)

    def _wait_for_turn(
        self, entry: LeaseEntry, capacity: DeviceCapacity, timeout: float
    ) -> LeaseEntry:
        deadline = time.monotonic() + timeout
        pause = POLL_SECONDS[0]
        while True:
            with self._state(entry.device) as state:
                granted = _grant_if_first(state, entry, capacity.capacity_mib)
                if granted is not None:
                    return granted
                holders = list(state["held"])
            if time.monotonic() >= deadline:
                raise LeaseTimeoutError(
                    f"{entry.holder} waited {timeout:g} s for {entry.mib} MiB on {entry.device} "
                    f"(capacity {capacity.capacity_mib} MiB); held by: {_describe(holders)}"
                )
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, POLL_SECONDS[1])

    def _update(
        self,
        device: str,
        change: Callable[
            [list[LeaseEntry], list[LeaseEntry]], tuple[list[LeaseEntry], list[LeaseEntry]]
        ],
    ) -> None:
        with self._state(device) as state:
            state["held"], state["waiting"] = change(state["held"], state["waiting"])

    @contextlib.contextmanager
    def _state(self, device: str) -> Iterator[dict[str, Any]]:
        """The device's state in one exclusive transaction, dead entries dropped."""
        with self._db_lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT state FROM device_state WHERE device = ?", (device,)
                ).fetchone()
                state = _load(row[0] if row else None, device)
                before = json.dumps(_dump(state))
                state["held"] = [entry for entry in state["held"] if _alive(entry)]
                state["waiting"] = [entry for entry in state["waiting"] if _alive(entry)]
                yield state
                after = json.dumps(_dump(state))
                if after != before:
                    db.execute("INSERT OR REPLACE INTO device_state VALUES (?, ?)", (device, after))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _connection(self) -> sqlite3.Connection:
        """This process's connection; a forked child opens its own."""
        if self._db is None or self._db_pid != os.getpid():
            db = connect_shared(self.path, autocommit=True, check_same_thread=False)
            db.execute(
                "CREATE TABLE IF NOT EXISTS device_state (device TEXT PRIMARY KEY, state TEXT)"
            )
            self._db, self._db_pid = db, os.getpid()
        return self._db

    def _cap_process(self, device: str) -> None:
        """Limit this process's allocator to what its leases on ``device`` hold."""
        if device == "cpu":
            return
        mine = sum(e.mib for e in self.snapshot(device).held if e.pid == os.getpid())
        cap_process_memory(device, mine, self.capacity(device).total_mib)


def cap_process_memory(device: str, held_mib: int, total_mib: int) -> None:
    """Set torch's per-process memory fraction for ``device`` to ``held_mib / total_mib``."""
    if held_mib <= 0 or total_mib <= 0:
        return
    import torch

    fraction = min(1.0, held_mib / total_mib)
    if device == "mps":
        torch.mps.set_per_process_memory_fraction(fraction)
    elif device.startswith("cuda:"):
        torch.cuda.set_per_process_memory_fraction(fraction, int(device.partition(":")[2]))


def _grant_if_first(
    state: dict[str, Any], entry: LeaseEntry, capacity_mib: int
) -> LeaseEntry | None:
    waiting: list[LeaseEntry] = state["waiting"]
    if not any(item.id == entry.id for item in waiting):
        waiting.append(entry)  # dropped meanwhile (cannot happen while we live): queue again
    head = min(waiting, key=lambda item: (-item.priority, item.seq))
    held_mib = sum(item.mib for item in state["held"])
    if head.id != entry.id or held_mib + entry.mib > capacity_mib:
        return None
    granted = LeaseEntry(**{**asdict(entry), "granted_at": time.time()})
    state["waiting"] = _without(waiting, entry.id)
    state["held"].append(granted)
    return granted


def _without(entries: list[LeaseEntry], entry_id: str) -> list[LeaseEntry]:
    return [entry for entry in entries if entry.id != entry_id]


_checked: dict[tuple[int, float], float] = {}  # (pid, start) -> when last seen alive


def _alive(entry: LeaseEntry) -> bool:
    if entry.pid == os.getpid() and entry.pid_started == _start_time(entry.pid):
        return True
    key, now = (entry.pid, entry.pid_started), time.monotonic()
    if now - _checked.get(key, -ALIVE_CACHE_SECONDS) < ALIVE_CACHE_SECONDS:
        return True  # seen alive a moment ago: a reclaim may wait that long, no more
    alive = process_alive(entry.pid, entry.pid_started)
    if alive:
        _checked[key] = now
    else:
        _checked.pop(key, None)
        logger.warning(
            "reclaimed %s MiB on %s from %s (pid %s is gone)",
            entry.mib,
            entry.device,
            entry.holder,
            entry.pid,
        )
    return alive


def _describe(entries: list[LeaseEntry]) -> str:
    if not entries:
        return "nobody (the queue ahead of it)"
    return ", ".join(f"{e.holder} (pid {e.pid}, {e.mib} MiB)" for e in entries)


_start_times: dict[int, float] = {}


def _start_time(pid: int) -> float:
    if pid not in _start_times:
        _start_times[pid] = float(psutil.Process(pid).create_time())
    return _start_times[pid]


def _load(text: str | None, device: str) -> dict[str, Any]:
    if text is None:
        return {"seq": 0, "held": [], "waiting": []}
    try:
        raw = json.loads(text)
        return {
            "seq": int(raw.get("seq", 0)),
            "held": [LeaseEntry(**item) for item in raw.get("held", [])],
            "waiting": [LeaseEntry(**item) for item in raw.get("waiting", [])],
        }
    except (ValueError, TypeError, AttributeError) as exc:
        # Only a hand-edited or foreign row gets here: our writes are transactional.
        logger.warning("starting the leases of %s afresh: %s", device, exc)
        return {"seq": 0, "held": [], "waiting": []}


def _dump(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": state["seq"],
        "held": [asdict(entry) for entry in state["held"]],
        "waiting": [asdict(entry) for entry in state["waiting"]],
    }
