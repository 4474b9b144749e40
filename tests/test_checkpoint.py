"""Tests for orchestrate.store.checkpoint and orchestrate.store.history."""

from __future__ import annotations

from pathlib import Path

from orchestrate.store.checkpoint import Checkpoint, FinishedTask
from orchestrate.store.history import DurationHistory, task_weights


def test_finished_tasks_survive_reopening(tmp_path: Path):
    path = tmp_path / "checkpoint.sqlite3"
    checkpoint = Checkpoint(path)
    design = FinishedTask("design", "the design", ["DESIGN.md"], 1.5, 10, 20, 1, 0, 2, "now")
    checkpoint.record(design)
    checkpoint.close()

    reopened = Checkpoint(path)
    assert reopened.finished() == {"design": design}


def test_recording_a_task_again_replaces_it(tmp_path: Path):
    checkpoint = Checkpoint(tmp_path / "checkpoint.sqlite3")
    checkpoint.record(FinishedTask("design", "first"))
    checkpoint.record(FinishedTask("design", "second"))
    assert checkpoint.finished()["design"].answer == "second"


def test_history_estimates_the_median_of_recent_runs_per_model(tmp_path: Path):
    history = DurationHistory(tmp_path / "history.sqlite3")
    for seconds in (1.0, 9.0, 2.0):
        history.record("architect", "model-a", seconds)
    history.record("architect", "model-b", 50.0)
    history.record("qa", "model-a", 4.0)

    assert history.estimates(["architect", "qa", "docs"], "model-a") == {
        "architect": 2.0,
        "qa": 4.0,
    }
    assert history.estimates(["architect"], "model-c") == {}


def test_history_that_does_not_exist_yet_estimates_nothing(tmp_path: Path):
    history = DurationHistory(tmp_path / "missing" / "history.sqlite3")
    assert history.estimates(["architect"], "m") == {}
    assert not history.path.exists()


def test_task_weights_fall_back_to_equal_or_typical_values():
    tasks = {"design": "architect", "test": "qa", "review": "critic"}
    assert task_weights(tasks, {}) == {"design": 1.0, "test": 1.0, "review": 1.0}
    assert task_weights(tasks, {"architect": 2.0, "qa": 6.0}) == {
        "design": 2.0,
        "test": 6.0,
        "review": 4.0,
    }
