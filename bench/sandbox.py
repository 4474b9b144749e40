"""What the QA sandbox costs: a project's checks, sandboxed, against bare pytest.

A generated-looking project (a module and 20 tests) is checked five times each way,
interleaved so that machine noise hits both alike:

- baseline: ``python -m pytest -q`` in a subprocess on the project, nothing else;
- ours: ``run_checks`` — a copy of the project, byte-compiling every file, then pytest
  under bubblewrap (where it works), resource limits, a pids cgroup (as root) and a
  clean environment, with the JUnit report read back.

Prints the medians and their ratio. Usage: python bench/sandbox.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrate.qa.checks import CheckPlan, run_checks
from orchestrate.qa.isolation import namespaces

ROUNDS = 5
TESTS = 20


def make_project(root: Path) -> Path:
    root.mkdir()
    (root / "calc.py").write_text(
        "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
    )
    (root / "tests").mkdir()
    cases = "\n\n".join(
        f"def test_case_{n}():\n    assert add({n}, 1) == {n + 1} and mul({n}, 2) == {2 * n}"
        for n in range(TESTS)
    )
    (root / "tests" / "test_calc.py").write_text(f"from calc import add, mul\n\n\n{cases}\n")
    return root


def bare_pytest(project: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode()
    return time.perf_counter() - started


def sandboxed(project: Path) -> float:
    started = time.perf_counter()
    report = run_checks(project, CheckPlan())
    assert report.status == "passed" and report.passed == TESTS, report.summary()
    return time.perf_counter() - started


def main() -> None:
    isolation = namespaces()
    with tempfile.TemporaryDirectory() as folder:
        project = make_project(Path(folder) / "project")
        sandboxed(project)  # the first run probes bubblewrap once per process
        bare, ours = [], []
        for _ in range(ROUNDS):
            bare.append(bare_pytest(project))
            ours.append(sandboxed(project))
    bare_median, ours_median = statistics.median(bare), statistics.median(ours)
    where = "bubblewrap" if isolation.available else f"no bubblewrap ({isolation.problem})"
    print(f"sandbox: {where}; {TESTS} tests, median of {ROUNDS} interleaved rounds")
    print(f"  bare pytest subprocess  {bare_median * 1000:8.0f} ms   1.00x")
    print(
        f"  sandboxed checks        {ours_median * 1000:8.0f} ms   "
        f"{ours_median / bare_median:.2f}x  (copy, byte-compile, limits, namespaces, JUnit)"
    )
    print(f"  cost of the sandbox     {(ours_median - bare_median) * 1000:8.0f} ms per check")


if __name__ == "__main__":
    main()
