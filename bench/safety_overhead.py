"""What the three guards add to one task, median over many rounds.

Per task the build asks the worker limiter (a read of the spend ledger), reserves and
settles one paid call, takes and releases one device lease, and writes one small file
into its staging area and merges it into outputs (locked, atomic, fsynced, scanned for
secrets). Each is timed alone; the baseline, in the same run, is the same file written
with plain ``Path.write_text`` and a no-op context manager.

Usage: python bench/safety_overhead.py [--rounds 500]
Target: the guards' median overhead per task under 1 ms.
"""

from __future__ import annotations

import argparse
import contextlib
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

        timings = {
            "worker limiter (ledger read)": median_ms(lambda _: limiter.limit(), rounds),
            "budget reserve + settle": median_ms(spend, rounds),
            "device lease + release": median_ms(lease, rounds),
            "staged write + merge, no scan": median_ms(lambda n: write(n, unscanned), rounds),
            "secret scan of the file": 0.0,
            "no-op context manager (baseline)": median_ms(
                lambda _: contextlib.nullcontext(), rounds
            ),
            "plain write_text (baseline)": median_ms(
                lambda n: (plain / f"h{n % 20}.py").write_text(FILE + f"# {n}\n"), rounds
            ),
        }
        scanned = median_ms(write, rounds)
        timings["secret scan of the file"] = scanned - timings["staged write + merge, no scan"]
    guards = [name for name in timings if "baseline" not in name]
    lines = FILE.count("\n") + 1
    print(f"per-task guard overhead, median of {rounds} rounds ({lines}-line file)")
    for name, ms in timings.items():
        print(f"  {name:34} {ms:7.3f} ms")
    total = sum(timings[name] for name in guards)
    without_scan = total - timings["secret scan of the file"]
    plain_write = timings["plain write_text (baseline)"]
    write_over_plain = timings["staged write + merge, no scan"] / plain_write
    print(f"  all guards                         {total:7.3f} ms")
    print(f"  all guards but the secret scan     {without_scan:7.3f} ms")
    print(f"  staged write + merge / plain write_text: {write_over_plain:.1f}x")
    print(f"target < {TARGET_MS} ms per task: {'met' if total < TARGET_MS else 'MISSED'}")


if __name__ == "__main__":
    main()
