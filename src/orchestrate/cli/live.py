"""Progress during a build: a live table on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrate.cli.common import format_seconds, styled_state


@dataclass
class _TaskRow:
    agent: str
    state: str = "pending"
    started: float | None = None
    seconds: float | None = None
    tokens: int = 0
    generating: int = 0  # tokens of the answer being generated now
    generating_since: float | None = None  # when its first token arrived
    model: str = ""  # who answered last, when a fallback model did
    files: int = 0
    attempt: int = 1
    cached: int = 0  # calls answered from the response cache


_FINAL_STATES = {"succeeded", "failed", "skipped", "cancelled"}


class LiveTable:
    """A Rich live table of tasks: state, elapsed time, tokens and files."""

    def __init__(self, console: Console, tasks: dict[str, str]) -> None:
        self._rows = {task: _TaskRow(agent) for task, agent in tasks.items()}
        self._lock = threading.Lock()
        self._live = Live(console=console, get_renderable=self._render, refresh_per_second=4)

    def __enter__(self) -> LiveTable:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._live.__exit__(kind, error, traceback)

    def on_event(self, event: dict[str, Any]) -> None:
        task = event.get("task")
        with self._lock:
            row = self._rows.get(task) if isinstance(task, str) else None
            if row is None:
                return
            if event["type"] == "task_state":
                row.state = event["state"]
                if row.state == "running" and row.started is None:
                    row.started = time.monotonic()
                elif row.started is not None and row.state in _FINAL_STATES:
                    row.seconds = time.monotonic() - row.started
            elif event["type"] == "task_attempt":
                row.attempt = int(event.get("attempt", 1))
            elif event["type"] == "llm_call":
                row.generating, row.generating_since = 0, None
                if event.get("cached"):
                    row.cached += 1
                else:
                    row.tokens += event["prompt_tokens"] + event["completion_tokens"]
            elif event["type"] == "file_written":
                row.files += 1
            elif event["type"] == "model_fallback":
                row.model = str(event.get("to_model", ""))

    def on_progress(self, task: str, tokens: int) -> None:
        with self._lock:
            row = self._rows.get(task)
            if row is not None:
                if row.generating_since is None or tokens < row.generating:
                    row.generating_since = time.monotonic()
                row.generating = tokens

    def _render(self) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("task", "agent", "state", "elapsed", "tokens", "tok/s", "files"):
            right = column in {"tokens", "tok/s", "files"}
            table.add_column(column, justify="right" if right else "left")
        with self._lock:
            for task, row in self._rows.items():
                attempt = f" ({row.attempt})" if row.attempt > 1 else ""
                fallback = f" via {row.model}" if row.model else ""
                table.add_row(
                    task,
                    row.agent,
                    styled_state(row.state) + attempt + fallback,
                    format_seconds(self._elapsed(row)),
                    self._tokens(row),
                    self._speed(row),
                    str(row.files) if row.files else "",
                )
        return table

    @staticmethod
    def _elapsed(row: _TaskRow) -> float | None:
        if row.seconds is not None:
            return row.seconds
        return time.monotonic() - row.started if row.started is not None else None

    @staticmethod
    def _speed(row: _TaskRow) -> str:
        """Tokens per second of the answer streaming in now."""
        if row.generating < 2 or row.generating_since is None:
            return ""
        seconds = time.monotonic() - row.generating_since
        return f"{(row.generating - 1) / seconds:.1f}" if seconds > 0 else ""

    @staticmethod
    def _tokens(row: _TaskRow) -> str:
        if row.generating:
            return f"{row.tokens} +{row.generating}"
        if row.cached and not row.tokens:
            return "cached"
        return str(row.tokens) if row.tokens else ""


class PlainLog:
    """One line per notable event, for logs and pipes."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def __enter__(self) -> PlainLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def on_event(self, event: dict[str, Any]) -> None:
        line = describe_event(event)
        if line and event["type"] != "llm_call":
            self._console.print(line, highlight=False, soft_wrap=True)

    def on_progress(self, task: str, tokens: int) -> None:
        """Too chatty for a log."""


