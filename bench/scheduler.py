"""How close the scheduler gets to the best possible makespan, and what it costs per task.

Three measurements, every ratio against a baseline measured in the same run:

1. The six-task crew with unequal latencies (architect 1 s, fullstack 3 s, devops 1 s,
   qa 1 s, docs 2 s, critic 1 s) on the scripted backend: our makespan against the
   critical path (the first build of the process, which also pays one-time imports and
   set-up, and the median of three builds after it, which the target applies to), and
   against CrewAI's own ``kickoff()`` on the same crew, both
   ``Process.sequential`` and the best ``async_execution`` layout its validator accepts
   (every task order and async choice is ranked by CrewAI's execution rules; the
   best one its validator accepts is then run for real).
2. The crew again with a warm response cache: the first run's wall time over the
   cached re-run's (target >= 50x).
3. Random DAGs of 200 and 2,000 tasks with 1-3 ms sleeps at 2, 8 and 32 workers:
   makespan against the lower bound max(critical path, total work / workers), and the
   scheduler's overhead per task with zero-latency tasks, next to Dask's threaded
   scheduler on the same DAG.

Usage: python bench/scheduler.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrate.agents import load_crewai
from orchestrate.build import BuildOptions, BuildRun
from orchestrate.crew.config import CrewConfig, LoadedCrew, load_crew
from orchestrate.crew.graph import TaskGraph
from orchestrate.crew.spec import load_spec
from orchestrate.llm.cache import CachingBackend, ResponseCache
from orchestrate.llm.models import ModelRouter
from orchestrate.llm.replay import TaskReplay
from orchestrate.llm.scripted import ScriptedBackend
from orchestrate.scheduler.executor import DagExecutor, TaskAttempt
from scripted_crew import EXAMPLE_SPEC, write_script

LATENCIES = {"architect": 1.0, "fullstack": 3.0, "devops": 1.0, "qa": 1.0, "docs": 2.0}
LATENCIES["critic"] = 1.0
CRITICAL_PATH_TARGET = 1.03
CACHE_SPEEDUP_TARGET = 50.0  # first run / cached re-run
WARM_BUILDS = 3


# 1 and 2: the crew, ours and CrewAI's


def crew_build(crew: LoadedCrew, folder: Path, cache: ResponseCache) -> tuple[float, Any]:
    """One build of the crew at LATENCIES through the response cache; (wall s, record)."""
    script_path = write_script(folder, LATENCIES)
    backend = CachingBackend(ScriptedBackend.from_file(script_path), cache, cache_sampled=False)
    models = ModelRouter.single(backend, replay=TaskReplay(cache, cache_sampled=False))
    options = BuildOptions(
        model=f"scripted:{script_path}",
        workers=4,
        max_tokens=64,
        temperature=0.0,
        runs_dir=folder / "runs",
    )
    started = time.perf_counter()
    run = BuildRun.start(load_spec(str(EXAMPLE_SPEC)), crew, models, options)
    record = run.execute().record
    return time.perf_counter() - started, record


def crewai_tasks(crew: CrewConfig, order: list[str], async_tasks: set[str]) -> list[Any]:
    crewai = load_crewai()
    from crewai.llms.base_llm import BaseLLM

    class SleepyLLM(BaseLLM):
        def call(self, messages, *args, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(LATENCIES[self.model])
            return "done"

        def supports_function_calling(self) -> bool:
            return False

        def get_input_tokens_count(self, messages, tools=None, response_model=None) -> int:  # type: ignore[no-untyped-def]
            return 1

    built: dict[str, Any] = {}
    for name in order:
        task = crew.tasks[name]
        agent_config = crew.agents[task.agent]
        agent = crewai.Agent(
            role=agent_config.role,
            goal=agent_config.goal,
            backstory=agent_config.backstory,
            llm=SleepyLLM(model=task.agent),
            verbose=False,
        )
        built[name] = crewai.Task(
            description=task.description,
            expected_output=task.expected_output,
            agent=agent,
            context=[built[dependency] for dependency in task.context],
            async_execution=name in async_tasks,
        )
    return [built[name] for name in order]


def crewai_accepts(crew: CrewConfig, order: list[str], async_tasks: set[str]) -> bool:
    crewai = load_crewai()
    tasks = crewai_tasks(crew, order, async_tasks)
    try:
        crewai.Crew(agents=[task.agent for task in tasks], tasks=tasks, verbose=False)
    except Exception:  # CrewAI's validator rejects the layout
        return False
    return True


def crewai_predicted_makespan(crew: CrewConfig, order: list[str], async_tasks: set[str]) -> float:
    """CrewAI's semantics: an async task starts at once; a sync one waits for all pending."""
    clock, pending = 0.0, {}
    finished: dict[str, float] = {}
    for name in order:
        latency = LATENCIES[crew.tasks[name].agent]
        if name in async_tasks:
            if any(finished.get(dep, float("inf")) > clock for dep in crew.tasks[name].context):
                return float("inf")  # it would start without an input's output
            pending[name] = clock + latency
            finished[name] = clock + latency
        else:
            clock = max([clock, *pending.values()])
            pending.clear()
            clock += latency
            finished[name] = clock
    return max([clock, *pending.values()])


