"""Run folders: ``runs/<run_id>/`` holding ``run.json``, ``events.jsonl``, ``tasks/``, ``outputs/``.

``run.json`` is the run's current state. It is rewritten whole on every change through
a temporary file and a rename, so a crash leaves either the old or the new version.
"""

from __future__ import annotations

import glob
import os
import secrets
import tempfile
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock, Timeout
from pydantic import BaseModel, Field, ValidationError

from orchestrate.crew.config import CHECKS_AGENT, CrewConfig, LoadedCrew
from orchestrate.crew.spec import Spec
from orchestrate.errors import (
    RunInUseError,
    RunNotFoundError,
    SettingsError,
    describe_validation_error,
)
from orchestrate.qa.records import QaRecord
from orchestrate.store.events import utc_now


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class TaskRecord(BaseModel):
    """What happened to one task."""

    agent: str
    role: str
    depends_on: list[str]
    state: str = "pending"
    started_at: datetime | None = None
    ended_at: datetime | None = None
    seconds: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0  # calls answered by the model, failed attempts included
    cached_calls: int = 0  # calls answered from the response cache
    cost: float = 0.0  # paid model calls, in the budget's currency
    attempts: int = 0
    files: list[str] = Field(default_factory=list)
    reason: str | None = None  # why it failed, was skipped or cancelled


class RunRecord(BaseModel):
    """The whole state of a run, as stored in ``run.json``."""

    id: str
    status: RunStatus = RunStatus.RUNNING
    pid: int = Field(default_factory=os.getpid)
    spec_title: str
    spec_text: str
    spec_source: str
    crew_file: str
    crew: dict[str, Any] = Field(default_factory=dict)  # the crew as it ran, agents and tasks
    model: str
    workers: int
    executor: str = "local"  # where its tasks ran last: "local" threads or "ray"
    max_tokens: int | None = None
    temperature: float | None = None
    currency: str | None = None  # of every cost in the record; None in runs before it
    adapter: str | None = None  # the LoRA adapter folder on the embedded model, if any
    resumes: int = 0  # how many times `orchestrate resume` picked the run up again
    started_at: datetime = Field(default_factory=utc_now)
    ended_at: datetime | None = None
    seconds: float | None = None
    critical_path: list[str] = Field(default_factory=list)
    critical_path_seconds: float | None = None
    tasks: dict[str, TaskRecord]
    files: list[str] = Field(default_factory=list)
    refused_files: list[str] = Field(default_factory=list)
    out_dir: str | None = None
    verdict: str | None = None  # the critic's: approve or request_changes
    requested_changes: list[str] = Field(default_factory=list)  # the critic's list
    qa: QaRecord | None = None  # every round of sandboxed checks and repairs
    failure: str | None = None  # the root cause, when the run failed

    @classmethod
    def for_crew(
        cls,
        run_id: str,
        spec: Spec,
        crew: LoadedCrew,
        *,
        model: str,
        workers: int,
        max_tokens: int,
        temperature: float,
        currency: str | None = None,
        adapter: Path | None = None,
    ) -> RunRecord:
        """The record of a new run of ``crew`` on ``spec``: every task pending."""
        graph = crew.config.graph()
        roles = {name: agent.role for name, agent in crew.config.agents.items()}
        roles[CHECKS_AGENT] = "Sandboxed checks"
        return cls(
            currency=currency,
            adapter=str(adapter) if adapter else None,
            id=run_id,
            spec_title=spec.title,
            spec_text=spec.text,
            spec_source=spec.source,
            crew_file=str(crew.source),
            crew=crew.config.model_dump(),
            model=model,
            workers=workers,
            max_tokens=max_tokens,
            temperature=temperature,
            tasks={
                name: TaskRecord(
                    agent=agent, role=roles[agent], depends_on=list(graph.dependencies(name))
                )
                for name, agent in crew.config.task_agents().items()
            },
        )

    def reopen(
        self,
        finished: Mapping[str, list[str]],
        *,
        model: str,
        workers: int,
        adapter: Path | None = None,
    ) -> None:
        """Make a stopped run live again in this process.

        ``finished`` maps each checkpointed task to its files; every other task goes
        back to pending, its timings cleared (its tokens stay: they were spent).
        """
        self.status, self.pid, self.resumes = RunStatus.RUNNING, os.getpid(), self.resumes + 1
        self.ended_at = self.failure = self.verdict = None
        self.requested_changes = []
        self.model, self.workers = model, workers
        self.adapter = str(adapter) if adapter else None
        for name, task in self.tasks.items():
            task.reason = None
            if name in finished:
                task.state, task.files = "succeeded", finished[name]
            else:
                task.state, task.files = "pending", []
                task.started_at = task.ended_at = task.seconds = None

    @property
    def prompt_tokens(self) -> int:
        return sum(task.prompt_tokens for task in self.tasks.values())

    @property
    def completion_tokens(self) -> int:
        return sum(task.completion_tokens for task in self.tasks.values())

    @property
    def llm_calls(self) -> int:
        return sum(task.llm_calls for task in self.tasks.values())

    @property
    def cached_calls(self) -> int:
        return sum(task.cached_calls for task in self.tasks.values())

    @property
    def cost(self) -> float:
        return sum(task.cost for task in self.tasks.values())

    def crew_config(self) -> CrewConfig:
        """The crew exactly as this run used it."""
        try:
            return CrewConfig.model_validate(self.crew)
        except ValidationError as exc:
            raise RunNotFoundError(
                f"run {self.id} does not record a usable crew: {describe_validation_error(exc)}"
            ) from exc

    def is_live(self) -> bool:
        """True while the run is running and the process that runs it is still alive."""
        return self.status is RunStatus.RUNNING and self.process_alive()

    def process_alive(self) -> bool:
        """True while the process that ran it last lives (it may be finishing up)."""
        try:
            process = psutil.Process(self.pid)
            started = datetime.fromtimestamp(process.create_time(), tz=self.started_at.tzinfo)
        except psutil.Error:
            return False
        # A recycled pid belongs to a process started after our run began.
        return started <= self.started_at


