"""What running tasks on Ray costs against running them on local threads, in one run.

Both executors share one scheduler; only how an attempt is carried out differs. On a
local Ray started here (``ray.init``, all CPUs, no dashboard):

1. The six-task crew on the scripted backend with unequal latencies (architect 0.5 s,
   fullstack 1.5 s, devops 0.5 s, qa 0.5 s, docs 1 s, critic 0.5 s): makespan of a
   local build and of a Ray build, the Ray one cold (the first: its workers start and
   import CrewAI) and warm (the median of the builds after it), and the overhead per
   task over the critical path.
2. 200 independent no-op tasks at 8 workers through ``DagExecutor``: locally a no-op
   call, on Ray one Ray task per attempt awaited exactly as a build awaits its tasks.
   Makespan, and time per task (makespan / 200).

Ratios are Ray over local. Usage: python bench/executors.py
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrate.build import BuildOptions, BuildRun
from orchestrate.crew.config import LoadedCrew, load_crew
from orchestrate.crew.graph import TaskGraph
from orchestrate.crew.spec import load_spec
from orchestrate.llm.models import ModelRouter
from orchestrate.llm.scripted import ScriptedBackend
from orchestrate.safety.guards import SafetyGuards
from orchestrate.scheduler.executor import DagExecutor, TaskAttempt
from orchestrate.settings import load_settings
from scripted_crew import EXAMPLE_SPEC, write_script

LATENCIES = {"architect": 0.5, "fullstack": 1.5, "devops": 0.5, "qa": 0.5, "docs": 1.0}
LATENCIES["critic"] = 0.5
WARM_BUILDS = 3
NOOP_TASKS = 200
NOOP_WORKERS = 8


def crew_build(crew: LoadedCrew, folder: Path, *, on_ray: bool) -> float:
    """One build of the crew at LATENCIES; its wall time in seconds."""
    script_path = write_script(folder, LATENCIES)
    model = f"scripted:{script_path}"
    models = ModelRouter.single(ScriptedBackend.from_file(script_path))
    options = BuildOptions(
        model=model, workers=4, max_tokens=64, temperature=0.0, runs_dir=folder / "runs"
    )
    started = time.perf_counter()
    run = BuildRun.start(load_spec(str(EXAMPLE_SPEC)), crew, models, options)
    if on_ray:
        from orchestrate.scheduler.ray_executor import open_ray_tasks

        run.remote = open_ray_tasks(load_settings(model=model), models, SafetyGuards())
    record = run.execute().record
    if record.status.value != "succeeded":
        raise RuntimeError(f"the {'Ray' if on_ray else 'local'} build failed: {record.failure}")
    return time.perf_counter() - started


def bench_crew(folder: Path) -> None:
    crew = load_crew(None)
    weights = {name: LATENCIES.get(task.agent, 0.0) for name, task in crew.config.tasks.items()}
    ideal = crew.graph.critical_path(weights).length
    tasks = len(crew.config.tasks)
    crew_build(crew, folder / "local-first", on_ray=False)  # imports CrewAI once, for both
    local = statistics.median(
        crew_build(crew, folder / f"local-{n}", on_ray=False) for n in range(WARM_BUILDS)
    )
    cold = crew_build(crew, folder / "ray-first", on_ray=True)
    warm = statistics.median(
        crew_build(crew, folder / f"ray-{n}", on_ray=True) for n in range(WARM_BUILDS)
    )
    print(f"\n1. the {tasks}-task crew (critical path {ideal:.2f} s)")
    print(f"   {'':14} {'makespan':>9} {'per task over the path':>24} {'vs local':>9}")
    for label, seconds in (("local", local), ("ray, cold", cold), ("ray, warm", warm)):
        over = (seconds - ideal) / tasks * 1000
        print(f"   {label:14} {seconds:8.2f}s {over:21.1f} ms {seconds / local:8.2f}x")


def noop(attempt: TaskAttempt) -> None:
    """A task with nothing to do: what is left is the executor's own cost."""


def noop_makespan(run_task: Any) -> float:
    graph = TaskGraph({f"t{n:03d}": [] for n in range(NOOP_TASKS)})
    executor: DagExecutor[None] = DagExecutor(graph, run_task, workers=NOOP_WORKERS)
    started = time.perf_counter()
    outcome = executor.run()
    if outcome.failed:
        raise RuntimeError(f"no-op tasks failed: {outcome.failure_summary()}")
    return time.perf_counter() - started


def bench_noops() -> None:
    import ray

    from orchestrate.scheduler.ray_executor import wait_for

    def remote_noop() -> None:
        return None

    remote = ray.remote(num_cpus=0.25, max_retries=0)(remote_noop)

    def on_ray(attempt: TaskAttempt) -> None:
        wait_for(remote.remote(), attempt)

    local = statistics.median(noop_makespan(noop) for _ in range(3))
    noop_makespan(on_ray)  # workers start once; the runs after it are measured
    ray_seconds = statistics.median(noop_makespan(on_ray) for _ in range(3))
    print(f"\n2. {NOOP_TASKS} independent no-op tasks, {NOOP_WORKERS} in flight")
    print(f"   {'':14} {'makespan':>9} {'per task':>10} {'vs local':>9}")
    for label, seconds in (("local", local), ("ray", ray_seconds)):
        per_task = seconds / NOOP_TASKS * 1000
        print(f"   {label:14} {seconds:8.3f}s {per_task:7.2f} ms {seconds / local:8.1f}x")


def main() -> None:
    import ray

    os.environ.setdefault("ORCHESTRATE_HOME", tempfile.mkdtemp(prefix="orchestrate-bench-"))
    started = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    print(f"machine: {os.cpu_count()} CPUs; ray.init took {time.perf_counter() - started:.1f} s")
    try:
        with tempfile.TemporaryDirectory() as folder:
            bench_crew(Path(folder))
        bench_noops()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
