"""The task graph: pure DAG code with no I/O and no threads.

A task may start once every task it depends on has succeeded. ``graphlib`` does the
cycle detection and ordering; this module adds the views the scheduler and the CLI
need: levels, descendants, and the critical path under a set of task durations.
"""

from __future__ import annotations

import graphlib
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orchestrate.errors import CrewCycleError, CrewError


@dataclass(frozen=True)
class CriticalPath:
    """The longest chain of dependent tasks and its total weight."""

    tasks: tuple[str, ...]
    length: float


class TaskGraph:
    """A validated, acyclic graph of task names and their dependencies."""

    def __init__(self, dependencies: Mapping[str, Iterable[str]]) -> None:
        self._dependencies = {task: tuple(deps) for task, deps in dependencies.items()}
        self._check_references()
        self._order = self._topological_order()
        self._dependents: dict[str, list[str]] = {task: [] for task in self._order}
        for task in self._order:
            for dependency in self._dependencies[task]:
                self._dependents[dependency].append(task)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task, each after all of its dependencies."""
        return self._order

    def dependencies(self, task: str) -> tuple[str, ...]:
        return self._dependencies[task]

    def dependents(self, task: str) -> tuple[str, ...]:
        return tuple(self._dependents[task])

    def descendants(self, task: str) -> list[str]:
        """Every task that needs ``task``, directly or through others, in order."""
        reached: set[str] = set()
        frontier = list(self._dependents[task])
        while frontier:
            current = frontier.pop()
            if current not in reached:
                reached.add(current)
                frontier.extend(self._dependents[current])
        return [name for name in self._order if name in reached]

    def levels(self) -> list[list[str]]:
        """Group tasks by their longest distance from a task with no dependencies."""
        depth: dict[str, int] = {}
        for task in self._order:
            depth[task] = 1 + max((depth[dep] for dep in self._dependencies[task]), default=-1)
        grouped: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for task in self._order:
            grouped[depth[task]].append(task)
        return grouped

    def remaining_path(self, weights: Mapping[str, float] | None = None) -> dict[str, float]:
        """For each task, the weight of the longest chain from it to the end of the graph.

        The scheduler starts the ready task with the largest value first, because
        delaying it delays the whole run.
        """
        remaining: dict[str, float] = {}
        for task in reversed(self._order):
            tail = max((remaining[child] for child in self._dependents[task]), default=0.0)
            remaining[task] = self._weight(task, weights) + tail
        return remaining

    def critical_path(self, weights: Mapping[str, float] | None = None) -> CriticalPath:
        """The heaviest chain of dependent tasks; unit weights when none are given."""
        if not self._order:
            return CriticalPath((), 0.0)
        remaining = self.remaining_path(weights)
        roots = [task for task in self._order if not self._dependencies[task]]
        current = max(roots, key=lambda task: remaining[task])
        chain = [current]
        while self._dependents[current]:
            current = max(self._dependents[current], key=lambda task: remaining[task])
            chain.append(current)
        return CriticalPath(tuple(chain), remaining[chain[0]])

    def to_mermaid(self, labels: Mapping[str, str] | None = None) -> str:
        """Render the graph as a Mermaid flowchart, critical path in bold."""
        path = self.critical_path().tasks
        on_path = set(itertools.pairwise(path))
        lines = ["graph TD"]
        for task in self._order:
            label = (labels or {}).get(task, task)
            lines.append(f'    {task}["{label}"]')
        for task in self._order:
            for dependency in self._dependencies[task]:
                arrow = "==>" if (dependency, task) in on_path else "-->"
                lines.append(f"    {dependency} {arrow} {task}")
        return "\n".join(lines)

    def _weight(self, task: str, weights: Mapping[str, float] | None) -> float:
        return 1.0 if weights is None else float(weights.get(task, 0.0))

    def _check_references(self) -> None:
        for task, deps in self._dependencies.items():
            for dependency in deps:
                if dependency not in self._dependencies:
                    known = ", ".join(sorted(self._dependencies))
                    raise CrewError(
                        f"task '{task}' has context '{dependency}', which is not a task "
                        f"(tasks: {known})"
                    )
                if dependency == task:
                    raise CrewCycleError(f"task '{task}' lists itself in its context")

    def _topological_order(self) -> tuple[str, ...]:
        sorter = graphlib.TopologicalSorter(self._dependencies)
        try:
            return tuple(sorter.static_order())
        except graphlib.CycleError as exc:
            cycle = exc.args[1]
            raise CrewCycleError(
                f"the crew's contexts form a cycle: {' -> '.join(cycle)}; "
                f"remove one of these context links"
            ) from exc
