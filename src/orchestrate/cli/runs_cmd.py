"""`orchestrate runs`, `show` and `tail`: look at past and running builds."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from orchestrate.cli.common import (
    STATE_STYLES,
    console,
    format_seconds,
    local_time,
    print_checks,
    reports_errors,
    styled_state,
)

if TYPE_CHECKING:
    from orchestrate.observe.timeline import RunTimeline, Segment, TaskTimeline
    from orchestrate.store.events import Event
    from orchestrate.store.runs import RunRecord
    from orchestrate.store.usage import UsageTotals

# The usage tables' columns that are always shown: header and cell of one row's totals.
USAGE_COLUMNS: tuple[tuple[str, Callable[[UsageTotals], str]], ...] = (
    ("calls", lambda totals: str(totals.calls)),
    ("cached", lambda totals: str(totals.cached)),
    ("failed", lambda totals: str(totals.failed)),
    ("tokens in", lambda totals: str(totals.prompt_tokens)),
    ("tokens out", lambda totals: str(totals.completion_tokens)),
    ("tok/s", lambda totals: _rate(totals.tokens_per_second)),
)


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
    json_output: bool = typer.Option(
        False, "--json", help="Print run.json as it is, plus usage totals under 'usage'."
    ),
    timeline: bool = typer.Option(
        False, "--timeline", help="Draw when each task waited, queued and ran."
    ),
    report: bool = typer.Option(
        False, "--report", help="Print the path of the run's report.html, writing it if needed."
    ),
) -> None:
    """Show a run's tasks, timings, tokens and files, and model usage per agent and model.

    Example: orchestrate show 20261203-1850 --timeline
    """
    from orchestrate.settings import load_settings
    from orchestrate.store.runs import RunStore
    from orchestrate.store.usage import run_events, usage_by

    folder = RunStore(load_settings().runs_dir).find(run_id)
    if report:
        from orchestrate.observe.report import ensure_report

        typer.echo(str(ensure_report(folder).resolve()))
        return
    record = folder.load()
    events = run_events(folder)
    if timeline:
        _print_timeline(record, events)
        return
    by_agent, by_model = usage_by(events, "agent"), usage_by(events, "model")
    if json_output:
        stored = json.loads(record.model_dump_json())
        stored["usage"] = {"by_agent": _usage_json(by_agent), "by_model": _usage_json(by_model)}
        console.print_json(json.dumps(stored))
        return
    title = escape(record.spec_title)  # "[...]" in a title is text, not Rich markup
    console.print(f"[bold]Run {record.id}[/] {styled_state(_status(record))}: {title}")
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
    for change in record.requested_changes:
        console.print(f"    change requested: {change}", highlight=False)
    print_checks(console, record)
    if record.failure:
        console.print(f"  [red]root cause[/]: {record.failure}", highlight=False)
    if record.resumes:
        console.print(f"  resumed {record.resumes} time(s)")
    for path in record.refused_files:
        console.print(f"  refused: {path!r}", highlight=False)
    if any(totals.calls or totals.cached for totals in by_model.values()):
        currency = _currency(record)
        console.print(_usage_table("By agent", "agent", by_agent, currency=currency))
        console.print(_usage_table("By model", "model", by_model, currency=currency))
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
        events = follow_events(
            folder.events_path, still_running=lambda: folder.load().process_alive()
        )
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


def _print_timeline(record: RunRecord, events: list[Event]) -> None:
    """One line per task: a bar of its waiting (light) and running (solid) time."""
    from orchestrate.observe.timeline import build_timeline

    timeline = build_timeline(events, {name: task.agent for name, task in record.tasks.items()})
    title = escape(record.spec_title)  # a title may hold "[...]", which Rich reads as markup
    console.print(f"[bold]Run {record.id}[/] {styled_state(_status(record))}: {title}")
    for summary in _timeline_summary(record, timeline):
        console.print(f"  {summary}", highlight=False)
    if timeline.seconds <= 0:
        console.print("  No task timings: the run's event log is empty.")
        return
    names = max(len(name) for name in timeline.tasks)
    agents = max(len(task.agent) for task in timeline.tasks.values())
    width = max(20, console.width - names - agents - _TIMELINE_TAIL - 4)
    glyphs = _glyphs()
    for task in timeline.tasks.values():
        row = Text(f"{task.name:<{names}}  {task.agent:<{agents}}  ")
        row.append_text(_bar(task, timeline, width, glyphs))
        row.append(f" {format_seconds(_ran(task)):>7} ")
        row.append("restored" if task.restored else task.outcome, style=_style(task.outcome))
        console.print(row, no_wrap=True, overflow="ellipsis")
    for axis_line in _axis(timeline.seconds, width, glyphs):
        console.print(" " * (names + agents + 4) + axis_line, highlight=False)
    console.print(_legend(glyphs), highlight=False)


def _timeline_summary(record: RunRecord, timeline: RunTimeline) -> list[str]:
    sessions = len(timeline.sessions)
    where = "" if sessions < 2 else f" in {sessions} sessions, the time between them left out"
    path = " -> ".join(record.critical_path) or "-"
    critical = format_seconds(record.critical_path_seconds)
    return [
        f"{format_seconds(timeline.seconds)} of work{where}",
        f"critical path {critical}: {path}",
    ]


@dataclass(frozen=True)
class _Glyphs:
    """The characters of the terminal timeline; ASCII ones where the output cannot take more."""

    waiting: str = "·"
    queued: str = "░"
    backoff: str = "▒"
    running: str = "█"
    restored: str = "╌"
    mark: str = "◆"
    boundary: str = "┆"
    axis: str = "─"
    tick: str = "┬"


_ASCII_GLYPHS = _Glyphs(".", ":", "~", "#", "-", "*", "|", "-", "+")
# Room after the bar: the seconds it ran and its outcome.
_TIMELINE_TAIL = 20
_OUTCOME_STYLES = {**STATE_STYLES, "retried": "yellow", "unfinished": "cyan"}


def _glyphs() -> _Glyphs:
    return _Glyphs() if console.encoding.lower().startswith("utf") else _ASCII_GLYPHS


def _bar(task: TaskTimeline, timeline: RunTimeline, width: int, glyphs: _Glyphs) -> Text:
    """The task's segments in ``width`` cells; a run shows in every cell it touches."""
    from orchestrate.observe.timeline import Phase

    scale = width / timeline.seconds
    cells = [(" ", "")] * width
    for segment in sorted(task.segments, key=lambda segment: segment.phase is Phase.RUNNING):
        for cell in _cells(segment, scale, width):
            cells[cell] = _look(segment, glyphs)
    for mark in task.marks:
        if mark.kind != "attempt_failed":
            cells[min(int(mark.at * scale), width - 1)] = (glyphs.mark, _style(mark.kind))
    for session in timeline.sessions[1:]:
        cell = min(round(session.offset * scale), width - 1)
        if cells[cell][0] in (" ", glyphs.waiting):
            cells[cell] = (glyphs.boundary, "dim")
    return Text.assemble(*cells)


