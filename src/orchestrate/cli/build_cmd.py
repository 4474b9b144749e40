"""`orchestrate build`: run the crew on a spec and report how it went."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer

from orchestrate.cli.common import (
    configure_logging,
    console,
    err_console,
    format_seconds,
    reports_errors,
    styled_state,
)

if TYPE_CHECKING:
    import threading

    from orchestrate.build import BuildResult


@reports_errors
def build(
    spec: str = typer.Argument(..., help="The spec: text in quotes, or a .md/.yaml file."),
    crew: Path | None = typer.Option(None, "--crew", help="Crew YAML (default: bundled crew)."),
    model: str | None = typer.Option(
        None, "--model", help="BACKEND:NAME, e.g. embedded:smollm2-135m or scripted:FILE."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Tasks run at the same time."),
    out: Path | None = typer.Option(None, "--out", help="Also copy the generated files here."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Most tokens per answer."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON result, no table."),
) -> None:
    """Build a project from SPEC with the crew, running independent tasks in parallel.

    Example: orchestrate build examples/specs/notes-api.md --workers 3 --out ./notes
    """
    from orchestrate.cli.live import LiveTable
    from orchestrate.crew.config import load_crew
    from orchestrate.crew.spec import load_spec
    from orchestrate.errors import UserInputError
    from orchestrate.llm.backend import create_backend
    from orchestrate.safety.gpu import GpuLeaseManager
    from orchestrate.safety.guards import build_guards
    from orchestrate.settings import load_settings

    settings = load_settings(model=model, workers=workers, crew_file=crew, max_tokens=max_tokens)
    if out is not None and out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; give a folder (it is created if missing)")
    configure_logging(settings.log_level)
    the_spec = load_spec(spec)
    loaded_crew = load_crew(settings.crew_file)
    backend = create_backend(
        settings.model,
        models_dir=settings.models_dir,
        embedded_model=settings.embedded_model,
        leases=GpuLeaseManager.from_settings(settings),
    )
    guards = build_guards(settings)
    try:
        with err_console.status(f"Loading CrewAI and {settings.model}…"):
            from orchestrate.build import BuildOptions, BuildRun

            backend.prepare()
    except KeyboardInterrupt:
        err_console.print("interrupted before the run started")
        raise typer.Exit(130) from None

    options = BuildOptions(
        model=settings.model,
        workers=settings.workers,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        runs_dir=settings.runs_dir,
        out_dir=out,
    )
    agents = {name: task.agent for name, task in loaded_crew.config.tasks.items()}
    view = _progress_view(agents, quiet=json_output)
    run = BuildRun(the_spec, loaded_crew, backend, options, observer=view, guards=guards)
    if isinstance(view, LiveTable):
        err_console.print(
            f"[bold]Run {run.run_id}[/]: {the_spec.title} on {settings.model}, "
            f"{settings.workers} workers",
            highlight=False,
        )
    with _cancel_on_signals(run.cancel, run.folder.path), view:
        result = run.execute()
    if json_output:
        console.print_json(json.dumps(_result_json(result)))
    else:
        _print_summary(result)
    raise typer.Exit(result.exit_code)


def _progress_view(agents: dict[str, str], *, quiet: bool) -> Any:
    from orchestrate.cli.live import LiveTable, PlainLog

    if quiet:
        return _Silent()
    if err_console.is_terminal:
        return LiveTable(err_console, agents)
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


@contextmanager
def _cancel_on_signals(cancel: threading.Event, run_path: Path) -> Iterator[None]:
    """First Ctrl-C or SIGTERM: cancel the run cleanly. Second: leave at once."""

    def handle(number: int, frame: FrameType | None) -> None:
        if cancel.is_set():
            err_console.print(f"stopped; what was written is in {run_path}")
            os._exit(130)  # threads may be stuck in a model call; do not wait for them
        cancel.set()
        err_console.print("stopping: cancelling running tasks (press Ctrl-C again to quit now)")

    previous = {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _result_json(result: BuildResult) -> dict[str, Any]:
    record = result.record
    return {
        "run_id": record.id,
        "status": record.status.value,
        "exit_code": result.exit_code,
        "run_dir": str(result.folder.path),
        "out_dir": record.out_dir,
        "seconds": record.seconds,
        "critical_path": record.critical_path,
        "critical_path_seconds": record.critical_path_seconds,
        "files": record.files,
        "refused_files": record.refused_files,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "verdict": record.verdict,
        "tasks": {
            name: {"state": task.state, "seconds": task.seconds, "reason": task.reason}
            for name, task in record.tasks.items()
        },
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
    console.print(
        f"  tokens {record.prompt_tokens} in / {record.completion_tokens} out;"
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
    if record.verdict:
        console.print(f"  critic verdict: {record.verdict}")
    console.print(f"  run folder: {result.folder.path}", highlight=False)
    if record.out_dir:
        console.print(f"  copied to: {record.out_dir}", highlight=False)
    sys.stdout.flush()
