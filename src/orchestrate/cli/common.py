"""What every command shares: consoles, error reporting, logging, formatting."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from orchestrate.errors import OrchestrateError

if TYPE_CHECKING:
    from orchestrate.store.runs import RunRecord

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

STATE_STYLES = {
    "pending": "dim",
    "ready": "cyan",
    "running": "yellow",
    "retrying": "yellow dim",
    "succeeded": "green",
    "failed": "red",
    "skipped": "magenta",
    "cancelled": "red dim",
    "interrupted": "red",
}


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn an OrchestrateError into a one-line message and its exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except OrchestrateError as exc:
            # As plain text: a message may hold "[...]" or ":x:", which Rich would
            # otherwise read as markup or an emoji code and change.
            message = Text.assemble(("error:", "bold red"), " ", str(exc))
            err_console.print(message, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def configure_logging(level: str) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)


def styled_state(state: str) -> str:
    return f"[{STATE_STYLES.get(state, 'white')}]{state}[/]"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def local_time(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def print_checks(console: Console, record: RunRecord) -> None:
    """A line per round of sandboxed checks, and one per repair."""
    if record.qa is None:
        return
    for qa_round in record.qa.rounds:
        line = f"  checks, round {qa_round.number} ({qa_round.kind}): {qa_round.checks.summary()}"
        console.print(line, highlight=False)
        if qa_round.repair is not None:
            repair = qa_round.repair
            what = repair.error or f"wrote {', '.join(repair.files)}"
            console.print(f"    repair by {repair.agent}: {what}", highlight=False)
