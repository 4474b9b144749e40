"""`orchestrate build`: run the crew on a spec and report how it went."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from orchestrate.cli.common import (
    configure_logging,
    console,
    err_console,
    format_seconds,
    print_checks,
    reports_errors,
    styled_state,
)
from orchestrate.cli.executors import (
    EXECUTOR_HELP,
    RAY_ADDRESS_HELP,
    join_cluster,
    ray_tasks,
)
from orchestrate.cli.signals import stop_on_signals

if TYPE_CHECKING:
    from collections.abc import Mapping

    from orchestrate.build import BuildOptions, BuildResult, BuildRun
    from orchestrate.crew.config import CrewConfig, LoadedCrew
    from orchestrate.llm.models import ModelRouter
    from orchestrate.observe.telemetry import RunTelemetry
    from orchestrate.safety.guards import SafetyGuards
    from orchestrate.settings import Settings
    from orchestrate.store.runs import RunRecord


@reports_errors
def build(
    spec: str | None = typer.Argument(
        None, help="The spec: text in quotes, or a .md/.yaml file.", show_default=False
    ),
    crew: Path | None = typer.Option(None, "--crew", help="Crew YAML (default: bundled crew)."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="BACKEND:NAME: embedded:smollm2-135m, ollama:MODEL, openai:MODEL or scripted:FILE.",
    ),
    fallback: list[str] | None = typer.Option(
        None,
        "--fallback",
        metavar="MODEL",
        help="A model to try when the main one fails; repeat for a chain.",
    ),
    workers: int | None = typer.Option(None, "--workers", help="Tasks run at the same time."),
    out: Path | None = typer.Option(None, "--out", help="Also copy the generated files here."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Most tokens per answer."),
    fail_fast: bool = typer.Option(
        False, "--fail-fast", help="Stop the whole run when a task fails for good."
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Ask the model every time; ignore the response cache."
    ),
    no_memory: bool = typer.Option(
        False, "--no-memory", help="Neither recall earlier runs' work nor remember this run's."
    ),
    resume: str | None = typer.Option(
        None, "--resume", metavar="RUN_ID", help="Finish an interrupted run instead."
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        help="Serve this run's metrics on 127.0.0.1:PORT while it runs (0: any free port).",
    ),
    pushgateway: str | None = typer.Option(
        None, "--pushgateway", metavar="URL", help="Push the run's metrics here when it ends."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON result, no table."),
    adapter: Path | None = typer.Option(
        None,
        "--adapter",
        metavar="DIR",
        help="A LoRA adapter (from orchestrate finetune) loaded on the embedded model.",
    ),
    executor: str | None = typer.Option(
        None, "--executor", metavar="local|ray", help=EXECUTOR_HELP
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", metavar="ADDRESS", help=RAY_ADDRESS_HELP
    ),
    no_qa_run: bool = typer.Option(
        False, "--no-qa-run", help="Do not run the generated project's checks in the sandbox."
    ),
    repair_rounds: int | None = typer.Option(
        None,
        "--repair-rounds",
        min=0,
        max=10,
        help="Repair rounds when the generated checks fail (default: the crew's, 1).",
    ),
) -> None:
    """Build a project from SPEC with the crew, running independent tasks in parallel.

    After the tests are written, the project's checks run in a sandbox; failures go back
    to the developer for repair rounds, and the results to the critic.

    Example: orchestrate build examples/specs/notes-api.md --workers 3 --out ./notes
    """
    from orchestrate.crew.config import load_crew
    from orchestrate.crew.spec import load_spec
    from orchestrate.errors import CrewError, UserInputError
    from orchestrate.settings import load_settings

    if resume is not None:
        if spec is not None or crew is not None or no_qa_run or repair_rounds is not None:
            raise UserInputError(
                "--resume continues a run with its own spec, crew and checks; drop SPEC, "
                "--crew, --no-qa-run and --repair-rounds"
            )
        exits = _Exits(metrics_port, pushgateway, json_output)
        _resume(
            resume,
            model,
            workers,
            out,
            fail_fast,
            no_cache,
            exits,
            adapter,
            no_memory,
            executor=executor,
            ray_address=ray_address,
        )
        return
    if spec is None:
        raise UserInputError("give a SPEC (text or a file), or --resume RUN_ID")
    settings = load_settings(
        model=model,
        fallbacks=fallback or None,
        workers=workers,
        crew_file=crew,
        max_tokens=max_tokens,
        metrics_port=metrics_port,
        pushgateway=pushgateway,
        embedded_adapter=adapter,
        executor=executor,
        ray_address=ray_address,
    )
    _check_out(out)
    _check_adapter(settings, adapter)
    configure_logging(settings.log_level)
    join_cluster(settings)  # before the run folder exists: a bad cluster leaves no run
    with _telemetry(settings, use_cache=not no_cache, quiet=json_output) as telemetry:
        the_spec = load_spec(spec)
        try:
            loaded_crew = _with_checks(load_crew(settings.crew_file), no_qa_run, repair_rounds)
        except CrewError as exc:
            telemetry.crew_rejected(exc)
            raise
        models, guards = _prepare_models(
            settings, loaded_crew.config, use_cache=not no_cache, telemetry=telemetry
        )
        from orchestrate.build import BuildRun

        options = _options(settings, out, fail_fast, no_memory=no_memory)
        view = _progress_view(loaded_crew.config.task_agents(), quiet=json_output)
        remote = ray_tasks(settings, models, guards)
        run = BuildRun.start(the_spec, loaded_crew, models, options, observer=view, guards=guards)
        run.remote = remote
        _execute(run, view, json_output, telemetry, models.models)


@reports_errors
def resume(
    run_id: str = typer.Argument(..., help="The run to finish (a prefix of its id is enough)."),
    model: str | None = typer.Option(
        None, "--model", help="Run the unfinished tasks on another model."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Tasks run at the same time."),
    out: Path | None = typer.Option(None, "--out", help="Also copy the generated files here."),
    fail_fast: bool = typer.Option(
        False, "--fail-fast", help="Stop the whole run when a task fails for good."
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Ask the model every time; ignore the response cache."
    ),
    no_memory: bool = typer.Option(
        False, "--no-memory", help="Neither recall earlier runs' work nor remember this run's."
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        help="Serve this run's metrics on 127.0.0.1:PORT while it runs (0: any free port).",
    ),
    pushgateway: str | None = typer.Option(
        None, "--pushgateway", metavar="URL", help="Push the run's metrics here when it ends."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON result, no table."),
    adapter: Path | None = typer.Option(
        None,
        "--adapter",
        metavar="DIR",
        help="A LoRA adapter for the embedded model (default: the one the run started with).",
    ),
    executor: str | None = typer.Option(
        None, "--executor", metavar="local|ray", help=EXECUTOR_HELP
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", metavar="ADDRESS", help=RAY_ADDRESS_HELP
    ),
) -> None:
    """Finish an interrupted or failed run: tasks that finished keep their results.

    Example: orchestrate resume 20261203-101500 --workers 2
    """
    _resume(
        run_id,
        model,
        workers,
        out,
        fail_fast,
        no_cache,
        _Exits(metrics_port, pushgateway, json_output),
        adapter,
        no_memory=no_memory,
        executor=executor,
        ray_address=ray_address,
    )


@dataclass(frozen=True)
class _Exits:
    """Where a run's results go besides the run folder: metrics, and the --json result."""

    metrics_port: int | None
    pushgateway: str | None
    json_output: bool


