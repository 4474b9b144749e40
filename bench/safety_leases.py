"""Device leases under contention: processes taking random-sized leases on a small capacity.

8 processes each take 60 leases of 10-70 MiB against a capacity of 100 MiB, holding
each for up to 5 ms, and log when they got and gave back each one (CLOCK_MONOTONIC,
shared by all processes). A sweep over the log gives the most MiB ever held at once,
which must not exceed the capacity. Then a holder is killed with SIGKILL while another
process waits: the lease is reclaimed and the waiter proceeds. The baseline, in the same
run, is an uncontended lease against a no-op context manager.

Usage: python bench/safety_leases.py [--processes 8] [--leases 60]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrate.safety.gpu import DeviceCapacity, GpuLeaseManager

CAPACITY_MIB = 100


def capacity(device: str) -> DeviceCapacity:
    return DeviceCapacity(device, CAPACITY_MIB, CAPACITY_MIB, "bench")


def take_leases(state: Path, seed: int, count: int, start, queue) -> None:  # type: ignore[no-untyped-def]
    manager = GpuLeaseManager(state, capacity=capacity, timeout=300)
    rng = random.Random(seed)
    log, waits = [], []
    start.wait()
    for _ in range(count):
        mib = rng.randint(10, 70)
        asked = time.monotonic()
        with manager.lease(f"worker {seed}", "cpu", mib):
            got = time.monotonic()
            time.sleep(rng.random() * 0.005)  # the work done under the lease
            log.append((got, time.monotonic(), mib))
        waits.append(got - asked)
    queue.put((log, waits))


def peak_held(intervals: list[tuple[float, float, int]]) -> int:
    changes = [(t, mib) for got, _, mib in intervals for t in (got,)]
    changes += [(released, -mib) for _, released, mib in intervals]
    peak = now = 0
    for _, change in sorted(changes, key=lambda item: (item[0], item[1])):  # releases first
        now += change
        peak = max(peak, now)
    return peak


def contention(state: Path, processes: int, count: int) -> tuple[list, list, float]:
    context = multiprocessing.get_context("spawn")
    start, queue = context.Barrier(processes + 1), context.Queue()
    workers = [
        context.Process(target=take_leases, args=(state, seed, count, start, queue))
        for seed in range(processes)
    ]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    reports = [queue.get() for _ in workers]
    elapsed = time.perf_counter() - began
    for worker in workers:
        worker.join()
    return [i for r in reports for i in r[0]], [w for r in reports for w in r[1]], elapsed


HOLDER = """
import sys
from pathlib import Path
from orchestrate.safety.gpu import DeviceCapacity, GpuLeaseManager
manager = GpuLeaseManager(Path(sys.argv[1]), capacity=lambda d: DeviceCapacity(d, 100, 100, "b"))
lease = manager.lease("doomed", "cpu", 90)
print("held", flush=True)
sys.stdin.readline()
"""


def reclaim_after_sigkill(state: Path) -> float:
    """Seconds from SIGKILL of a holder to the waiter's lease being granted."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    manager = GpuLeaseManager(state, capacity=capacity, timeout=60)
    killed = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)
    with manager.lease("next waiter", "cpu", 50):
        granted = time.monotonic()
    holder.wait()
    return granted - killed


def per_lease_overhead(state: Path, rounds: int = 2000) -> tuple[float, float]:
    """Median seconds of an uncontended lease, and of a no-op context manager."""
    manager = GpuLeaseManager(state, capacity=capacity)
    leased, noop = [], []
    for _ in range(rounds):
        began = time.perf_counter()
        with manager.lease("alone", "cpu", 10):
            pass
        leased.append(time.perf_counter() - began)
        began = time.perf_counter()
        with contextlib.nullcontext():
            pass
        noop.append(time.perf_counter() - began)
    return statistics.median(leased), statistics.median(noop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--leases", type=int, default=60)
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stdout, format="  log: %(message)s", level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="safety-leases-", dir=Path.cwd()) as base:
        intervals, waits, elapsed = contention(Path(base) / "a", args.processes, args.leases)
        reclaim = reclaim_after_sigkill(Path(base) / "b")
        leased, noop = per_lease_overhead(Path(base) / "c")
    peak = peak_held(intervals)
    print(
        f"{args.processes} processes x {args.leases} leases of 10-70 MiB, capacity "
        f"{CAPACITY_MIB} MiB, {elapsed:.1f} s"
    )
    print(
        f"  leases granted {len(intervals)}; most MiB held at once {peak} <= {CAPACITY_MIB}: "
        f"{peak <= CAPACITY_MIB}"
    )
    print(
        f"  wait for a lease: median {statistics.median(waits) * 1000:.1f} ms, "
        f"max {max(waits) * 1000:.0f} ms"
    )
    print(f"  SIGKILLed holder reclaimed, next waiter granted after {reclaim * 1000:.1f} ms")
    print(
        f"  uncontended lease + release median {leased * 1000:.3f} ms vs no-op context "
        f"manager {noop * 1e6:.2f} us (baseline) = {leased / noop:.0f}x"
    )
    met = peak <= CAPACITY_MIB and len(intervals) == args.processes * args.leases
    print(
        f"acceptance (never over capacity, killed holder reclaimed): {'met' if met else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