def _cells(segment: Segment, scale: float, width: int) -> range:
    from orchestrate.observe.timeline import Phase

    if segment.phase is Phase.RUNNING:  # never hidden, however short
        first = min(int(segment.start * scale), width - 1)
        return range(first, max(first + 1, min(math.ceil(segment.end * scale), width)))
    return range(round(segment.start * scale), min(round(segment.end * scale), width))


def _look(segment: Segment, glyphs: _Glyphs) -> tuple[str, str]:
    """The character and style of a segment: solid and coloured by outcome when it ran."""
    phase = segment.phase.value
    if phase == "running":
        return glyphs.running, _style(segment.outcome or "")
    return getattr(glyphs, phase), "yellow dim" if phase == "backoff" else "dim"


def _style(outcome: str) -> str:
    return _OUTCOME_STYLES.get(outcome, "")


def _axis(seconds: float, width: int, glyphs: _Glyphs) -> list[str]:
    """A rule with a tick under each round time, and the times below it."""
    from orchestrate.observe.timeline import axis_ticks, tick_label

    ticks = axis_ticks(seconds, wanted=max(3, width // 8))
    step = ticks[1] - ticks[0] if len(ticks) > 1 else seconds
    rule, labels = [glyphs.axis] * width, [" "] * (width + 8)
    for moment in ticks:
        cell = min(round(moment * width / seconds), width - 1)
        rule[cell] = glyphs.tick
        label = tick_label(moment, step)
        if set(labels[max(0, cell - 1) : cell + len(label) + 1]) == {" "}:
            labels[cell : cell + len(label)] = label
    return ["".join(rule), "".join(labels).rstrip()]


def _legend(glyphs: _Glyphs) -> str:
    return (
        f"  {glyphs.waiting} waiting  {glyphs.queued} queued  {glyphs.backoff} backoff  "
        f"{glyphs.running} ran  {glyphs.restored} restored  {glyphs.mark} skipped  "
        f"{glyphs.boundary} resumed"
    )


def _ran(task: TaskTimeline) -> float | None:
    from orchestrate.observe.timeline import Phase

    return task.seconds_in(Phase.RUNNING) if task.attempts else None


def _usage_table(
    title: str, key: str, totals: dict[str, UsageTotals], *, currency: str | None
) -> Table:
    """One row per agent or model; cost only when something cost, fallbacks only if any."""
    columns = list(USAGE_COLUMNS)
    if any(row.cost for row in totals.values()):
        columns.append(("cost", lambda row: _money(row.cost, currency)))
    if any(row.fallbacks for row in totals.values()):
        columns.append(("fallbacks", lambda row: str(row.fallbacks)))
    table = Table(
        title=title, title_justify="left", title_style="bold", header_style="bold", box=None
    )
    table.add_column(key)
    for header, _ in columns:
        table.add_column(header, justify="right")
    for name, row in totals.items():
        table.add_row(name, *(cell(row) for _, cell in columns))
    return table


def _usage_json(totals: dict[str, UsageTotals]) -> dict[str, dict[str, object]]:
    return {name: row.as_json() for name, row in totals.items()}


def _rate(tokens_per_second: float | None) -> str:
    return "-" if tokens_per_second is None else f"{tokens_per_second:.1f}"


def _money(amount: float, currency: str | None) -> str:
    return f"{amount:.4f} {currency}" if currency else f"{amount:.4f}"


def _currency(record: RunRecord) -> str | None:
    """The currency the run's costs are in, when its record says (older ones do not)."""
    return record.currency


def _status(record: RunRecord) -> str:
    """The stored status, except that a run whose process died says so."""
    from orchestrate.store.runs import RunStatus

    if record.status is RunStatus.RUNNING and not record.is_live():
        return "interrupted"
    return record.status.value