def describe_event(event: dict[str, Any]) -> str:
    """A short human line for an event (used by the plain log and `tail`)."""
    stamp = str(event.get("ts", ""))[11:19]
    kind = event.get("type")
    task = event.get("task")
    if kind in ("run_started", "run_resumed"):
        verb = "started" if kind == "run_started" else "resumed"
        done = event.get("finished") or []
        already = f" ({len(done)} tasks already done)" if done else ""
        return (
            f"{stamp} run {event.get('run')} {verb}: {event.get('spec')} on "
            f"{event.get('model')}{already}"
        )
    if kind == "task_attempt":
        return f"{stamp} {task}: attempt {event.get('attempt')} of {event.get('max_attempts')}"
    if kind == "attempt_failed":
        retry_in = event.get("retry_in_seconds")
        then = "giving up" if retry_in is None else f"retrying in {retry_in:.1f}s"
        return (
            f"{stamp} {task}: attempt {event.get('attempt')} failed ({event.get('reason')}); {then}"
        )
    if kind == "task_state":
        reason = f" ({event['reason']})" if event.get("reason") else ""
        return f"{stamp} {task}: {event.get('state')}{reason}"
    if kind == "llm_call" and event.get("cached"):
        return f"{stamp} {task}: answered from the response cache"
    if kind == "llm_call":
        return (
            f"{stamp} {task}: model call {event.get('seconds')}s, "
            f"{event.get('prompt_tokens')} in / {event.get('completion_tokens')} out"
        )
    if kind == "llm_retry":
        return (
            f"{stamp} {task}: {event.get('model')} call {event.get('attempt')} failed "
            f"({event.get('reason')}); retrying in {event.get('retry_in_seconds')}s"
        )
    if kind == "memory_recalled":
        runs = ", ".join(event.get("runs") or [])
        return (
            f"{stamp} {task}: recalled {len(event.get('ids') or [])} memories "
            f"({event.get('approved')} approved, {event.get('tokens')} tokens) from {runs}"
        )
    if kind == "circuit_changed":
        return f"{stamp} {event.get('model')}: circuit {event.get('state')} ({event.get('reason')})"
    if kind == "model_fallback":
        return (
            f"{stamp} {task}: {event.get('from_model')} failed ({event.get('reason')}); "
            f"asking {event.get('to_model')}"
        )
    if kind == "file_written":
        return f"{stamp} {task}: wrote {event.get('path')} ({event.get('bytes')} bytes)"
    if kind == "file_refused":
        return f"{stamp} {task}: refused {event.get('path')!r}: {event.get('reason')}"
    if kind == "file_conflict":
        return (
            f"{stamp} {event.get('path')}: written by {event.get('loser')} and "
            f"{event.get('winner')}; kept {event.get('winner')}'s (it finished later)"
        )
    if kind == "secret_found":
        found = len(event.get("findings") or [])
        return f"{stamp} {task}: {event.get('action')} {found} secret(s) in {event.get('path')}"
    if kind == "block_problem":
        line = event.get("line")
        return f"{stamp} {task}: unreadable file block at line {line}: {event.get('reason')}"
    if kind == "checks_ran":
        return _describe_checks(stamp, event)
    if kind == "repair_finished":
        what = event.get("error") or f"wrote {', '.join(event.get('files') or []) or 'nothing'}"
        return f"{stamp} {task}: repair {event.get('round')} by {event.get('agent')}: {what}"
    if kind == "error":
        return f"{stamp} error{f' in {task}' if task else ''}: {event.get('message')}"
    if kind == "run_finished":
        return f"{stamp} run {event.get('status')} in {event.get('seconds')}s"
    return f"{stamp} {kind}"


def _describe_checks(stamp: str, event: dict[str, Any]) -> str:
    counts = (
        f"{event.get('passed')} passed, {event.get('failed')} failed, {event.get('errors')} errors"
    )
    broken = event.get("compile_errors")
    if broken:
        counts = f"{broken} files do not compile, " + counts
    hit = event.get("limits_hit") or []
    limit = f"; hit the {' and '.join(hit)} limit" if hit else ""
    return (
        f"{stamp} {event.get('task')}: round {event.get('round')} ({event.get('kind')}) "
        f"{event.get('status')}: {counts}{limit}"
    )