def _resume(
    run_id: str,
    model: str | None,
    workers: int | None,
    out: Path | None,
    fail_fast: bool,
    no_cache: bool,
    exits: _Exits,
    adapter: Path | None = None,
    no_memory: bool = False,
    *,
    executor: str | None = None,
    ray_address: str | None = None,
) -> None:
    from orchestrate.settings import load_settings
    from orchestrate.store.runs import RunStatus, RunStore

    settings = load_settings()
    folder = RunStore(settings.runs_dir).find(run_id)
    record = folder.load()
    if record.status is RunStatus.SUCCEEDED:
        console.print(f"run {record.id} already succeeded; nothing to resume")
        raise typer.Exit(0)
    settings = load_settings(
        model=model or record.model,
        workers=workers or record.workers,
        max_tokens=record.max_tokens,
        temperature=record.temperature,
        metrics_port=exits.metrics_port,
        pushgateway=exits.pushgateway,
        embedded_adapter=adapter or (Path(record.adapter) if record.adapter else None),
        executor=executor,
        ray_address=ray_address,
    )
    _check_out(out)
    _check_adapter(settings, adapter)
    configure_logging(settings.log_level)
    join_cluster(settings)
    with _telemetry(settings, use_cache=not no_cache, quiet=exits.json_output) as telemetry:
        crew = record.crew_config()
        models, guards = _prepare_models(
            settings, crew, use_cache=not no_cache, telemetry=telemetry
        )
        from orchestrate.build import BuildRun

        view = _progress_view(crew.task_agents(), quiet=exits.json_output)
        options = _options(settings, out, fail_fast, no_memory=no_memory)
        remote = ray_tasks(settings, models, guards)
        run = BuildRun.resume(folder, models, options, observer=view, guards=guards)
        run.remote = remote
        _execute(run, view, exits.json_output, telemetry, models.models)


