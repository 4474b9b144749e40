"""`orchestrate cache`: what the response cache holds, and clearing it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from orchestrate.cli.common import console, reports_errors

if TYPE_CHECKING:
    from orchestrate.llm.cache import ResponseCache

cache_app = typer.Typer(
    help="The response cache shared by every run on this machine.", no_args_is_help=False
)


@cache_app.callback(invoke_without_command=True)
@reports_errors
def cache_info(context: typer.Context) -> None:
    """Show where the cache is, how many answers it holds and its size limit.

    Example: orchestrate cache
    """
    if context.invoked_subcommand is not None:
        return
    cache = _open_cache()
    stats = cache.stats()
    console.print(f"[bold]Response cache[/] {stats.path}", highlight=False)
    console.print(
        f"  {stats.entries} answers (to model calls and whole tasks), "
        f"{stats.size_bytes / 2**20:.2f} MB "
        f"of {stats.max_bytes / 2**20:.0f} MB"
    )


@cache_app.command("clear")
@reports_errors
def clear() -> None:
    """Remove every cached answer; the next runs ask the model again.

    Example: orchestrate cache clear
    """
    removed = _open_cache().clear()
    console.print(f"removed {removed} cached answers")


def _open_cache() -> ResponseCache:
    from orchestrate.llm.cache import ResponseCache
    from orchestrate.settings import load_settings

    settings = load_settings()
    return ResponseCache(settings.cache_path, max_bytes=int(settings.cache_max_mb * 2**20))
