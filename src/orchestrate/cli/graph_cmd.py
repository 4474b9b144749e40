"""`orchestrate graph`: the crew's task graph, its levels and its critical path."""

from __future__ import annotations

from pathlib import Path

import typer

from orchestrate.cli.common import console, reports_errors


@reports_errors
def graph(
    crew: Path | None = typer.Option(None, "--crew", help="Crew YAML (default: bundled crew)."),
    mermaid: bool = typer.Option(False, "--mermaid", help="Print only the Mermaid flowchart."),
) -> None:
    """Print the crew's DAG: each task's inputs, the parallel levels, the critical path.

    Example: orchestrate graph --mermaid > crew.mmd
    """
    from orchestrate.crew.config import load_crew
    from orchestrate.settings import load_settings

    crew_config, task_graph, source = load_crew(crew or load_settings().crew_file)

    labels = {name: f"{name}<br/>{task.agent}" for name, task in crew_config.tasks.items()}
    chart = task_graph.to_mermaid(labels)
    if mermaid:
        typer.echo(chart)
        return
    console.print(f"[bold]Crew[/] {source}", highlight=False)
    for name in task_graph.tasks:
        inputs = ", ".join(task_graph.dependencies(name)) or "(the spec only)"
        console.print(f"  {name:<12} {crew_config.tasks[name].agent:<12} <- {inputs}")
    console.print("[bold]Levels[/] (tasks in a level can run at the same time)")
    for number, level in enumerate(task_graph.levels(), start=1):
        console.print(f"  {number}. {', '.join(level)}")
    path = task_graph.critical_path()
    console.print(
        f"[bold]Critical path[/] ({len(path.tasks)} of {len(task_graph.tasks)} tasks): "
        f"{' -> '.join(path.tasks)}"
    )
    console.print("[bold]Mermaid[/]")
    console.print(f"```mermaid\n{chart}\n```", highlight=False, markup=False)
