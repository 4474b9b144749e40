"""The crew file: agents, their tasks, and which task outputs feed which tasks.

It follows CrewAI's YAML convention (an agent has a role, goal and backstory; a task
has a description, an expected output, an agent and a context list) in one file, and
is checked completely before any model is loaded.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from orchestrate.bundled import default_crew_file
from orchestrate.crew.graph import TaskGraph
from orchestrate.errors import CrewError, ModelNotFoundError, describe_validation_error
from orchestrate.llm.backend import parse_model_name
from orchestrate.qa.records import SandboxLimits
from orchestrate.scheduler.policy import TaskPolicy
from orchestrate.workspace.writer import UnsafePathError, check_relative_path

SPEC_PLACEHOLDER = "{spec}"
# The QA stage's node in the task graph: it runs the generated project's checks.
CHECKS_TASK = "checks"
CHECKS_AGENT = "sandbox"  # what the run record and the timeline call the stage's worker
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

NonEmptyText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class RetryConfig(BaseModel):
    """Retry settings for an agent or a task; a key left out falls through to the next layer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int | None = Field(None, ge=1, le=20)
    base_seconds: float | None = Field(None, ge=0, le=600)
    cap_seconds: float | None = Field(None, ge=0, le=3600)


class AgentConfig(BaseModel):
    """One agent: who it is and what it wants, in CrewAI's terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: NonEmptyText
    goal: NonEmptyText
    backstory: NonEmptyText
    # BACKEND:NAME for this agent alone (a strong model for the architect, a cheap one
    # for docs); None: the run's model. The run's fallback models back it up.
    model: str | None = None
    retry: RetryConfig | None = None
    timeout_seconds: float | None = Field(None, gt=0, le=86400)

    @field_validator("model")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_model_name(value)
            except ModelNotFoundError as exc:
                raise ValueError(str(exc)) from None
        return value


class TaskConfig(BaseModel):
    """One task: what to do, who does it, and whose outputs it reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: NonEmptyText
    description: NonEmptyText
    expected_output: NonEmptyText
    context: list[str] = Field(default_factory=list)
    # A file that receives the whole answer when the answer carries no block for it,
    # as CrewAI's own `output_file` does; it lands in the outputs folder like any file.
    output_file: str | None = None
    retry: RetryConfig | None = None
    timeout_seconds: float | None = Field(None, gt=0, le=86400)

    @field_validator("output_file")
    @classmethod
    def _confined(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_relative_path(value).as_posix()
        except UnsafePathError as exc:
            raise ValueError(f"output_file {value!r} is refused: {exc}") from None

    def prompt_for(self, spec_text: str) -> str:
        """The task description with the spec filled in (appended when not placed)."""
        if SPEC_PLACEHOLDER in self.description:
            return self.description.replace(SPEC_PLACEHOLDER, spec_text)
        return f"{self.description}\n\nProject spec:\n{spec_text}"


class ChecksConfig(BaseModel):
    """The QA stage: run the generated project's checks in a sandbox, repair, re-check.

    It becomes the ``checks`` node of the task graph: it waits for ``after`` (and so
    for everything they read), and the ``before`` tasks (the critic's review) wait for
    it and get its results as context.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    after: list[str] = Field(min_length=1)
    before: list[str] = Field(default_factory=list)
    # A shell command for projects that are not Python; None: byte-compile, then pytest.
    command: str | None = None
    repair_agent: str | None = None  # who fixes failing checks; None: no repair rounds
    repair_rounds: int = Field(1, ge=0, le=10)
    limits: SandboxLimits = Field(default_factory=SandboxLimits)


class CrewConfig(BaseModel):
    """A whole crew, validated: every reference resolves and the contexts are acyclic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agents: dict[str, AgentConfig]
    tasks: dict[str, TaskConfig]
    checks: ChecksConfig | None = None

    def graph(self) -> TaskGraph:
        dependencies = {name: list(task.context) for name, task in self.tasks.items()}
        if self.checks is not None:
            dependencies[CHECKS_TASK] = list(self.checks.after)
            for name in self.checks.before:
                dependencies[name].append(CHECKS_TASK)
        return TaskGraph(dependencies)

    def task_agents(self) -> dict[str, str]:
        """Who does each node of the graph, the checks stage included."""
        agents: dict[str, str] = {}
        for name, task in self.tasks.items():
            if self.checks is not None and name in self.checks.before:
                agents.setdefault(CHECKS_TASK, CHECKS_AGENT)  # listed before its readers
            agents[name] = task.agent
        if self.checks is not None:
            agents.setdefault(CHECKS_TASK, CHECKS_AGENT)
        return agents

    def without_checks(self) -> CrewConfig:
        """The same crew with no QA stage (``--no-qa-run``)."""
        return self.model_copy(update={"checks": None})

    def with_repair_rounds(self, rounds: int) -> CrewConfig:
        if self.checks is None:
            return self
        checks = self.checks.model_copy(update={"repair_rounds": rounds})
        return self.model_copy(update={"checks": checks})

    def models(self, default: str) -> dict[str, str]:
        """The model each agent talks to: its own, or ``default``."""
        return {name: agent.model or default for name, agent in self.agents.items()}

    def policies(self, defaults: TaskPolicy) -> dict[str, TaskPolicy]:
        """Each task's retry and timeout policy: the task's keys, then its agent's, then
        ``defaults``."""
        return {name: self._policy_for(task, defaults) for name, task in self.tasks.items()}

    def _policy_for(self, task: TaskConfig, defaults: TaskPolicy) -> TaskPolicy:
        agent = self.agents[task.agent]
        retry = defaults.retry
        for layer in (agent.retry, task.retry):
            if layer is not None:
                retry = replace(retry, **layer.model_dump(exclude_none=True))
        timeout = task.timeout_seconds or agent.timeout_seconds or defaults.timeout_seconds
        return TaskPolicy(retry, timeout)


class LoadedCrew(NamedTuple):
    """A validated crew file, its task graph, and where it was read from."""

    config: CrewConfig
    graph: TaskGraph
    source: Path


def load_crew(path: Path | None = None) -> LoadedCrew:
    """Read and validate a crew file; the bundled crew when ``path`` is None."""
    source = path or default_crew_file()
    raw = _read_yaml(source)
    try:
        crew = CrewConfig.model_validate(raw)
    except ValidationError as exc:
        raise CrewError(f"{source}: {describe_validation_error(exc)}") from exc
    try:
        _check_names_and_agents(crew)
        graph = crew.graph()
    except CrewError as exc:
        raise type(exc)(f"{source}: {exc}") from exc  # a cycle stays a CrewCycleError
    return LoadedCrew(crew, graph, source)


def _read_yaml(source: Path) -> Any:
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CrewError(f"crew file not found: {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CrewError(f"cannot read crew file {source}: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise CrewError(f"{source} is not valid YAML{line}: fix the syntax and retry") from exc


def _check_names_and_agents(crew: CrewConfig) -> None:
    if not crew.tasks:
        raise CrewError("the crew has no tasks; add at least one under 'tasks:'")
    for kind, names in (("agent", crew.agents), ("task", crew.tasks)):
        for name in names:
            if not _NAME_PATTERN.match(name):
                raise CrewError(
                    f"{kind} name '{name}' must be lowercase letters, digits and '_', "
                    f"starting with a letter (at most 40 characters)"
                )
    if crew.checks is not None:
        _check_checks(crew, crew.checks)
    for name, task in crew.tasks.items():
        if task.agent not in crew.agents:
            known = ", ".join(sorted(crew.agents)) or "none defined"
            raise CrewError(
                f"task '{name}' is assigned to agent '{task.agent}', which is not defined "
                f"(agents: {known})"
            )


def _check_checks(crew: CrewConfig, checks: ChecksConfig) -> None:
    if CHECKS_TASK in crew.tasks:
        raise CrewError(
            f"a task may not be named '{CHECKS_TASK}' in a crew with a 'checks' section; "
            f"that name is the QA stage's"
        )
    for key in ("after", "before"):
        for name in getattr(checks, key):
            if name not in crew.tasks:
                raise CrewError(f"checks.{key} names task '{name}', which is not defined")
    agent = checks.repair_agent
    if agent is not None and agent not in crew.agents:
        raise CrewError(f"checks.repair_agent '{agent}' is not an agent of the crew")
