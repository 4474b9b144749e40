"""`orchestrate memory`: search, count and prune what earlier runs taught the agents."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from orchestrate.cli.common import console, reports_errors

if TYPE_CHECKING:
    from orchestrate.memory.store import LongTermMemory

memory_app = typer.Typer(
    help="Long-term memory: earlier tasks' answers, recalled into new runs.",
    no_args_is_help=True,
)

_PREVIEW_CHARS = 160


@memory_app.command("search")
@reports_errors
def search(
    query: str = typer.Argument(..., help="What to look for, in words."),
    agent: str | None = typer.Option(None, "--agent", help="Only this agent's answers."),
    limit: int = typer.Option(5, "--limit", help="Most results to show (1-100)."),
) -> None:
    """Show the remembered answers nearest to QUERY, nearest first.

    Example: orchestrate memory search "notes API design" --agent architect --limit 3
    """
    from orchestrate.errors import UserInputError

    if not query.strip():
        raise UserInputError("give a QUERY: some words to search the memory for")
    if not 1 <= limit <= 100:
        raise UserInputError(f"--limit must be between 1 and 100 (got {limit})")
    found = _open_memory().search(query, agent=agent, limit=limit)
    if not found:
        console.print("no memories found" + (f" for agent '{agent}'" if agent else ""))
        return
    for memory in found:
        preview = " ".join(memory.text.split())[:_PREVIEW_CHARS]
        console.print(
            f"[bold]{memory.id}[/] {memory.agent}, {memory.spec_title!r}, "
            f"verdict {memory.verdict or '-'}, distance {memory.distance:.3f}",
            highlight=False,
        )
        console.print(f"  {preview}", highlight=False, markup=False)


@memory_app.command("stats")
@reports_errors
def stats() -> None:
    """Show where the memory is, and how many answers it holds per agent and verdict.

    Example: orchestrate memory stats
    """
    summary = _open_memory().stats()
    console.print(f"[bold]Memory[/] {summary.path}", highlight=False)
    console.print(f"  {summary.entries} answers from {summary.runs} runs")
    for agent, count in sorted(summary.per_agent.items()):
        console.print(f"  agent {agent}: {count}", highlight=False)
    for verdict, count in sorted(summary.per_verdict.items()):
        console.print(f"  verdict {verdict}: {count}", highlight=False)


@memory_app.command("forget")
@reports_errors
def forget(
    run: str = typer.Option(..., "--run", metavar="RUN_ID", help="The run to forget."),
) -> None:
    """Remove every answer a run left in the memory.

    Example: orchestrate memory forget --run 20261203-185012
    """
    from orchestrate.errors import RunNotFoundError

    removed = _open_memory().forget(run)
    if not removed:
        raise RunNotFoundError(f"the memory holds nothing from run '{run}'")
    console.print(f"forgot {removed} answers from run {run}")


def _open_memory() -> LongTermMemory:
    from orchestrate.memory.store import LongTermMemory
    from orchestrate.settings import load_settings

    return LongTermMemory(load_settings().memory_dir)
