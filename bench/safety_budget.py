"""The spend ledger under contention: processes reserving against a budget that admits half.

8 processes x 200 paid calls: each reserves a worst case (5,000-15,000 millionths), and
settles to 80-100% of it. The budget is half the expected total, so about half the calls
are refused. Afterwards: final spend never exceeds the budget, the ledger's totals equal
the sum the processes settled, and no entry is lost. The baseline, in the same run, is
one process doing the same number of reserve + settle pairs alone.

Usage: python bench/safety_budget.py [--processes 8] [--calls 200]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from orchestrate.errors import BudgetExceeded
from orchestrate.safety.budget import BudgetLedger
from orchestrate.safety.pricing import MICROS

MEAN_COST = 9_000  # millionths: the mean of 80-100% of 5,000-15,000


def spend(path: Path, budget: float, seed: int, calls: int, start, queue) -> None:  # type: ignore[no-untyped-def]
    ledger = BudgetLedger(path, daily_budget=budget, currency="USD")
    rng = random.Random(seed)
    settled, refused, latencies = [], 0, []
    start.wait()
    for _ in range(calls):
        worst = rng.randint(5_000, 15_000)
        began = time.perf_counter()
        try:
            reservation = ledger.reserve("paid:model", worst)
        except BudgetExceeded:
            refused += 1
            continue
        cost = int(worst * rng.uniform(0.8, 1.0))
        ledger.settle(reservation, cost, 100, 100)
        latencies.append(time.perf_counter() - began)
        settled.append((reservation.id, cost))
    queue.put((settled, refused, latencies))


def run(folder: Path, processes: int, calls: int, budget: float) -> tuple[list, int, list, float]:
    context = multiprocessing.get_context("spawn")
    path = folder / "budget.sqlite3"
    BudgetLedger(path, daily_budget=budget, currency="USD")  # the schema, before the race
    start, queue = context.Barrier(processes + 1), context.Queue()
    workers = [
        context.Process(target=spend, args=(path, budget, seed, calls, start, queue))
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
    settled = [entry for report in reports for entry in report[0]]
    latencies = [value for report in reports for value in report[2]]
    return settled, sum(report[1] for report in reports), latencies, elapsed


def stored(path: Path) -> tuple[int, int, int]:
    with sqlite3.connect(path) as connection:
        count, total, open_rows = connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(cost), 0), SUM(state = 'open') FROM spend"
        ).fetchone()
    return int(count), int(total), int(open_rows or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    attempts = args.processes * args.calls
    budget = attempts * MEAN_COST / 2 / MICROS
    with tempfile.TemporaryDirectory(prefix="safety-budget-", dir=Path.cwd()) as base:
        alone, _, alone_latencies, _ = run(Path(base) / "alone", 1, attempts, budget * 100)
        Path(base, "shared").mkdir()
        settled, refused, latencies, elapsed = run(
            Path(base) / "shared", args.processes, args.calls, budget
        )
        rows, total, open_rows = stored(Path(base) / "shared" / "budget.sqlite3")
    spent = sum(cost for _, cost in settled)
    ids_unique = len({entry_id for entry_id, _ in settled}) == len(settled)
    print(f"{args.processes} processes x {args.calls} paid calls, budget {budget:.2f} USD")
    print(f"  admitted {len(settled)}, refused {refused} ({refused / attempts:.0%})")
    print(
        f"  final spend {spent / MICROS:.6f} USD <= budget {budget:.6f}: {spent <= budget * MICROS}"
    )
    print(
        f"  ledger total {total / MICROS:.6f} USD == settled by the processes "
        f"{spent / MICROS:.6f}: {total == spent}"
    )
    print(
        f"  ledger rows {rows} == admitted calls {len(settled)}, none open ({open_rows}),"
        f" ids unique: {ids_unique}"
    )
    print(f"  {attempts / elapsed:.0f} reserve attempts/s across processes")
    shared_ms = statistics.median(latencies) * 1000
    alone_ms = statistics.median(alone_latencies) * 1000
    print(
        f"  reserve + settle median: {shared_ms:.3f} ms contended, {alone_ms:.3f} ms alone "
        f"(baseline, {len(alone)} calls) = {shared_ms / alone_ms:.1f}x"
    )
    met = spent <= budget * MICROS and total == spent and rows == len(settled) and not open_rows
    print(
        f"acceptance (never over budget, totals match, no entry lost): {'met' if met else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