def _with_checks(crew: LoadedCrew, no_qa_run: bool, repair_rounds: int | None) -> LoadedCrew:
    """The crew with its QA stage as the flags want it: off, or with N repair rounds."""
    from orchestrate.errors import CrewError

    config = crew.config
    if no_qa_run:
        config = config.without_checks()
    elif repair_rounds is not None:
        if config.checks is None:
            raise CrewError(
                f"--repair-rounds needs a crew with a 'checks' section; {crew.source} has none"
            )
        config = config.with_repair_rounds(repair_rounds)
    return crew._replace(config=config, graph=config.graph())


def _check_out(out: Path | None) -> None:
    from orchestrate.errors import UserInputError

    if out is not None and out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; give a folder (it is created if missing)")


def _check_adapter(settings: Settings, adapter: Path | None) -> None:
    """An --adapter flag needs an embedded model to load it on."""
    from orchestrate.errors import UserInputError

    if adapter is not None and not any(
        name.startswith("embedded:") for name in settings.model_chain()
    ):
        raise UserInputError(
            f"--adapter {adapter} needs an embedded model (--model embedded:smollm2-135m); "
            f"{settings.model} has its own weights"
        )


@contextmanager
def _telemetry(settings: Settings, *, use_cache: bool, quiet: bool) -> Iterator[RunTelemetry]:
    """Metrics and traces for the command: served while it runs, pushed when it ends."""
    from orchestrate.observe.telemetry import RunTelemetry

    def warn(message: str) -> None:
        err_console.print(f"[yellow]warning[/]: {message}", highlight=False)

    telemetry = RunTelemetry(
        settings,
        metrics_port=settings.metrics_port,
        pushgateway=settings.pushgateway,
        cache_enabled=use_cache and settings.cache,
        warn=warn,
    )
    with telemetry:
        if telemetry.metrics_url and not quiet:
            err_console.print(f"metrics: {telemetry.metrics_url}", highlight=False)
        yield telemetry


def _prepare_models(
    settings: Settings, crew: CrewConfig, *, use_cache: bool, telemetry: RunTelemetry
) -> tuple[ModelRouter, SafetyGuards]:
    """Build the run's guards and the model chain of each agent, and get them ready.

    Each model is layered (see llm/models.py): the response cache, the spend guard,
    retries and a circuit breaker for remote models, then the model itself, which takes
    a device lease around each local generation. Getting ready loads local weights and
    checks that a remote server answers; it fails only when no model of a chain can.
    """
    from orchestrate.llm.models import LinkFactory, build_router, models_in_use
    from orchestrate.safety.gpu import GpuLeaseManager
    from orchestrate.safety.guards import build_guards

    agent_models = crew.models(settings.model)
    every_model = models_in_use(settings, agent_models, settings.model)
    guards = build_guards(settings, every_model)  # after the model names are known valid
    cache = None
    if use_cache and settings.cache:
        from orchestrate.llm.cache import ResponseCache

        cache = ResponseCache(settings.cache_path, max_bytes=int(settings.cache_max_mb * 2**20))
    leases = GpuLeaseManager.from_settings(settings)
    telemetry.watch_leases(leases)
    links = LinkFactory(
        settings,
        leases=leases,
        spend_guard=guards.spend_guard,
        cache=cache,
    )
    router = build_router(links, agent_models, settings.model)
    try:
        with err_console.status(f"Loading CrewAI and {', '.join(router.models)}…"):
            import orchestrate.build  # noqa: F401  (imports crewai, the slow part)

            router.prepare()
    except KeyboardInterrupt:
        err_console.print("interrupted before the run started")
        raise typer.Exit(130) from None
    return router, guards


def _options(
    settings: Settings, out: Path | None, fail_fast: bool, *, no_memory: bool = False
) -> BuildOptions:
    from orchestrate.build import BuildOptions

    return BuildOptions(
        model=settings.model,
        workers=settings.workers,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        runs_dir=settings.runs_dir,
        out_dir=out,
        fail_fast=fail_fast,
        policy=settings.task_policy(),
        history_path=settings.history_path,
        currency=settings.currency,
        memory_dir=settings.memory_dir if settings.memory and not no_memory else None,
        memory_tokens=settings.memory_tokens,
        memory_top_k=settings.memory_top_k,
        adapter=settings.embedded_adapter,
    )


