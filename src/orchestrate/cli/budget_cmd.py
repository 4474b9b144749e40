"""`orchestrate budget`: today's spend, reservations, what is left, and the worker limit."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from orchestrate.cli.common import console, reports_errors


@reports_errors
def budget(
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show today's spend (UTC day), money reserved by calls in flight, what is left
    of ORCHESTRATE_DAILY_BUDGET, and how many tasks a paid-model build may run now.

    Example: orchestrate budget --json
    """
    from orchestrate.safety.guards import open_ledger
    from orchestrate.safety.limiter import LimiterConfig
    from orchestrate.settings import load_settings

    settings = load_settings()
    today = open_ledger(settings).today()
    config = LimiterConfig(
        settings.max_workers, settings.budget_thresholds, settings.budget_hysteresis
    )
    limit = min(settings.workers, config.workers_at(config.level_for(today.remaining_share)))
    if json_output:
        payload = {
            "day": today.day,
            "currency": today.currency,
            "budget": today.budget,
            "spent": today.spent,
            "reserved": today.reserved,
            "remaining": today.remaining,
            "remaining_share": round(today.remaining_share, 4),
            "calls": today.calls,
            "worker_limit": limit,
        }
        console.print_json(json.dumps(payload))
        return
    table = Table(header_style="bold", box=None, show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    money = f"{{:.4f}} {today.currency}"
    table.add_row("day (UTC)", today.day)
    table.add_row("budget", money.format(today.budget))
    table.add_row("spent", money.format(today.spent))
    table.add_row("reserved (calls in flight)", money.format(today.reserved))
    table.add_row("remaining", f"{money.format(today.remaining)} ({today.remaining_share:.0%})")
    table.add_row("paid calls", str(today.calls))
    table.add_row("worker limit (paid models)", f"{limit} of {settings.workers}")
    console.print(table)
