"""`orchestrate graph`: the crew's task graph, its levels and its critical path."""

from __future__ import annotations

from pathlib import Path

import typer

from orchestrate.cli.common import console, reports_errors


@reports_errors
def graph(
    crew: Path | None = typer.Option(None, "--crew", help="Crew YAML (default: bundled crew)."),
    model: str | None = typer.Option(
        None, "--model", help="Estimate durations for this model (default: the setting)."
    ),
    mermaid: bool = typer.Option(False, "--mermaid", help="Print only the Mermaid flowchart."),
) -> None:
    """Print the crew's DAG: inputs, parallel levels, estimated durations, critical path.

    Durations are the median of each agent's recent tasks on the model, learned from
    earlier runs; without history every task counts as 1.

    Example: orchestrate graph --mermaid > crew.mmd
    """
    from orchestrate.crew.config import load_crew
    from orchestrate.settings import load_settings
    from orchestrate.store.history import DurationHistory, task_weights

    settings = load_settings(model=model, crew_file=crew)
    crew_config, task_graph, source = load_crew(settings.crew_file)
    task_agents = crew_config.task_agents()  # the QA stage's checks node included
    known = DurationHistory(settings.history_path).estimates(
        sorted(set(task_agents.values())), settings.model
    )
    weights = task_weights(task_agents, known)
    remaining = task_graph.remaining_path(weights)

    labels = {name: f"{name}<br/>{agent}" for name, agent in task_agents.items()}
    chart = task_graph.to_mermaid(labels)
    if mermaid:
        typer.echo(chart)
        return
    console.print(f"[bold]Crew[/] {source}", highlight=False, soft_wrap=True)
    unit = "s" if known else ""
    console.print(f"  {'task':<12} {'agent':<12} {'est.':>7} {'to end':>7}  inputs", style="bold")
    for name in task_graph.tasks:
        inputs = ", ".join(task_graph.dependencies(name)) or "(the spec only)"
        console.print(
            f"  {name:<12} {task_agents[name]:<12} {weights[name]:>6.1f}{unit or ' '} "
            f"{remaining[name]:>6.1f}{unit or ' '}  <- {inputs}",
            highlight=False,
            soft_wrap=True,
        )
    console.print("[bold]Levels[/] (tasks in a level can run at the same time)")
    for number, level in enumerate(task_graph.levels(), start=1):
        console.print(f"  {number}. {', '.join(level)}")
    path = task_graph.critical_path(weights)
    basis = (
        f"median durations of earlier runs on {settings.model}"
        if known
        else f"no history on {settings.model} yet, so every task counts as 1"
    )
    console.print(
        f"[bold]Critical path[/] ({len(path.tasks)} of {len(task_graph.tasks)} tasks, "
        f"estimated {path.length:.1f}{unit or ' tasks'}): {' -> '.join(path.tasks)}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"  estimates: {basis}; 'to end' is the priority of a ready task",
        highlight=False,
        soft_wrap=True,
    )
    console.print("[bold]Mermaid[/]")
    console.print(f"```mermaid\n{chart}\n```", highlight=False, soft_wrap=True, markup=False)