def _execute(
    run: BuildRun, view: Any, json_output: bool, telemetry: RunTelemetry, models: list[str]
) -> None:
    from orchestrate.cli.live import LiveTable

    telemetry.attach(run, models)
    if isinstance(view, LiveTable):
        verb = "Resuming run" if run.record.resumes else "Run"
        done = len(run.finished_tasks)
        err_console.print(
            f"[bold]{verb} {run.run_id}[/]: {run.record.spec_title} on {run.options.model}, "
            f"{run.options.workers} workers" + (f"; {done} tasks already done" if done else ""),
            highlight=False,
        )
    stopping = stop_on_signals(
        run.cancel,
        stopping="stopping: cancelling running tasks",
        quitting=f"stopped; what was written is in {run.folder.path}",
    )
    with stopping, view:
        result = run.execute()
    if json_output:
        console.print_json(json.dumps(_result_json(result)))
    else:
        _print_summary(result)
    raise typer.Exit(result.exit_code)


def _progress_view(agents: Mapping[str, str], *, quiet: bool) -> Any:
    """The live table on a terminal, a plain log otherwise; ``agents`` maps task to agent."""
    from orchestrate.cli.live import LiveTable, PlainLog

    if quiet:
        return _Silent()
    if err_console.is_terminal:
        return LiveTable(err_console, dict(agents))
    return PlainLog(err_console)


class _Silent:
    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def on_event(self, event: dict[str, Any]) -> None:
        """--json prints only the result."""

    def on_progress(self, task: str, tokens: int) -> None:
        """--json prints only the result."""


def _result_json(result: BuildResult) -> dict[str, Any]:
    record = result.record
    return {
        "run_id": record.id,
        "status": record.status.value,
        "exit_code": result.exit_code,
        "run_dir": str(result.folder.path),
        "report": str(result.folder.path / "report.html"),
        "out_dir": record.out_dir,
        "seconds": record.seconds,
        "critical_path": record.critical_path,
        "critical_path_seconds": record.critical_path_seconds,
        "files": record.files,
        "refused_files": record.refused_files,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "llm_calls": record.llm_calls,
        "cached_calls": record.cached_calls,
        "cost": round(record.cost, 6),
        "verdict": record.verdict,
        "requested_changes": record.requested_changes,
        "checks": _checks_json(record),
        "failure": record.failure,
        "resumes": record.resumes,
        "tasks": {
            name: {
                "state": task.state,
                "seconds": task.seconds,
                "reason": task.reason,
                "attempts": task.attempts,
                "llm_calls": task.llm_calls,
                "cached_calls": task.cached_calls,
            }
            for name, task in record.tasks.items()
        },
    }


def _checks_json(record: RunRecord) -> dict[str, Any] | None:
    if record.qa is None or record.qa.last is None:
        return None
    last = record.qa.last
    return {
        "status": last.status,
        "rounds": len(record.qa.rounds),
        "passed": last.passed,
        "failed": last.failed,
        "errors": last.errors,
        "compile_errors": len(last.compile_errors),
    }


def _print_summary(result: BuildResult) -> None:
    record = result.record
    makespan, critical = record.seconds or 0.0, record.critical_path_seconds or 0.0
    ratio = f" ({makespan / critical:.2f}x)" if critical > 0 else ""
    console.print(f"\n[bold]Run {record.id}[/] {styled_state(record.status.value)}")
    console.print(
        f"  makespan {format_seconds(makespan)} vs critical path {format_seconds(critical)}"
        f"{ratio}: {' -> '.join(record.critical_path) or '-'}"
    )
    cached = f", {record.cached_calls} answered from the cache" if record.cached_calls else ""
    console.print(
        f"  {record.llm_calls} model calls{cached}; "
        f"tokens {record.prompt_tokens} in / {record.completion_tokens} out;"
        f" {len(record.files)} files written"
        + (f", {len(record.refused_files)} refused" if record.refused_files else "")
    )
    for path in record.files[:12]:
        console.print(f"    {path}", highlight=False)
    if len(record.files) > 12:
        console.print(f"    … and {len(record.files) - 12} more")
    for name, task in record.tasks.items():
        if task.state in {"failed", "skipped", "cancelled"}:
            console.print(f"  {name}: {styled_state(task.state)} - {task.reason}", highlight=False)
    if record.failure:
        console.print(f"  [red]root cause[/]: {record.failure}", highlight=False)
    print_checks(console, record)
    if record.verdict:
        console.print(f"  critic verdict: {record.verdict}")
        for change in record.requested_changes:
            console.print(f"    - {change}", highlight=False)
    console.print(f"  run folder: {result.folder.path}", highlight=False)
    console.print(f"  report: {result.folder.path / 'report.html'}", highlight=False)
    if record.status.value != "succeeded":
        console.print(f"  finish it with: orchestrate resume {record.id}", highlight=False)
    if record.out_dir:
        console.print(f"  copied to: {record.out_dir}", highlight=False)
    sys.stdout.flush()