def best_crewai_layout(crew: CrewConfig) -> tuple[list[str], set[str], int]:
    graph = crew.graph()
    orders = [
        list(order)
        for order in itertools.permutations(graph.tasks)
        if all(
            order.index(dep) < order.index(task)
            for task in order
            for dep in graph.dependencies(task)
        )
    ]
    candidates = []
    for order in orders:
        for size in range(len(order) + 1):
            for chosen in itertools.combinations(order, size):
                predicted = crewai_predicted_makespan(crew, order, set(chosen))
                if predicted < float("inf"):
                    candidates.append((predicted, order, set(chosen)))
    candidates.sort(key=lambda candidate: candidate[0])
    for checked, (_, order, chosen) in enumerate(candidates, start=1):
        if crewai_accepts(crew, order, chosen):
            return order, chosen, checked
    raise RuntimeError("CrewAI accepted no layout")


def crewai_kickoff(crew: CrewConfig, order: list[str], async_tasks: set[str]) -> float:
    crewai = load_crewai()
    tasks = crewai_tasks(crew, order, async_tasks)
    team = crewai.Crew(agents=[task.agent for task in tasks], tasks=tasks, verbose=False)
    started = time.perf_counter()
    team.kickoff(inputs={"spec": "a todo CLI"})
    return time.perf_counter() - started


def bench_crew(folder: Path) -> None:
    # The six agent tasks alone, as CrewAI runs them: its crews have no QA stage.
    bundled = load_crew(None)
    config = bundled.config.without_checks()
    crew = bundled._replace(config=config, graph=config.graph())
    graph = crew.graph
    weights = {name: LATENCIES[task.agent] for name, task in crew.config.tasks.items()}
    ideal = graph.critical_path(weights)
    cache = ResponseCache(folder / "cache.sqlite3", max_bytes=2**26)

    first_wall, record = crew_build(crew, folder / "first", cache)
    cached_wall, cached = crew_build(crew, folder / "cached", cache)
    warm = [
        crew_build(crew, folder / f"warm-{number}", uncached(folder / f"cache-{number}"))[1]
        for number in range(WARM_BUILDS)
    ]
    sequential = crewai_kickoff(crew.config, list(graph.tasks), set())
    order, async_tasks, checked = best_crewai_layout(crew.config)
    best = crewai_kickoff(crew.config, order, async_tasks)

    cold = record.seconds
    makespan = statistics.median(warm_record.seconds for warm_record in warm)
    latencies = ", ".join(f"{agent} {seconds:g}s" for agent, seconds in LATENCIES.items())
    layout = ", ".join(f"{name}{'*' if name in async_tasks else ''}" for name in order)
    ratio, speedup = makespan / ideal.length, first_wall / cached_wall
    print(f"1. six-task crew, latencies {latencies}")
    row("critical path (ideal)", f"{ideal.length:6.2f} s", " -> ".join(ideal.tasks))
    row("orchestrate makespan, first build", f"{cold:6.2f} s", f"{cold / ideal.length:.3f}x ideal")
    row("orchestrate makespan, warm", f"{makespan:6.2f} s", f"median of {WARM_BUILDS}")
    row("CrewAI kickoff, sequential", f"{sequential:6.2f} s")
    row("CrewAI kickoff, best async layout", f"{best:6.2f} s", f"{layout} (* async)")
    row("", "", f"best predicted of the layouts CrewAI accepts; {checked} validated")
    row("ours / critical path", f"{ratio:6.3f}", target(ratio <= CRITICAL_PATH_TARGET, "<= 1.03"))
    row("ours / CrewAI sequential", f"{makespan / sequential:6.3f}")
    row("ours / CrewAI best", f"{makespan / best:6.3f}")
    print("2. cached re-run of the crew (in-process, run folder included)")
    row("first run", f"{first_wall:6.3f} s", f"{record.llm_calls} model calls")
    calls = f"{cached.llm_calls} model calls, {cached.cached_calls} from the cache"
    row("cached re-run", f"{cached_wall:6.3f} s", calls)
    row("first / cached", f"{speedup:6.1f}x", target(speedup >= CACHE_SPEEDUP_TARGET, ">= 50x"))


