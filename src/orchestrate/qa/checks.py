"""A generated project's checks: byte-compile its Python, then run its tests, sandboxed.

Python projects are checked with pytest; a crew may name its own command instead
(``npm test``, ``make check``), judged by its exit status alone. Both run inside a
``Sandbox`` over a copy of the project, so nothing they do reaches the run's files.
"""

from __future__ import annotations

import sys
import threading
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

from orchestrate.qa.compile_check import python_files, read_compile_errors
from orchestrate.qa.records import CheckReport, CheckStatus, SandboxLimits
from orchestrate.qa.sandbox import Sandbox, SandboxResult

_MAX_LISTED = 20  # failures and compile errors kept per round
_JUNIT_NAME = "junit.xml"


@dataclass(frozen=True)
class CheckPlan:
    """What to run: pytest on Python projects, or a crew's own command."""

    command: str | None = None  # a shell command; None: byte-compile and pytest
    limits: SandboxLimits = field(default_factory=SandboxLimits)


def run_checks(
    project: Path, plan: CheckPlan, cancel: threading.Event | None = None
) -> CheckReport:
    """Check a copy of ``project``; the project itself is never touched."""
    with Sandbox(project, plan.limits) as sandbox:
        if plan.command is not None:
            return _custom_command(sandbox, plan.command, cancel)
        files = python_files(project)
        if not files:
            return CheckReport(status="no_code", command="")
        return _python_checks(sandbox, len(files), cancel)


def _custom_command(sandbox: Sandbox, command: str, cancel: threading.Event | None) -> CheckReport:
    result = sandbox.run(["/bin/sh", "-c", command], cancel)
    status: CheckStatus = "passed" if result.exit_code == 0 else "failed"
    return _report(status, command, result)


def _python_checks(
    sandbox: Sandbox, file_count: int, cancel: threading.Event | None
) -> CheckReport:
    # -I: a project file named json.py must not stand in for the standard library.
    compiled = sandbox.run([sys.executable, "-I", "-m", "orchestrate.qa.compile_check"], cancel)
    compile_errors = read_compile_errors(compiled.output_tail)
    junit = sandbox.scratch / _JUNIT_NAME
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    pytest += [f"--junitxml={junit}", "-o", "addopts=", "--color=no", "--tb=short"]
    result = sandbox.run(pytest, cancel)
    counts = _junit_counts(junit)
    status = _pytest_status(result, counts)
    if compile_errors and status == "passed":
        status = "failed"  # a module the tests never import is still broken
    shown = "python -m pytest -q"  # the rest of the options are how we read its results
    report = _report(status, shown, result, counts)
    report.python_files = file_count
    report.compile_errors = compile_errors[:_MAX_LISTED]
    if compiled.limits_hit:
        limits = " and ".join(compiled.limits_hit)
        report.compile_errors.append(f"byte-compiling hit the {limits} limit")
    return report


@dataclass
class _Counts:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: tuple[str, ...] = ()
    found: bool = False  # the junit report was there and readable


def _junit_counts(path: Path) -> _Counts:
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return _Counts()
    counts = _Counts(found=True)
    failures = []
    for case in root.iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if case.find("skipped") is not None:
            counts.skipped += 1
        elif problem is None:
            counts.passed += 1
        else:
            if problem.tag == "failure":
                counts.failed += 1
            else:
                counts.errors += 1
            failures.append(_failure_line(case, problem))
    # Errors outside any test (a test module that does not import) have no testcase.
    for suite in root.iter("testsuite"):
        counted = sum(1 for case in suite.iter("testcase") if case.find("error") is not None)
        counts.errors += max(0, int(suite.get("errors", "0")) - counted)
    counts.failures = tuple(failures[:_MAX_LISTED])
    return counts


def _failure_line(case: ElementTree.Element, problem: ElementTree.Element) -> str:
    test = "::".join(part for part in (case.get("classname"), case.get("name")) if part)
    message = (problem.get("message") or problem.text or "").strip().splitlines()
    return f"{test}: {message[0][:300]}" if message else test


def _pytest_status(result: SandboxResult, counts: _Counts) -> CheckStatus:
    if result.exit_code == 5:  # pytest: no tests were collected
        return "no_tests"
    if result.exit_code == 0 and counts.failed == counts.errors == 0:
        return "passed"
    return "failed"


def _report(
    status: CheckStatus, command: str, result: SandboxResult, counts: _Counts | None = None
) -> CheckReport:
    counts = counts or _Counts()
    return CheckReport(
        status=status,
        command=command,
        passed=counts.passed,
        failed=counts.failed,
        errors=counts.errors,
        skipped=counts.skipped,
        failures=list(counts.failures),
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        limits_hit=result.limits_hit,
        seconds=result.seconds,
        output_tail=result.output_tail,
        confinement=result.confinement,
    )
