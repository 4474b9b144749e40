"""What the three guards add to one task, median over many rounds.

Per task the build asks the worker limiter (a read of the spend ledger), reserves and
settles one paid call, takes and releases one device lease, and publishes the files of
its answer into outputs (locked, atomic, fsynced, scanned for secrets, under the
conflict rule). Files written through the CrewAI tools while a task runs take the
longer way through its staging area; that path is timed too. Each is timed alone,
with two baselines measured in the same run: the same file written with plain
``Path.write_text``, and written durably without any guard (temporary file, fsync,
rename, fsync of the folder, which the issue asks of every write and which costs what
the disk's fsync costs).

The overhead of the guards is what they add to a task beyond that durable write:
limiter + budget + lease + (published write - unguarded durable write). The secret
scan is reported per line, because it grows with the content, not per task.

Usage: python bench/safety_overhead.py [--rounds 500]
Target: the guards' median overhead per task under 1 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from orchestrate.safety.budget import BudgetLedger
from orchestrate.safety.gpu import DeviceCapacity, GpuLeaseManager
from orchestrate.safety.limiter import LimiterConfig, WorkerLimiter
from orchestrate.safety.secrets import SecretScanner
from orchestrate.workspace.staging import StagingAreas
from orchestrate.workspace.writer import Workspace

TARGET_MS = 1.0
FILE = "".join(f"def handler_{i}(request):\n    return {{'status': {i}}}\n" for i in range(10))


def median_ms(action: Callable[[int], object], rounds: int) -> float:
    samples = []
    for number in range(rounds):
        began = time.perf_counter()
        action(number)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="safety-overhead-", dir=Path.cwd()) as base:
        state = Path(base) / "state"
        ledger = BudgetLedger(state / "budget.sqlite3", daily_budget=1e6, currency="USD")
        limiter = WorkerLimiter(ledger.remaining_share, LimiterConfig())
        leases = GpuLeaseManager(state, capacity=lambda d: DeviceCapacity(d, 1000, 1000, "b"))
        outputs = Workspace(Path(base) / "outputs", lock_dir=state / "locks")
        staging = StagingAreas(Path(base) / "staging", outputs, scanner=SecretScanner())
        unscanned = StagingAreas(Path(base) / "staging2", outputs)
        plain = Path(base) / "plain"
        plain.mkdir()

        def spend(_: int) -> None:
            ledger.settle(ledger.reserve("paid:model", 1000), 800, 10, 10)

        def lease(_: int) -> None:
            with leases.lease("bench", "cpu", 100):
                pass

        def write(number: int, areas: StagingAreas = staging) -> None:
            task = f"task{number}"
            areas.area(task).write(f"src/handlers_{number % 20}.py", FILE + f"# {number}\n")
            areas.merge(task)

        def publish(number: int, areas: StagingAreas = staging) -> None:
            areas.publish(f"task{number}", f"src/handlers_{number % 20}.py", FILE + f"# {number}\n")

        def durable(number: int) -> None:
            target = plain / f"d{number % 20}.py"
            temp = target.with_suffix(".tmp")
            with temp.open("wb") as stream:
                stream.write((FILE + f"# {number}\n").encode())
                stream.flush()
                os.fsync(stream.fileno())
            temp.replace(target)
            folder = os.open(plain, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

        timings = {
            "worker limiter (ledger read)": median_ms(lambda _: limiter.limit(), rounds),
            "budget reserve + settle": median_ms(spend, rounds),
            "device lease + release": median_ms(lease, rounds),
            "published write, no scan": median_ms(lambda n: publish(n, unscanned), rounds),
            "staged write + merge, no scan": median_ms(lambda n: write(n, unscanned), rounds),
            "secret scan of the file": 0.0,
            "no-op context manager (baseline)": median_ms(
                lambda _: contextlib.nullcontext(), rounds
            ),
            "plain write_text (baseline)": median_ms(
                lambda n: (plain / f"h{n % 20}.py").write_text(FILE + f"# {n}\n"), rounds
            ),
            "durable write, no guard (baseline)": median_ms(durable, rounds),
        }
        scanned = median_ms(publish, rounds)
        timings["secret scan of the file"] = scanned - timings["published write, no scan"]
    lines = FILE.count("\n")
    print(f"per-task guard cost, median of {rounds} rounds ({lines}-line file)")
    for name, ms in timings.items():
        print(f"  {name:36} {ms:7.3f} ms")
    durable_write = timings["durable write, no guard (baseline)"]
    write_guard = timings["published write, no scan"] - durable_write
    fixed = ("worker limiter (ledger read)", "budget reserve + settle", "device lease + release")
    overhead = sum(timings[name] for name in fixed) + write_guard
    scan_per_line = timings["secret scan of the file"] / lines * 1000
    print(f"  write guard over the durable write   {write_guard:7.3f} ms")
    print(f"  secret scan per line                 {scan_per_line:7.1f} us")
    print(f"  published write / durable write:     {write_guard / durable_write + 1:7.2f}x")
    print(f"  overhead per task (limiter + budget + lease + write guard): {overhead:.3f} ms")
    everything = overhead + durable_write + timings["secret scan of the file"]
    print(f"  everything, durable write and scan included: {everything:.3f} ms")
    print(f"target < {TARGET_MS} ms per task: {'met' if overhead < TARGET_MS else 'MISSED'}")


if __name__ == "__main__":
    main()
