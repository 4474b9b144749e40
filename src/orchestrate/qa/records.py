"""What the QA stage records in ``run.json``: each round's checks, repairs, the verdict."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CheckStatus = Literal["passed", "failed", "no_tests", "no_code"]
RoundKind = Literal["build", "repair", "recheck"]


class SandboxLimits(BaseModel):
    """The limits every sandboxed command runs under; a crew's ``checks`` may change them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_seconds: float = Field(default=120.0, gt=0, le=3600)
    cpu_seconds: int = Field(default=60, ge=1, le=3600)
    memory_mib: int = Field(default=2048, ge=64, le=1 << 20)
    file_mib: int = Field(default=64, ge=1, le=1 << 20)
    processes: int = Field(default=64, ge=4, le=100_000)


class Confinement(BaseModel):
    """Which protections held around the code; said plainly when one was missing."""

    network: str
    filesystem: str
    processes: str
    environment_removed: list[str] = Field(default_factory=list)  # names, never values
    limits: SandboxLimits


class CheckReport(BaseModel):
    """One run of a project's checks: byte-compiling, then its tests."""

    status: CheckStatus
    command: str
    python_files: int = 0
    compile_errors: list[str] = Field(default_factory=list)  # "path:line: message"
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: list[str] = Field(default_factory=list)  # "test id: first line of the error"
    exit_code: int | None = None  # None when the command was killed
    timed_out: bool = False
    limits_hit: list[str] = Field(default_factory=list)  # "wall time", "cpu time", "processes"…
    seconds: float = 0.0
    output_tail: str = ""
    confinement: Confinement | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "no_code")

    def summary(self) -> str:
        """One line: what ran and how it went."""
        if self.status == "no_code":
            return "no Python files and no check command: nothing to run"
        parts = [f"{self.passed} passed", f"{self.failed} failed", f"{self.errors} errors"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        if self.compile_errors:
            parts.insert(0, f"{len(self.compile_errors)} files do not compile")
        line = f"{self.status}: " + ", ".join(parts)
        if self.limits_hit:
            line += f" (hit the {' and '.join(self.limits_hit)} limit)"
        return line


class RepairRecord(BaseModel):
    """One repair by an agent, given the failures of the round before it."""

    agent: str
    files: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None  # why the repair produced nothing usable


class QaRound(BaseModel):
    """A round: the checks, and the repair they led to, if any."""

    number: int
    kind: RoundKind = "build"
    started_at: datetime
    checks: CheckReport
    repair: RepairRecord | None = None

    def event_fields(self) -> dict[str, Any]:
        """What a ``checks_ran`` event says of this round."""
        return {
            "round": self.number,
            "kind": self.kind,
            "status": self.checks.status,
            "passed": self.checks.passed,
            "failed": self.checks.failed,
            "errors": self.checks.errors,
            "compile_errors": len(self.checks.compile_errors),
            "limits_hit": self.checks.limits_hit,
            "seconds": self.checks.seconds,
        }


class QaRecord(BaseModel):
    """Every round of checks a run went through, in order."""

    rounds: list[QaRound] = Field(default_factory=list)
    repair_rounds_allowed: int = 0

    @property
    def last(self) -> CheckReport | None:
        return self.rounds[-1].checks if self.rounds else None


class Verdict(BaseModel):
    """The critic's structured verdict."""

    decision: Literal["approve", "request_changes"]
    changes: list[str] = Field(default_factory=list)
