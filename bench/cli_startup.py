"""How long `orchestrate --help` takes, against `python -c pass` measured in the same run.

Usage: python bench/cli_startup.py [--runs N]
Target: the median of `orchestrate --help` under 0.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TARGET_SECONDS = 0.5


def median_wall_seconds(command: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs

    median_wall_seconds([sys.executable, "-m", "orchestrate", "--help"], 2)  # warm the disk cache
    baseline = median_wall_seconds([sys.executable, "-c", "pass"], runs)
    help_time = median_wall_seconds([sys.executable, "-m", "orchestrate", "--help"], runs)

    print(f"python -c pass        median {baseline * 1000:7.1f} ms  (baseline)")
    print(f"orchestrate --help    median {help_time * 1000:7.1f} ms  ({help_time / baseline:.1f}x)")
    verdict = "met" if help_time < TARGET_SECONDS else "MISSED"
    print(f"target < {TARGET_SECONDS * 1000:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
