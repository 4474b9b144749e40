"""Makespan of the six-task crew against its critical path, at a fixed latency per call.

Every agent answers through the scripted backend after LATENCY seconds, so the ideal
makespan is the critical path (design -> implement -> test -> review: 4 calls). The
same crew is also run by CrewAI's own Process.sequential in this run, as a baseline.

Usage: python bench/crew_makespan.py [--latency 1.0] [--workers 4]
Target: makespan / critical path <= 1.05.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

from orchestrate.agents import load_crewai
from orchestrate.build import BuildOptions, BuildRun
from orchestrate.crew.config import CrewConfig, load_crew
from orchestrate.crew.spec import load_spec
from orchestrate.llm.scripted import ScriptedBackend

TARGET_RATIO = 1.05
EXAMPLE_SPEC = Path(__file__).resolve().parents[1] / "examples" / "specs" / "todo-cli.yaml"


def run_orchestrate(latency: float, workers: int, folder: Path) -> tuple[float, float]:
    """Return (makespan, measured critical path) of one build."""
    script = {"latency_seconds": latency, "default": {"answer": "FILE: x.txt\n```\nx\n```"}}
    script_path = folder / "script.yaml"
    script_path.write_text(yaml.safe_dump(script))
    options = BuildOptions(
        model=f"scripted:{script_path}",
        workers=workers,
        max_tokens=64,
        temperature=0.0,
        runs_dir=folder / "runs",
    )
    run = BuildRun(
        load_spec(str(EXAMPLE_SPEC)),
        load_crew(None),
        ScriptedBackend.from_file(script_path),
        options,
    )
    record = run.execute().record
    return record.seconds or 0.0, record.critical_path_seconds or 0.0


def run_crewai_sequential(crew: CrewConfig, latency: float) -> float:
    """The same six tasks as one CrewAI crew with Process.sequential."""
    crewai = load_crewai()
    from crewai.llms.base_llm import BaseLLM

    class SleepyLLM(BaseLLM):
        def call(self, messages, *args, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(latency)
            return "done"

        def supports_function_calling(self) -> bool:
            return False

        def get_input_tokens_count(self, messages, tools=None, response_model=None) -> int:  # type: ignore[no-untyped-def]
            return 1

    llm = SleepyLLM(model="sleepy")
    agents = {
        name: crewai.Agent(role=a.role, goal=a.goal, backstory=a.backstory, llm=llm, verbose=False)
        for name, a in crew.agents.items()
    }
    tasks: dict[str, object] = {}
    for name in crew.graph().tasks:
        task = crew.tasks[name]
        tasks[name] = crewai.Task(
            description=task.description,
            expected_output=task.expected_output,
            agent=agents[task.agent],
            context=[tasks[dependency] for dependency in task.context],
        )
    sequential = crewai.Crew(
        agents=list(agents.values()),
        tasks=list(tasks.values()),
        process=crewai.Process.sequential,
        verbose=False,
    )
    started = time.perf_counter()
    sequential.kickoff(inputs={"spec": "a todo CLI"})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("ORCHESTRATE_HOME", tempfile.mkdtemp(prefix="orchestrate-bench-"))

    crew, graph, _ = load_crew(None)
    ideal = len(graph.critical_path().tasks) * args.latency
    with tempfile.TemporaryDirectory() as folder:
        makespan, critical = run_orchestrate(args.latency, args.workers, Path(folder))
    sequential = run_crewai_sequential(crew, args.latency)

    print(f"six-task crew, {args.latency:.1f} s per call, --workers {args.workers}")
    print(f"  ideal critical path (4 calls)   {ideal:6.2f} s")
    print(f"  measured critical path          {critical:6.2f} s")
    print(f"  orchestrate makespan            {makespan:6.2f} s")
    print(f"  CrewAI Process.sequential       {sequential:6.2f} s  (baseline, same run)")
    ratio = makespan / critical
    print(f"  makespan / critical path        {ratio:6.3f}  (target <= {TARGET_RATIO})")
    print(f"  makespan / ideal                {makespan / ideal:6.3f}")
    print(f"  CrewAI sequential / orchestrate {sequential / makespan:6.2f}x")
    print(f"target: {'met' if ratio <= TARGET_RATIO else 'MISSED'}")


if __name__ == "__main__":
    main()