def uncached(path: Path) -> ResponseCache:
    """An empty response cache: a warm build must still call the (scripted) model."""
    return ResponseCache(path, max_bytes=2**26)


def row(label: str, value: str, note: str = "") -> None:
    print(f"   {label:<36}{value:>9}  {note}".rstrip())


def target(met: bool, goal: str) -> str:
    return f"target {goal}: {'met' if met else 'MISSED'}"


# 3: random DAGs


def random_dag(size: int, seed: int) -> tuple[TaskGraph, dict[str, float]]:
    """Each task reads 0-3 of the 40 tasks before it, so the DAG is deep and wide."""
    rng = random.Random(seed)
    names = [f"t{number}" for number in range(size)]
    dependencies = {}
    for index, name in enumerate(names):
        window = names[max(0, index - 40) : index]
        dependencies[name] = rng.sample(window, min(len(window), rng.randint(0, 3)))
    latencies = {name: rng.uniform(0.001, 0.003) for name in names}
    return TaskGraph(dependencies), latencies


def ours(graph: TaskGraph, latencies: dict[str, float], workers: int) -> float:
    def run_task(attempt: TaskAttempt) -> None:
        if latencies[attempt.task]:
            time.sleep(latencies[attempt.task])

    started = time.perf_counter()
    DagExecutor(graph, run_task, workers=workers).run()
    return time.perf_counter() - started


def dask_threaded(graph: TaskGraph, latencies: dict[str, float], workers: int) -> float:
    import dask.threaded

    def work(name: str) -> Callable[..., None]:
        latency = latencies[name]
        return (lambda *inputs: time.sleep(latency)) if latency else (lambda *inputs: None)

    dsk = {name: (work(name), *graph.dependencies(name)) for name in graph.tasks}
    started = time.perf_counter()
    dask.threaded.get(dsk, list(graph.tasks), num_workers=workers)
    return time.perf_counter() - started


def bench_random_dags(sizes: list[int], repeats: int) -> None:
    print("3. random DAGs, 1-3 ms per task; lower bound = max(critical path, work / workers)")
    columns = ("tasks", "workers", "bound s", "ours s", "ours/bound", "dask s", "dask/bound")
    print("   " + " ".join(f"{name:>10}" for name in columns), "ours us/task dask us/task")
    for size in sizes:
        graph, latencies = random_dag(size, seed=size)
        zero = dict.fromkeys(graph.tasks, 0.0)
        critical = graph.critical_path(latencies).length
        work = sum(latencies.values())
        for workers in (2, 8, 32):
            bound = max(critical, work / workers)
            our_span = min(ours(graph, latencies, workers) for _ in range(repeats))
            dask_span = min(dask_threaded(graph, latencies, workers) for _ in range(repeats))
            our_overhead = statistics.median(ours(graph, zero, workers) for _ in range(3)) / size
            dask_overhead = (
                statistics.median(dask_threaded(graph, zero, workers) for _ in range(3)) / size
            )
            cells = (size, workers, f"{bound:.3f}", f"{our_span:.3f}", f"{our_span / bound:.2f}")
            cells += (f"{dask_span:.3f}", f"{dask_span / bound:.2f}")
            print(
                "   " + " ".join(f"{cell:>10}" for cell in cells),
                f"{our_overhead * 1e6:12.0f} {dask_overhead * 1e6:12.0f}",
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Only the 200-task DAGs, once.")
    args = parser.parse_args()
    os.environ.setdefault("ORCHESTRATE_HOME", tempfile.mkdtemp(prefix="orchestrate-bench-"))
    print(f"machine: {os.cpu_count()} CPUs; threads alive at start {threading.active_count()}")
    with tempfile.TemporaryDirectory() as folder:
        bench_crew(Path(folder))
    bench_random_dags([200] if args.quick else [200, 2000], repeats=1 if args.quick else 2)


if __name__ == "__main__":
    main()
