"""Tests for orchestrate.crew.graph.TaskGraph."""

from __future__ import annotations

import re

import pytest

from conftest import BUNDLED_CREW_CONTEXTS
from orchestrate.crew.graph import CriticalPath, TaskGraph
from orchestrate.errors import CrewError

CREW = BUNDLED_CREW_CONTEXTS


@pytest.fixture
def graph():
    return TaskGraph(CREW)


def test_order_puts_every_task_after_its_dependencies(graph):
    order = graph.tasks
    assert sorted(order) == sorted(CREW)
    for task, deps in CREW.items():
        for dep in deps:
            assert order.index(dep) < order.index(task)


def test_chain_order_is_exact():
    assert TaskGraph({"c": ["b"], "b": ["a"], "a": []}).tasks == ("a", "b", "c")


def test_dependencies_are_kept_as_given(graph):
    assert graph.dependencies("review") == ("implement", "test", "deploy", "document")
    assert graph.dependencies("design") == ()


def test_dependents_are_direct_only(graph):
    assert set(graph.dependents("design")) == {"implement", "deploy", "document"}
    assert set(graph.dependents("implement")) == {"test", "document", "review"}
    assert graph.dependents("review") == ()


def test_descendants_are_transitive_and_in_order(graph):
    found = graph.descendants("implement")
    assert set(found) == {"test", "document", "review"}
    assert found == [task for task in graph.tasks if task in set(found)]
    assert graph.descendants("deploy") == ["review"]
    assert graph.descendants("review") == []


def test_levels_group_by_longest_distance(graph):
    levels = [sorted(level) for level in graph.levels()]
    assert levels == [["design"], ["deploy", "implement"], ["document", "test"], ["review"]]


def test_levels_of_empty_graph():
    assert TaskGraph({}).levels() == []


def test_remaining_path_with_unit_weights(graph):
    assert graph.remaining_path() == {
        "review": 1.0,
        "test": 2.0,
        "document": 2.0,
        "deploy": 2.0,
        "implement": 3.0,
        "design": 4.0,
    }


def test_remaining_path_with_weights_and_missing_weight_as_zero():
    graph = TaskGraph({"a": [], "b": ["a"], "c": ["a"]})
    assert graph.remaining_path({"a": 1.0, "b": 5.0}) == {"a": 6.0, "b": 5.0, "c": 0.0}


def test_critical_path_unit_weights(graph):
    path = graph.critical_path()
    assert path.length == 4.0
    assert path.tasks[:2] == ("design", "implement")
    assert path.tasks[2] in {"test", "document"}
    assert path.tasks[3] == "review"


def test_critical_path_with_weights_follows_heaviest_chain(graph):
    weights = {
        "design": 1.0,
        "implement": 5.0,
        "deploy": 20.0,
        "test": 2.0,
        "document": 1.0,
        "review": 1.0,
    }
    assert graph.critical_path(weights) == CriticalPath(("design", "deploy", "review"), 22.0)


def test_critical_path_picks_heaviest_root():
    graph = TaskGraph({"a": [], "b": [], "c": ["b"]})
    assert graph.critical_path({"a": 10.0, "b": 1.0, "c": 1.0}) == CriticalPath(("a",), 10.0)
    assert graph.critical_path() == CriticalPath(("b", "c"), 2.0)


def test_critical_path_of_empty_graph():
    assert TaskGraph({}).critical_path() == CriticalPath((), 0.0)


def test_to_mermaid_marks_critical_path_in_bold():
    graph = TaskGraph({"a": [], "b": ["a"], "c": ["b"], "d": ["a"]})
    lines = graph.to_mermaid().splitlines()
    assert lines[0] == "graph TD"
    assert '    a["a"]' in lines
    assert '    d["d"]' in lines
    assert "    a ==> b" in lines
    assert "    b ==> c" in lines
    assert "    a --> d" in lines
    assert len(lines) == 1 + 4 + 3


def test_to_mermaid_uses_labels():
    graph = TaskGraph({"a": [], "b": ["a"]})
    text = graph.to_mermaid({"a": "Architect"})
    assert '    a["Architect"]' in text.splitlines()
    assert '    b["b"]' in text.splitlines()


def test_unknown_context_raises_crew_error_naming_it():
    with pytest.raises(CrewError, match=r"task 'a' has context 'ghost', which is not a task"):
        TaskGraph({"a": ["ghost"], "b": []})


def test_self_reference_raises_crew_error():
    with pytest.raises(CrewError, match=r"task 'a' lists itself in its context"):
        TaskGraph({"a": ["a"]})


def test_cycle_raises_crew_error_naming_the_cycle():
    with pytest.raises(CrewError) as info:
        TaskGraph({"a": ["c"], "b": ["a"], "c": ["b"], "d": []})
    match = re.search(r"cycle: (\w+) -> (\w+) -> (\w+) -> (\w+)", str(info.value))
    assert match is not None, str(info.value)
    assert set(match.groups()[:3]) == {"a", "b", "c"}
    assert match.group(4) == match.group(1)
    assert "d" not in match.groups()


def test_two_task_cycle_is_named():
    with pytest.raises(CrewError, match=r"cycle: (x -> y -> x|y -> x -> y)"):
        TaskGraph({"x": ["y"], "y": ["x"]})