class RunFolder:
    """The files of one run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_json = path / "run.json"
        self.events_path = path / "events.jsonl"
        self.tasks_dir = path / "tasks"
        self.outputs_dir = path / "outputs"
        self.checkpoint_path = path / "checkpoint.sqlite3"

    @property
    def run_id(self) -> str:
        return self.path.name

    def save(self, record: RunRecord) -> None:
        """Replace run.json atomically."""
        _replace_atomically(self.run_json, record.model_dump_json(indent=2).encode("utf-8"))

    def load(self) -> RunRecord:
        try:
            return RunRecord.model_validate_json(self.run_json.read_bytes())
        except (OSError, ValidationError) as exc:
            raise RunNotFoundError(f"run {self.run_id} has no readable run.json: {exc}") from exc

    def claim(self) -> FileLock:
        """Hold the run's lock for as long as this process works on it."""
        lock = FileLock(self.path / ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RunInUseError(
                f"run {self.run_id} is being run by another process; wait for it to finish "
                f"or stop it first"
            ) from None
        return lock

    def write_task_output(self, task: str, text: str) -> Path:
        self.tasks_dir.mkdir(exist_ok=True)
        target = self.tasks_dir / f"{task}.md"
        _replace_atomically(target, text.encode("utf-8"))
        return target


def _replace_atomically(target: Path, payload: bytes) -> None:
    """Write through a temporary file and a rename: readers see old or new, never half.

    No fsync: these files describe the run for people and are rewritten often; what a
    resume relies on is the checkpoint, which is synced on every commit.
    """
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        Path(temp_name).replace(target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


class RunStore:
    """All runs under one folder (``./runs`` by default)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(self) -> RunFolder:
        run_id = f"{utc_now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        folder = RunFolder(self.root / run_id)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            folder.path.mkdir()
            folder.tasks_dir.mkdir()
            folder.outputs_dir.mkdir()
        except OSError as exc:
            raise SettingsError(
                f"cannot create a run folder in {self.root}: {exc.strerror}; "
                f"set ORCHESTRATE_RUNS_DIR to a writable folder"
            ) from exc
        return folder

    def list_runs(self) -> list[RunRecord]:
        """Every readable run, newest first; folders without a valid run.json are skipped."""
        if not self.root.is_dir():
            return []
        records = []
        for path in sorted(self.root.iterdir(), reverse=True):
            if (path / "run.json").is_file():
                try:
                    records.append(RunFolder(path).load())
                except RunNotFoundError:
                    continue
        return records

    def find(self, run_id: str) -> RunFolder:
        """The run whose id is ``run_id`` or starts with it (like a short git hash)."""
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise RunNotFoundError(f"'{run_id}' is not a run id; see `orchestrate runs`")
        exact = self.root / run_id
        if (exact / "run.json").is_file():
            return RunFolder(exact)
        pattern = f"{glob.escape(run_id)}*/run.json"
        matches = sorted(self.root.glob(pattern)) if self.root.is_dir() else []
        if len(matches) == 1:
            return RunFolder(matches[0].parent)
        if not matches:
            raise RunNotFoundError(
                f"no run '{run_id}' in {self.root}; `orchestrate runs` lists them"
            )
        names = ", ".join(match.parent.name for match in matches[:5])
        raise RunNotFoundError(f"'{run_id}' matches several runs ({names}); give more of the id")
