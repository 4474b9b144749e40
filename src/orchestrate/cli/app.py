"""The `orchestrate` Typer application.

Only typer and rich are imported at start-up; every command imports what it needs
(crewai, torch, transformers) when it runs, so `orchestrate --help` stays instant.
"""

from __future__ import annotations

import typer

from orchestrate import __version__
from orchestrate.cli import (
    budget_cmd,
    build_cmd,
    check_cmd,
    doctor_cmd,
    finetune_cmd,
    gpu_cmd,
    graph_cmd,
    models_cmd,
    runs_cmd,
)
from orchestrate.cli.cache_cmd import cache_app
from orchestrate.cli.memory_cmd import memory_app
from orchestrate.cli.metrics_cmd import metrics_app

app = typer.Typer(
    name="orchestrate",
    help="Turn a software spec into a project with a crew of LLM agents run as a parallel DAG.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"orchestrate {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Turn a software spec into a project with a crew of LLM agents run as a parallel DAG."""


app.command("build")(build_cmd.build)
app.command("resume")(build_cmd.resume)
app.command("check")(check_cmd.check)
app.command("runs")(runs_cmd.list_runs)
app.command("show")(runs_cmd.show)
app.command("tail")(runs_cmd.tail)
app.command("graph")(graph_cmd.graph)
app.command("doctor")(doctor_cmd.doctor)
app.command("models")(models_cmd.models)
app.add_typer(cache_app, name="cache")
app.add_typer(memory_app, name="memory")
app.command("budget")(budget_cmd.budget)
app.command("gpu")(gpu_cmd.gpu)
app.add_typer(metrics_app, name="metrics")
app.command("finetune")(finetune_cmd.finetune)


def main() -> None:
    app()
