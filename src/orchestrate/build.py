"""One `orchestrate build` (or `resume`): run the crew's task graph durably.

``BuildRun`` wires the pieces together. The executor decides when each task runs and
retries what is worth retrying; the agents module runs a task through CrewAI; when a
task succeeds, its answer and files are written and it is checkpointed before any
dependent starts, so a crash (even ``kill -9``) loses at most the tasks in flight and
``BuildRun.resume`` carries on from there. The run folder records state and events as
they happen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestrate.agents import run_crew_task, task_description
from orchestrate.crew.config import CHECKS_TASK, CrewConfig, LoadedCrew
from orchestrate.crew.spec import Spec
from orchestrate.errors import (
    OrchestrateError,
    TaskCancelledError,
    UnparseableOutputError,
)
from orchestrate.llm.adapter import CallRecord, OrchestrateLLM
from orchestrate.llm.backend import Backend, Completion
from orchestrate.llm.models import ModelRouter
from orchestrate.llm.replay import TaskInputs
from orchestrate.qa.records import CheckReport, QaRecord, QaRound, RepairRecord, Verdict
from orchestrate.qa.verdict import parse_verdict
from orchestrate.safety.guards import SafetyGuards
from orchestrate.scheduler.executor import (
    DagExecutor,
    ExecutionListener,
    ScheduleOutcome,
    TaskAttempt,
    describe_error,
)
from orchestrate.scheduler.lifecycle import TaskState
from orchestrate.scheduler.policy import TaskPolicy
from orchestrate.scheduler.ray_tasks import ModelEvent, RemoteRequest
from orchestrate.store.checkpoint import Checkpoint, FinishedTask
from orchestrate.store.events import Event, EventLog, EventType, utc_now
from orchestrate.store.history import DurationHistory, task_weights
from orchestrate.store.runs import RunFolder, RunRecord, RunStatus, RunStore
from orchestrate.workspace.outputs import OutputWriter

if TYPE_CHECKING:
    from orchestrate.memory.recall import RunMemory
    from orchestrate.memory.store import Memory
    from orchestrate.scheduler.ray_executor import RayTasks

logger = logging.getLogger(__name__)

EXIT_CODES = {RunStatus.SUCCEEDED: 0, RunStatus.FAILED: 1, RunStatus.INTERRUPTED: 130}


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
    fail_fast: bool = False
    policy: TaskPolicy = field(default_factory=TaskPolicy)
    history_path: Path | None = None  # per-agent durations for priorities; None: none kept
    currency: str = "USD"  # of the budget, and so of every cost recorded
    memory_dir: Path | None = None  # long-term memory to recall from and add to; None: none
    memory_tokens: int = 1024  # most tokens of recalled memories per task
    memory_top_k: int = 3  # most memories recalled per task
    adapter: Path | None = None  # the LoRA adapter on the embedded model, kept in run.json


@dataclass(frozen=True)
class BuildResult:
    record: RunRecord
    folder: RunFolder

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.record.status, 1)


@dataclass
class _AttemptUsage:
    """Model calls made by one attempt, to tell real model time from cache hits."""

    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replayable: bool = True  # every call answered by the task's own model, without error


@dataclass(frozen=True)
class _Answer:
    text: str
    seconds: float
    usage: _AttemptUsage = field(default_factory=_AttemptUsage)


class BuildRun(ExecutionListener):
    """Runs a crew over a spec, recording the run in its folder; resumable."""

    def __init__(
        self,
        folder: RunFolder,
        record: RunRecord,
        crew: CrewConfig,
        models: ModelRouter | Backend,
        options: BuildOptions,
        observer: BuildObserver | None = None,
        guards: SafetyGuards | None = None,
    ) -> None:
        self.folder, self.record, self.crew = folder, record, crew
        self.guards = guards or SafetyGuards()
        self.graph = crew.graph()
        self.options = options
        self.models = models if isinstance(models, ModelRouter) else ModelRouter.single(models)
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._run_lock = folder.claim()
        self.checkpoint = Checkpoint(folder.checkpoint_path)
        self.events = EventLog(folder.events_path)
        if observer is not None:
            self.events.subscribe(observer.on_event)
        self._observer = observer
        self.outputs = OutputWriter(
            folder.outputs_dir, folder.path / "staging", self.events, self.guards
        )
        self._history = DurationHistory(options.history_path) if options.history_path else None
        self._answers = {name: done.answer for name, done in self.checkpoint.finished().items()}
        self._restored: set[str] = set()  # tasks done by an earlier process of this run
        # A resumed run's makespan adds up its sessions, not the idle time between them.
        self._earlier_seconds = record.seconds or 0.0
        self._memory = self._open_memory()
        # Set by the CLI for --executor ray: attempts then run as Ray tasks.
        self.remote: RayTasks | None = None

    @classmethod
    def start(
        cls,
        spec: Spec,
        crew: LoadedCrew,
        models: ModelRouter | Backend,
        options: BuildOptions,
        observer: BuildObserver | None = None,
        guards: SafetyGuards | None = None,
    ) -> BuildRun:
        """Create a new run folder for ``spec`` and prepare to run the whole crew."""
        folder = RunStore(options.runs_dir).create()
        record = RunRecord.for_crew(
            folder.run_id,
            spec,
            crew,
            model=options.model,
            workers=options.workers,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            currency=options.currency,
            adapter=options.adapter,
        )
        folder.save(record)
        return cls(folder, record, crew.config, models, options, observer, guards)

    @classmethod
    def resume(
        cls,
        folder: RunFolder,
        models: ModelRouter | Backend,
        options: BuildOptions,
        observer: BuildObserver | None = None,
        guards: SafetyGuards | None = None,
    ) -> BuildRun:
        """Reopen an unfinished run: its checkpointed tasks stay done, the rest run again."""
        record = folder.load()
        crew = record.crew_config()
        run = cls(folder, record, crew, models, options, observer, guards)
        run._reset_unfinished_tasks()
        return run

    @property
    def run_id(self) -> str:
        return self.folder.run_id

    @property
    def finished_tasks(self) -> list[str]:
        return [name for name in self.graph.tasks if name in self._answers]

    def execute(self) -> BuildResult:
        """Run every task the graph allows; always leave a finished run.json behind."""
        self._announce()
        started = time.perf_counter()
        executor: DagExecutor[_Answer] = DagExecutor(
            self.graph,
            self._run_task,
            workers=self.options.workers,
            commit=self._commit,
            policies=self.crew.policies(self.options.policy),
            listener=self,
            priority=self.graph.remaining_path(self.estimated_seconds()),
            fail_fast=self.options.fail_fast,
            done=set(self._answers),
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
        self.record.failure = outcome.failure_summary()
        self._finish(_status_of(outcome), time.perf_counter() - started)
        return BuildResult(self.record, self.folder)

    def estimated_seconds(self) -> dict[str, float]:
        """Each task's expected duration, learned from earlier runs (1.0 each without)."""
        task_agents = self.crew.task_agents()
        known = {}
        if self._history is not None:
            known = self._history.estimates(sorted(set(task_agents.values())), self.record.model)
        return task_weights(task_agents, known)

    def _announce(self) -> None:
        event = EventType.RUN_RESUMED if self.record.resumes else EventType.RUN_STARTED
        self.record.executor = "ray" if self.remote is not None else "local"
        self.folder.save(self.record)
        self.events.emit(
            event,
            run=self.run_id,
            spec=self.record.spec_title,
            model=self.options.model,
            workers=self.options.workers,
            executor=self.record.executor,
            tasks=list(self.graph.tasks),
            finished=self.finished_tasks,
        )

    def _run_task(self, attempt: TaskAttempt) -> _Answer:
        if attempt.task == CHECKS_TASK:
            return self._run_checks(attempt)
        name = attempt.task
        task = self.crew.tasks[name]
        context = self._context_for(name)
        if self._memory is not None:
            recalled = self._memory.context_for(name, task.agent)
            context = "\n\n".join(part for part in (context, recalled) if part)
        inputs = self._task_inputs(name, context)
        usage = _AttemptUsage()
        if attempt.number == 1:  # like the response cache, a retry never replays
            replayed = self._replay(name, inputs, usage)
            if replayed is not None:
                return replayed
        if self.remote is not None:  # the model runs on a Ray worker; the rest stays here
            return self._run_remote(self.remote, attempt, context, inputs, usage)
        llm = self._llm(name, task.agent, attempt, usage)
        started = time.perf_counter()
        try:
            answer = run_crew_task(
                task,
                self.crew.agents[task.agent],
                spec_text=self.record.spec_text,
                context=context,
                llm=llm,
                tools=self._tools_for(name, llm),
            )
            if not answer.strip():
                raise UnparseableOutputError("the model returned an empty answer")
        except BaseException:
            self.outputs.discard(name)  # a failed attempt's files never reach outputs/
            raise
        self._keep_for_replay(inputs, answer, usage)
        return _Answer(answer, time.perf_counter() - started, usage)

    def _llm(self, task: str, agent: str, attempt: TaskAttempt, usage: _AttemptUsage) -> Any:
        return OrchestrateLLM(
            backend=self.models.for_agent(agent),
            task=task,
            agent=agent,
            max_tokens=self.options.max_tokens,
            temperature=self.options.temperature,
            cancel=attempt.cancel,
            on_call=lambda call: self._on_call(call, usage),
            on_progress=self._progress_reporter(task),
            read_cache=attempt.number == 1,
            on_event=lambda kind, fields: self._on_model_event(task, kind, fields),
        )

    def _run_remote(
        self,
        remote: RayTasks,
        attempt: TaskAttempt,
        context: str,
        inputs: TaskInputs,
        usage: _AttemptUsage,
    ) -> _Answer:
        """Carry out an attempt on Ray; its model calls are recorded here when it returns."""
        name = attempt.task
        task = self.crew.tasks[name]
        request = RemoteRequest(
            task_name=name,
            attempt=attempt.number,
            task=task,
            agent=self.crew.agents[task.agent],
            model=self.models.agent_models.get(task.agent, self.models.default_model),
            spec_text=self.record.spec_text,
            context=context,
            max_tokens=self.options.max_tokens,
            temperature=self.options.temperature,
        )
        started = time.perf_counter()
        answer = remote.run(attempt, request, lambda item: self._on_remote(name, item, usage))
        if not answer.strip():
            raise UnparseableOutputError("the model returned an empty answer")
        self._keep_for_replay(inputs, answer, usage)
        return _Answer(answer, time.perf_counter() - started, usage)

    def _on_remote(self, task: str, item: CallRecord | ModelEvent, usage: _AttemptUsage) -> None:
        if isinstance(item, ModelEvent):
            self._on_model_event(task, item.kind, item.fields)
            return
        self._on_call(item, usage)
        progress = self._progress_reporter(task)
        if progress is not None and item.completion_tokens:
            progress(item.completion_tokens)

    def _run_checks(self, attempt: TaskAttempt) -> _Answer:
        """The QA stage: sandboxed checks of outputs/, with repair rounds between."""
        from orchestrate.qa.stage import QaStage

        checks = self.crew.checks
        assert checks is not None  # the graph has a checks node only when it is set
        usage = _AttemptUsage()
        with self._lock:  # a retried or resumed stage starts its account afresh
            self.record.qa = QaRecord(repair_rounds_allowed=checks.repair_rounds)
            self.record.tasks[CHECKS_TASK].files = []
        started = time.perf_counter()

        def repair(number: int, report: CheckReport) -> RepairRecord:
            return self._repair(attempt, usage, number, report)

        stage = QaStage(checks, self.folder.outputs_dir, repair=repair, on_round=self._on_qa_round)
        text = stage.run(attempt.cancel)
        return _Answer(text, time.perf_counter() - started, usage)

    def _repair(
        self, attempt: TaskAttempt, usage: _AttemptUsage, number: int, report: CheckReport
    ) -> RepairRecord:
        """The repair agent's fix for a failed round, written to outputs/ at once."""
        from orchestrate.qa.stage import project_sources, repair_task

        checks = self.crew.checks
        assert checks is not None and checks.repair_agent is not None
        agent = checks.repair_agent
        area = f"repair_{number}"  # its files are attributed to the round that wrote them
        started = time.perf_counter()
        try:
            answer = run_crew_task(
                repair_task(agent, report),
                self.crew.agents[agent],
                spec_text=self.record.spec_text,
                context=project_sources(self.folder.outputs_dir),
                llm=self._llm(CHECKS_TASK, agent, attempt, usage),
            )
        except TaskCancelledError:
            raise
        except OrchestrateError as exc:  # the round is lost, not the run
            return RepairRecord(agent=agent, error=describe_error(exc))
        self.folder.write_task_output(area, answer)
        files = self.outputs.write_answer(area, answer, None)
        with self._lock:
            self.record.tasks[CHECKS_TASK].files.extend(files)
        seconds = round(time.perf_counter() - started, 3)
        error = None if files else "the answer carried no files"
        return RepairRecord(agent=agent, files=files, seconds=seconds, error=error)

    def _on_qa_round(self, qa_round: QaRound) -> None:
        with self._lock:
            assert self.record.qa is not None
            self.record.qa.rounds.append(qa_round)
            self.folder.save(self.record)
        self.events.emit(EventType.CHECKS_RAN, task=CHECKS_TASK, **qa_round.event_fields())
        if qa_round.repair is not None:
            self.events.emit(
                EventType.REPAIR_FINISHED,
                task=CHECKS_TASK,
                round=qa_round.number,
                agent=qa_round.repair.agent,
                files=qa_round.repair.files,
                error=qa_round.repair.error,
            )

    def _task_inputs(self, name: str, context: str) -> TaskInputs:
        task = self.crew.tasks[name]
        agent = self.crew.agents[task.agent]
        return TaskInputs(
            model_identity=self.models.for_agent(task.agent).identity,
            role=agent.role,
            goal=agent.goal,
            backstory=agent.backstory,
            prompt=task_description(task, self.record.spec_text),
            expected_output=task.expected_output,
            context=context,
            max_tokens=self.options.max_tokens,
            temperature=self.options.temperature,
        )

    def _replay(self, name: str, inputs: TaskInputs, usage: _AttemptUsage) -> _Answer | None:
        """An identical earlier task's answer, recorded as one cached model call."""
        replay = self.models.replay
        started = time.perf_counter()
        earlier = replay.recall(inputs) if replay is not None else None
        if earlier is None:
            return None
        task = self.crew.tasks[name]
        self._on_call(
            CallRecord(
                task=name,
                agent=task.agent,
                model=self.models.for_agent(task.agent).name,
                seconds=time.perf_counter() - started,
                prompt_tokens=earlier.prompt_tokens,
                completion_tokens=earlier.completion_tokens,
                cached=True,
            ),
            usage,
        )
        return _Answer(earlier.text, time.perf_counter() - started, usage)

    def _keep_for_replay(self, inputs: TaskInputs, answer: str, usage: _AttemptUsage) -> None:
        replay = self.models.replay
        if replay is None or not usage.calls or not usage.replayable:
            return
        replay.keep(inputs, Completion(answer, usage.prompt_tokens, usage.completion_tokens))

    def _tools_for(self, task: str, llm: OrchestrateLLM) -> list[Any]:
        """File tools on the task's staging area, for a model that calls tools."""
        if not llm.supports_function_calling():
            return []
        from orchestrate.workspace.tools import workspace_tools

        return list(workspace_tools(self.outputs.area(task)))

    def _commit(self, name: str, answer: _Answer) -> None:
        """Make a task's result durable: its answer and files first, then the checkpoint."""
        self.folder.write_task_output(name, answer.text)
        if name == CHECKS_TASK:  # its account holds output, not files; repairs wrote theirs
            files = list(self.record.tasks[name].files)
        else:
            files = self.outputs.write_answer(name, answer.text, self.crew.tasks[name].output_file)
        with self._lock:
            self._answers[name] = answer.text
            record = self.record.tasks[name]
            record.files = files
            self.record.refused_files.extend(self.outputs.take_refused(name))
        self.checkpoint.record(
            FinishedTask(
                task=name,
                answer=answer.text,
                files=files,
                seconds=round(answer.seconds, 3),
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                llm_calls=record.llm_calls,
                cached_calls=record.cached_calls,
                attempts=record.attempts,
                finished_at=utc_now().isoformat(),
            )
        )
        if name == CHECKS_TASK:
            return
        agent = self.crew.tasks[name].agent
        if self._history is not None and answer.usage.calls and not answer.usage.cached:
            self._history.record(agent, self.record.model, answer.seconds)
        if self._memory is not None:
            self._memory.remember(name, agent, record.role, answer.text)

    def _open_memory(self) -> RunMemory | None:
        if self.options.memory_dir is None:
            return None
        from orchestrate.memory.recall import RunMemory

        return RunMemory(
            self.options.memory_dir,
            run_id=self.run_id,
            spec_title=self.record.spec_title,
            spec_text=self.record.spec_text,
            token_budget=self.options.memory_tokens,
            top_k=self.options.memory_top_k,
            on_recalled=self._on_recalled,
        )

    def _on_recalled(self, task: str, memories: list[Memory], tokens: int) -> None:
        """Record which memories a task was given (their ids and runs, not their text)."""
        self.events.emit(
            EventType.MEMORY_RECALLED,
            task=task,
            ids=[memory.id for memory in memories],
            runs=sorted({memory.run for memory in memories}),
            approved=sum(memory.approved for memory in memories),
            tokens=tokens,
        )

    def _context_for(self, name: str) -> str:
        sections = []
        with self._lock:
            for dependency in self.graph.dependencies(name):
                role = self.record.tasks[dependency].role
                sections.append(
                    f"## Output of '{dependency}' ({role})\n\n{self._answers[dependency]}"
                )
        return "\n\n".join(sections)

    def _on_call(self, call: CallRecord, usage: _AttemptUsage) -> None:
        usage.calls += 1
        usage.cached += call.cached
        usage.prompt_tokens += call.prompt_tokens
        usage.completion_tokens += call.completion_tokens
        task_model = self.models.for_agent(call.agent).name
        usage.replayable &= call.error is None and call.model == task_model
        self.events.emit(
            EventType.LLM_CALL,
            task=call.task,
            agent=call.agent,
            model=call.model,
            seconds=round(call.seconds, 3),
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            cached=call.cached,
            error=call.error,
            cost=call.cost,
        )
        with self._lock:
            record = self.record.tasks[call.task]
            if call.cached:
                record.cached_calls += 1
                return
            record.llm_calls += 1
            record.prompt_tokens += call.prompt_tokens
            record.completion_tokens += call.completion_tokens
            record.cost += call.cost

    def _on_model_event(self, task: str, kind: str, fields: dict[str, Any]) -> None:
        """A retry, a circuit change or a fallback on the way to one of the task's answers."""
        self.events.emit(EventType(kind), task=task, **fields)

    def _progress_reporter(self, task: str) -> Callable[[int], None] | None:
        observer = self._observer
        if observer is None:
            return None
        return lambda tokens: observer.on_progress(task, tokens)

    # ExecutionListener: the executor reports here as the run unfolds.

    def on_transition(self, task: str, state: TaskState, reason: str | None) -> None:
        now = utc_now()
        with self._lock:
            record = self.record.tasks[task]
            record.state = state.value
            record.reason = reason
            if state is TaskState.RUNNING and record.started_at is None:
                record.started_at = now
            elif state.is_terminal and record.started_at and task not in self._restored:
                record.ended_at = now
                record.seconds = round((now - record.started_at).total_seconds(), 3)
            if state is not TaskState.READY:  # "ready" is fleeting; save what lasts
                self.folder.save(self.record)
        self.events.emit(
            EventType.TASK_STATE, task=task, agent=record.agent, state=state.value, reason=reason
        )
        if state is TaskState.FAILED:
            self.events.emit(EventType.ERROR, task=task, message=reason)

    def on_attempt(self, task: str, number: int, max_attempts: int) -> None:
        with self._lock:
            self.record.tasks[task].attempts += 1
        self.events.emit(
            EventType.TASK_ATTEMPT, task=task, attempt=number, max_attempts=max_attempts
        )

    def on_attempt_failed(
        self, task: str, number: int, reason: str, retry_in: float | None
    ) -> None:
        self.events.emit(
            EventType.ATTEMPT_FAILED,
            task=task,
            attempt=number,
            reason=reason,
            retry_in_seconds=None if retry_in is None else round(retry_in, 3),
        )

    def _reset_unfinished_tasks(self) -> None:
        """Mark a resumed run live again; tasks without a checkpoint start from scratch."""
        finished = self.checkpoint.finished()
        self._restored = set(finished)
        self.record.reopen(
            {name: done.files for name, done in finished.items()},
            model=self.options.model,
            workers=self.options.workers,
            adapter=self.options.adapter,
        )
        self.folder.save(self.record)

    def _finish(self, status: RunStatus, seconds: float) -> None:
        verdict = self._verdict()
        if self._memory is not None:  # before the run reads as finished to other processes
            interrupted = status is RunStatus.INTERRUPTED  # then it must stop promptly
            self._memory.finish(
                verdict.decision if verdict else None,
                wait_seconds=5.0 if interrupted else None,
            )
        with self._lock:
            record = self.record
            record.status = status
            record.ended_at = utc_now()
            record.seconds = round(self._earlier_seconds + seconds, 3)
            durations = {
                name: task.seconds or 0.0
                for name, task in record.tasks.items()
                if task.state == TaskState.SUCCEEDED
            }
            path = self.graph.critical_path(durations)
            record.critical_path = list(path.tasks)
            record.critical_path_seconds = round(path.length, 3)
            record.files = self.outputs.files()
            record.verdict = verdict.decision if verdict else None
            record.requested_changes = verdict.changes if verdict else []
            if self.options.out_dir is not None and record.files:
                record.out_dir = str(self.outputs.copy_to(self.options.out_dir))
            self.folder.save(record)
        self.events.emit(
            EventType.RUN_FINISHED,
            status=record.status.value,
            seconds=record.seconds,
            critical_path_seconds=record.critical_path_seconds,
            files=len(record.files),
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            failure=record.failure,
        )
        self.events.close()
        self.checkpoint.close()
        self._write_report()
        self._run_lock.release()

    def _write_report(self) -> None:
        """``report.html``; one that cannot be written costs a warning, never the run."""
        from orchestrate.observe.report import write_report

        try:
            write_report(self.folder)
        except Exception as exc:  # the run's results are saved already; the page is extra
            logger.warning("could not write %s/report.html: %s", self.folder.path, exc)

    def _verdict(self) -> Verdict | None:
        """The critic's structured verdict, from its review."""
        for name, task in self.crew.tasks.items():
            if task.agent == "critic" and name in self._answers:
                verdict = parse_verdict(self._answers[name])
                if verdict is not None:
                    return verdict
        return None


def _status_of(outcome: ScheduleOutcome) -> RunStatus:
    if outcome.cancelled:
        return RunStatus.INTERRUPTED
    if outcome.failed:
        return RunStatus.FAILED
    return RunStatus.SUCCEEDED
