"""The QA stage of a build: check, repair what failed, check again, within a bound.

Round 1 checks the project as the crew wrote it. While checks fail and repair rounds
are left, the repair agent gets the failures and the current sources, its files land
in ``outputs/`` like any task's, and the checks run again. The stage's answer is a short
Markdown account of every round, which the critic reads as context.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

from orchestrate.crew.config import ChecksConfig, TaskConfig
from orchestrate.errors import TaskCancelledError
from orchestrate.qa.checks import CheckPlan, run_checks
from orchestrate.qa.compile_check import python_files
from orchestrate.qa.records import CheckReport, QaRound, RepairRecord, RoundKind
from orchestrate.store.events import utc_now

_SOURCES_CHARS = 12_000  # of current source handed to the repair agent
_TAIL_FOR_CRITIC = 1_500  # characters of the last round's output in the critic's context
_TAIL_FOR_REPAIR = 3_000
# pytest's "3 passed in 1.13s (0:00:01)": the time differs on every run, and a prompt
# that differs is never answered from the response cache.
_TIMINGS = re.compile(r"\s+in \d+(?:\.\d+)?s(?: \(\d+:\d{2}:\d{2}\))?")

Repair = Callable[[int, CheckReport], RepairRecord]


class QaStage:
    """Runs the checks round by round; ``on_round`` records each round as it ends."""

    def __init__(
        self,
        checks: ChecksConfig,
        project: Path,
        *,
        repair: Repair | None,
        on_round: Callable[[QaRound], None],
    ) -> None:
        self._plan = CheckPlan(command=checks.command, limits=checks.limits)
        self._project = project
        self._repair = repair if checks.repair_agent else None
        self._allowed = checks.repair_rounds if self._repair is not None else 0
        self._on_round = on_round

    def run(self, cancel: threading.Event) -> str:
        """Every round, then the account of them for the critic."""
        rounds: list[QaRound] = []
        kind: RoundKind = "build"
        while True:
            if cancel.is_set():
                raise TaskCancelledError("cancelled before the checks ran")
            started = utc_now()
            report = run_checks(self._project, self._plan, cancel)
            current = QaRound(number=len(rounds) + 1, kind=kind, started_at=started, checks=report)
            rounds.append(current)
            if not self._needs_repair(report, len(rounds)):
                self._on_round(current)
                return describe_rounds(rounds)
            assert self._repair is not None
            current.repair = self._repair(current.number, report)
            self._on_round(current)
            if not current.repair.files:  # the same code would fail the same way
                return describe_rounds(rounds)
            kind = "repair"

    def _needs_repair(self, report: CheckReport, rounds_done: int) -> bool:
        # Only failures are repaired: with no tests there is nothing to go on.
        return report.status == "failed" and rounds_done <= self._allowed


def repair_task(agent: str, report: CheckReport) -> TaskConfig:
    """The task the repair agent gets: the failures, and how to answer."""
    failures = "\n".join(f"- {line}" for line in report.failures + report.compile_errors)
    tail = steady(report.output_tail)[-_TAIL_FOR_REPAIR:]
    description = (
        "The generated project's checks failed when run in a sandbox "
        f"({report.summary()}). Fix the code so that they pass.\n\n"
        f"Failures:\n{failures or '- see the output below'}\n\n"
        f"Output of the checks (its end):\n```text\n{tail}\n```\n\n"
        "The current source files are in your context. Write every file you change "
        "in full. Change a test only when the test itself is wrong.\n\n"
        "The project's spec:\n{spec}"
    )
    return TaskConfig.model_validate(
        {
            "agent": agent,
            "description": description,
            "expected_output": "Every changed file in full, one FILE block per file.",
        }
    )


def project_sources(project: Path) -> str:
    """The project's Python files as FILE blocks, for the repair agent's context."""
    parts, used = [], 0
    for path in python_files(project):
        relative = path.relative_to(project).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        block = f"FILE: {relative}\n```python\n{text.rstrip()}\n```"
        if used + len(block) > _SOURCES_CHARS:
            parts.append(f"(more files not shown: the context has room for {used} characters)")
            break
        parts.append(block)
        used += len(block)
    return "## Current source files\n\n" + "\n\n".join(parts) if parts else ""


def describe_rounds(rounds: list[QaRound]) -> str:
    """The stage's answer: each round in a line or a few, then the last output."""
    last = rounds[-1].checks
    repairs = sum(1 for entry in rounds if entry.repair is not None)
    after = f" after {repairs} repair round{'s' if repairs != 1 else ''}" if repairs else ""
    lines = [f"# Checks of the generated project: {last.status}{after}", ""]
    for entry in rounds:
        lines.append(f"Round {entry.number} ({entry.kind}): {entry.checks.summary()}")
        lines += [f"- {line}" for line in entry.checks.compile_errors + entry.checks.failures]
        if entry.repair is not None:
            lines.append(_repair_line(entry.number, entry.repair))
    if last.confinement is not None:
        lines += ["", f"Sandbox: network {last.confinement.network}."]
    if last.output_tail.strip():
        tail = steady(last.output_tail)[-_TAIL_FOR_CRITIC:].rstrip()
        lines += ["", "Output of the last round (its end):", "```text", tail, "```"]
    return "\n".join(lines) + "\n"


def _repair_line(number: int, repair: RepairRecord) -> str:
    if repair.error:
        return f"Repair {number} by {repair.agent} failed: {repair.error}"
    files = ", ".join(repair.files) or "no files"
    return f"Repair {number} by {repair.agent}: wrote {files}"


def steady(output: str) -> str:
    """The output without its timings, so that the same results read the same."""
    return _TIMINGS.sub("", output)
