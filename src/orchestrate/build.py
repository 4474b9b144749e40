"""One `orchestrate build`: run the crew's task graph and keep a record of everything.

``BuildRun`` wires the pieces together: the executor decides when each task runs, the
agents module runs it through CrewAI, the workspace writes the files an answer carries,
and the run folder records state, events and outputs as they happen.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from orchestrate.agents import run_crew_task
from orchestrate.crew.config import LoadedCrew
from orchestrate.crew.spec import Spec
from orchestrate.errors import SecretFoundError, WriteRefusedError
from orchestrate.llm.adapter import CallRecord, OrchestrateLLM
from orchestrate.llm.backend import Backend
from orchestrate.safety.guards import SafetyGuards
from orchestrate.scheduler.executor import DagExecutor, ScheduleOutcome
from orchestrate.scheduler.lifecycle import TaskState
from orchestrate.store.events import Event, EventLog, EventType, utc_now
from orchestrate.store.runs import RunFolder, RunRecord, RunStatus, RunStore, TaskRecord
from orchestrate.workspace.blocks import parse_file_blocks
from orchestrate.workspace.staging import MergeResult, StagingAreas
from orchestrate.workspace.writer import Workspace, WrittenFile

EXIT_CODES = {RunStatus.SUCCEEDED: 0, RunStatus.FAILED: 1, RunStatus.INTERRUPTED: 130}
_VERDICT = re.compile(
    r"verdict\W{0,6}(approve[sd]?|request[\s_-]*changes|reject(?:ed)?)", re.IGNORECASE
)


class BuildObserver(Protocol):
    """Receives every event of a run, and token counts while a model is generating."""

    def on_event(self, event: Event) -> None: ...

    def on_progress(self, task: str, tokens: int) -> None: ...


@dataclass(frozen=True)
class BuildOptions:
    model: str
    workers: int
    max_tokens: int
    temperature: float
    runs_dir: Path
    out_dir: Path | None = None


@dataclass(frozen=True)
class BuildResult:
    record: RunRecord
    folder: RunFolder

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.record.status, 1)


class BuildRun:
    """Runs a crew over a spec once, recording the run under ``runs_dir``."""

    def __init__(
        self,
        spec: Spec,
        crew: LoadedCrew,
        backend: Backend,
        options: BuildOptions,
        observer: BuildObserver | None = None,
        guards: SafetyGuards | None = None,
    ) -> None:
        self.spec, self.backend = spec, backend
        self.crew, self.graph = crew.config, crew.graph
        self.options = options
        self.guards = guards or SafetyGuards()
        self.cancel = threading.Event()
        self.folder = RunStore(options.runs_dir).create()
        self.workspace = Workspace(self.folder.outputs_dir, lock_dir=self.guards.lock_dir)
        self.staging = StagingAreas(
            self.folder.path / "staging", self.workspace, scanner=self.guards.scanner
        )
        self.events = EventLog(self.folder.events_path)
        if observer is not None:
            self.events.subscribe(observer.on_event)
        self._observer = observer
        self._outputs: dict[str, str] = {}
        self._lock = threading.Lock()
        self.record = RunRecord(
            id=self.folder.run_id,
            spec_title=spec.title,
            spec_text=spec.text,
            spec_source=spec.source,
            crew_file=str(crew.source),
            crew=crew.config.model_dump(),
            model=options.model,
            workers=options.workers,
            tasks={
                name: TaskRecord(
                    agent=task.agent,
                    role=self.crew.agents[task.agent].role,
                    depends_on=list(task.context),
                )
                for name, task in self.crew.tasks.items()
            },
        )
        self.folder.save(self.record)

    @property
    def run_id(self) -> str:
        return self.folder.run_id

    def execute(self) -> BuildResult:
        """Run every task the graph allows; always leave a finished run.json behind."""
        self.events.emit(
            EventType.RUN_STARTED,
            run=self.run_id,
            spec=self.spec.title,
            model=self.options.model,
            workers=self.options.workers,
            tasks=list(self.graph.tasks),
        )
        started = time.perf_counter()
        executor = DagExecutor(
            self.graph,
            self._run_task,
            workers=self.options.workers,
            on_transition=self._on_transition,
            worker_limit=self.guards.worker_limit,
        )
        try:
            outcome = executor.run(self.cancel)
        except KeyboardInterrupt:
            self._finish(RunStatus.INTERRUPTED, time.perf_counter() - started)
            raise
        except BaseException as exc:
            self.events.emit(EventType.ERROR, task=None, message=f"{type(exc).__name__}: {exc}")
            self._finish(RunStatus.FAILED, time.perf_counter() - started)
            raise
        self._finish(_status_of(outcome), time.perf_counter() - started)
        return BuildResult(self.record, self.folder)

    def _run_task(self, name: str) -> None:
        task = self.crew.tasks[name]
        llm = OrchestrateLLM(
            backend=self.backend,
            task=name,
            agent=task.agent,
            max_tokens=self.options.max_tokens,
            temperature=self.options.temperature,
            cancel=self.cancel,
            on_call=self._on_call,
            on_progress=self._progress_reporter(name),
            spend_guard=self.guards.spend_guard,
        )
        try:
            answer = run_crew_task(
                task,
                self.crew.agents[task.agent],
                spec_text=self.spec.text,
                context=self._context_for(name),
                llm=llm,
                tools=self._tools_for(name, llm),
            )
            self.folder.write_task_output(name, answer)
            self._write_files(name, answer, task.output_file)
        except BaseException:
            self.staging.discard(name)  # a failed task's partial files never reach outputs/
            raise
        with self._lock:
            self._outputs[name] = answer
        self._record_merge(name, self.staging.merge(name))

    def _tools_for(self, task: str, llm: OrchestrateLLM) -> list[Any]:
        """File tools on the task's staging area, for a model that calls tools."""
        if not llm.supports_function_calling():
            return []
        from orchestrate.workspace.tools import workspace_tools

        return list(workspace_tools(self.staging.area(task)))

    def _context_for(self, name: str) -> str:
        sections = []
        with self._lock:
            for dependency in self.graph.dependencies(name):
                role = self.record.tasks[dependency].role
                sections.append(
                    f"## Output of '{dependency}' ({role})\n\n{self._outputs[dependency]}"
                )
        return "\n\n".join(sections)

    def _write_files(self, task: str, answer: str, output_file: str | None) -> None:
        parsed = parse_file_blocks(answer)
        blocks = [(block.path, block.content) for block in parsed.blocks]
        if output_file and answer.strip() and output_file not in {path for path, _ in blocks}:
            blocks.append((output_file, answer.strip() + "\n"))
        for problem in parsed.problems:
            self.events.emit(
                EventType.BLOCK_PROBLEM,
                task=task,
                line=problem.line,
                path=problem.path,
                reason=problem.reason,
            )
        area = self.staging.area(task)
        for path, content in blocks:
            try:
                staged = area.write(path, content)
            except WriteRefusedError as exc:
                if isinstance(exc, SecretFoundError):
                    self._secret_event(task, path, "refused", exc.findings)
                self._refused(task, path, str(exc))
                continue
            if staged.findings:
                self._secret_event(task, staged.path, "redacted", staged.findings)

    def _record_merge(self, task: str, merged: MergeResult) -> None:
        for path, reason in merged.refused:
            self._refused(task, path, reason)
        for conflict in merged.conflicts:
            self.events.emit(
                EventType.FILE_CONFLICT,
                task=task,
                path=conflict.path,
                winner=conflict.winner,
                loser=conflict.loser,
            )
        for written in merged.written:
            self._file_written(task, written)

    def _file_written(self, task: str, written: WrittenFile) -> None:
        self.events.emit(
            EventType.FILE_WRITTEN,
            task=task,
            path=written.path,
            bytes=written.size_bytes,
            replaced=written.replaced,
        )
        with self._lock:
            self.record.tasks[task].files.append(written.path)

    def _refused(self, task: str, path: str, reason: str) -> None:
        self.events.emit(EventType.FILE_REFUSED, task=task, path=path, reason=reason)
        with self._lock:
            self.record.refused_files.append(path)

    def _secret_event(self, task: str, path: str, action: str, findings: tuple[Any, ...]) -> None:
        self.events.emit(
            EventType.SECRET_FOUND,
            task=task,
            path=path,
            action=action,
            findings=[finding.as_event() for finding in findings],
        )

    def _on_call(self, call: CallRecord) -> None:
        self.events.emit(
            EventType.LLM_CALL,
            task=call.task,
            agent=call.agent,
            model=call.model,
            seconds=round(call.seconds, 3),
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            cost=call.cost,
        )
        with self._lock:
            record = self.record.tasks[call.task]
            record.llm_calls += 1
            record.prompt_tokens += call.prompt_tokens
            record.completion_tokens += call.completion_tokens

    def _progress_reporter(self, task: str) -> Callable[[int], None] | None:
        observer = self._observer
        if observer is None:
            return None
        return lambda tokens: observer.on_progress(task, tokens)

    def _on_transition(self, task: str, state: TaskState, reason: str | None) -> None:
        now = utc_now()
        with self._lock:
            record = self.record.tasks[task]
            record.state = state.value
            record.reason = reason
            if state is TaskState.RUNNING:
                record.started_at = now
            elif state.is_terminal and record.started_at is not None:
                record.ended_at = now
                record.seconds = round((now - record.started_at).total_seconds(), 3)
            self.folder.save(self.record)
        self.events.emit(
            EventType.TASK_STATE,
            task=task,
            agent=self.record.tasks[task].agent,
            state=state.value,
            reason=reason,
        )
        if state is TaskState.FAILED:
            self.events.emit(EventType.ERROR, task=task, message=reason)

    def _finish(self, status: RunStatus, seconds: float) -> None:
        with self._lock:
            record = self.record
            record.status = status
            record.ended_at = utc_now()
            record.seconds = round(seconds, 3)
            durations = {
                name: task.seconds or 0.0
                for name, task in record.tasks.items()
                if task.state == TaskState.SUCCEEDED
            }
            path = self.graph.critical_path(durations)
            record.critical_path = list(path.tasks)
            record.critical_path_seconds = round(path.length, 3)
            record.files = self.workspace.files()
            record.verdict = self._verdict()
            if self.options.out_dir is not None and record.files:
                record.out_dir = str(self._copy_outputs(self.options.out_dir))
            self.folder.save(record)
        self.events.emit(
            EventType.RUN_FINISHED,
            status=record.status.value,
            seconds=record.seconds,
            critical_path_seconds=record.critical_path_seconds,
            files=len(record.files),
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
        )
        self.events.close()

    def _verdict(self) -> str | None:
        for name, task in self.crew.tasks.items():
            if task.agent == "critic" and name in self._outputs:
                match = _VERDICT.search(self._outputs[name])
                if match:
                    word = match.group(1).lower()
                    return "approve" if word.startswith("approve") else "request_changes"
        return None

    def _copy_outputs(self, out_dir: Path) -> Path:
        """Copy the generated files to --out through the same confined writer."""
        destination = Workspace(out_dir, lock_dir=self.guards.lock_dir)
        for relative in self.workspace.files():
            source = self.workspace.root / relative
            try:
                destination.write(relative, source.read_text(encoding="utf-8"))
            except (WriteRefusedError, UnicodeDecodeError) as exc:
                self.events.emit(
                    EventType.FILE_REFUSED, task=None, path=relative, reason=f"--out: {exc}"
                )
        return destination.root


def _status_of(outcome: ScheduleOutcome) -> RunStatus:
    if outcome.cancelled:
        return RunStatus.INTERRUPTED
    if outcome.failed:
        return RunStatus.FAILED
    return RunStatus.SUCCEEDED
