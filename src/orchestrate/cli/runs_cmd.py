"""`orchestrate runs`, `show` and `tail`: look at past and running builds."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from orchestrate.cli.common import (
    console,
    format_seconds,
    local_time,
    reports_errors,
    styled_state,
)

if TYPE_CHECKING:
    from orchestrate.store.runs import RunRecord


@reports_errors
def list_runs(
    limit: int = typer.Option(20, "--limit", min=1, help="Show at most this many runs."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List runs, newest first: id, start, status, duration and spec.

    Example: orchestrate runs --limit 5
    """
    from orchestrate.settings import load_settings
    from orchestrate.store.runs import RunStore

    records = RunStore(load_settings().runs_dir).list_runs()[:limit]
    if json_output:
        rows = [
            {
                "id": record.id,
                "started_at": record.started_at.isoformat(),
                "status": _status(record),
                "seconds": record.seconds,
                "spec": record.spec_title,
            }
            for record in records
        ]
        console.print_json(json.dumps(rows))
        return
    if not records:
        console.print('No runs yet. Start one with: orchestrate build "a todo CLI in Python"')
        return
    table = Table(header_style="bold", box=None)
    for column in ("id", "started", "status", "duration", "tasks", "spec"):
        table.add_column(column, overflow="fold" if column == "spec" else "ellipsis")
    for record in records:
        done = sum(task.state == "succeeded" for task in record.tasks.values())
        table.add_row(
            record.id,
            local_time(record.started_at),
            styled_state(_status(record)),
            format_seconds(record.seconds),
            f"{done}/{len(record.tasks)}",
            record.spec_title,
        )
    console.print(table)


@reports_errors
def show(
    run_id: str = typer.Argument(..., help="A run id, or the start of one."),
    json_output: bool = typer.Option(False, "--json", help="Print run.json as it is."),
) -> None:
    """Show a run's tasks, timings, tokens and files.

    Example: orchestrate show 20261203-1850
    """
    from orchestrate.settings import load_settings
    from orchestrate.store.runs import RunStore

    folder = RunStore(load_settings().runs_dir).find(run_id)
    record = folder.load()
    if json_output:
        console.print_json(record.model_dump_json())
        return
    console.print(f"[bold]Run {record.id}[/] {styled_state(_status(record))}: {record.spec_title}")
    console.print(
        f"  model {record.model}, {record.workers} workers, started "
        f"{local_time(record.started_at)}, took {format_seconds(record.seconds)}; "
        f"critical path {format_seconds(record.critical_path_seconds)} "
        f"({' -> '.join(record.critical_path) or '-'})",
        highlight=False,
    )
    table = Table(header_style="bold", box=None)
    columns = ("task", "agent", "state", "start", "time", "tries", "tokens in/out", "calls")
    for column in (*columns, "files"):
        table.add_column(column)
    for name, task in record.tasks.items():
        offset = (
            format_seconds((task.started_at - record.started_at).total_seconds())
            if task.started_at
            else "-"
        )
        table.add_row(
            name,
            task.agent,
            styled_state(task.state),
            f"+{offset}" if task.started_at else "-",
            format_seconds(task.seconds),
            str(task.attempts or "-"),
            f"{task.prompt_tokens}/{task.completion_tokens}",
            f"{task.llm_calls}" + (f" +{task.cached_calls} cached" if task.cached_calls else ""),
            ", ".join(task.files) or (task.reason or ""),
        )
    console.print(table)
    console.print(
        f"  tokens {record.prompt_tokens} in / {record.completion_tokens} out; "
        f"{len(record.files)} files; verdict {record.verdict or '-'}",
        highlight=False,
    )
    if record.failure:
        console.print(f"  [red]root cause[/]: {record.failure}", highlight=False)
    if record.resumes:
        console.print(f"  resumed {record.resumes} time(s)")
    for path in record.refused_files:
        console.print(f"  refused: {path!r}", highlight=False)
    console.print(f"  folder: {folder.path}", highlight=False)


@reports_errors
def tail(
    run_id: str = typer.Argument(..., help="A run id, or the start of one."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until it ends."),
    json_output: bool = typer.Option(False, "--json", help="Print the raw JSON lines."),
) -> None:
    """Print a run's events; with --follow, stream them while the run goes on.

    Example: orchestrate tail 20261203-1850 --follow
    """
    from orchestrate.cli.live import describe_event
    from orchestrate.settings import load_settings
    from orchestrate.store.events import follow_events, read_events
    from orchestrate.store.runs import RunStore

    folder = RunStore(load_settings().runs_dir).find(run_id)
    if not folder.events_path.exists():
        return
    if follow:
        events = follow_events(folder.events_path, still_running=lambda: folder.load().is_live())
    else:
        events = read_events(folder.events_path)
    try:
        for event in events:
            if json_output:
                typer.echo(json.dumps(event))
            else:
                console.print(describe_event(event), highlight=False, soft_wrap=True)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _status(record: RunRecord) -> str:
    """The stored status, except that a run whose process died says so."""
    from orchestrate.store.runs import RunStatus

    if record.status is RunStatus.RUNNING and not record.is_live():
        return "interrupted"
    return record.status.value
