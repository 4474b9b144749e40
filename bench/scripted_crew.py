"""The scripted crew that bench/scheduler.py and bench/executors.py both build.

Every agent answers one file block after a fixed latency, so a build's makespan
measures the scheduler and executor, not a model.
"""

from __future__ import annotations

from pathlib import Path

import yaml

EXAMPLE_SPEC = Path(__file__).resolve().parents[1] / "examples" / "specs" / "todo-cli.yaml"


def write_script(folder: Path, latencies: dict[str, float]) -> Path:
    """Write a scripted-backend file in a new ``folder``: one answer per agent at its latency."""
    script = {
        "agents": {
            agent: {"answer": f"FILE: {agent}.md\n```\n{agent} output\n```", "latency_seconds": s}
            for agent, s in latencies.items()
        }
    }
    folder.mkdir(parents=True)
    script_path = folder / "script.yaml"
    script_path.write_text(yaml.safe_dump(script))
    return script_path
