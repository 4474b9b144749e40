"""The run timeline: segment math from hand-written events, and `show --timeline`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import BUNDLED_CREW_CONTEXTS, EXAMPLE_SPEC
from orchestrate.cli.app import app
from orchestrate.observe.timeline import (
    Phase,
    RunTimeline,
    Segment,
    axis_ticks,
    build_timeline,
    tick_label,
)

runner = CliRunner()
START = datetime(2026, 12, 4, 9, 0, 0, tzinfo=UTC)
AGENTS = {"a": "architect", "b": "fullstack"}
ANSI = re.compile(r"\x1b\[")


def at(seconds: float, kind: str, **fields: Any) -> dict[str, Any]:
    """An event ``seconds`` after START."""
    return {"ts": (START + timedelta(seconds=seconds)).isoformat(), "type": kind, **fields}


def state(seconds: float, task: str, new_state: str, reason: str | None = None) -> dict[str, Any]:
    return at(
        seconds, "task_state", task=task, agent=AGENTS.get(task), state=new_state, reason=reason
    )


def shape(segments: list[Segment]) -> list[tuple[str, float, float, str | None]]:
    return [(s.phase.value, round(s.start, 6), round(s.end, 6), s.outcome) for s in segments]


def timeline_of(*events: dict[str, Any]) -> RunTimeline:
    return build_timeline(list(events), AGENTS)


def test_a_task_waits_for_its_inputs_queues_for_a_worker_then_runs() -> None:
    timeline = timeline_of(
        at(0, "run_started", finished=[]),
        state(0, "a", "ready"),
        state(0.5, "a", "running"),
        state(2, "a", "succeeded"),
        state(2, "b", "ready"),
        state(3, "b", "running"),
        state(4.5, "b", "succeeded"),
        at(4.6, "run_finished", status="succeeded"),
    )

    a, b = timeline.tasks["a"], timeline.tasks["b"]
    assert shape(a.segments) == [
        ("waiting", 0, 0, None),
        ("queued", 0, 0.5, None),
        ("running", 0.5, 2, "succeeded"),
    ]
    assert shape(b.segments) == [
        ("waiting", 0, 2, None),
        ("queued", 2, 3, None),
        ("running", 3, 4.5, "succeeded"),
    ]
    assert (b.outcome, b.attempts, b.restored) == ("succeeded", 1, False)
    assert b.seconds_in(Phase.WAITING) == 2
    assert timeline.seconds == pytest.approx(4.6)
    assert [session.kind for session in timeline.sessions] == ["started"]


def test_a_retried_task_shows_each_attempt_and_the_backoff_between() -> None:
    timeline = timeline_of(
        at(0, "run_started"),
        state(0, "a", "ready"),
        state(0, "a", "running"),
        at(1, "attempt_failed", task="a", attempt=1, reason="HTTP 503", retry_in_seconds=0.5),
        state(1, "a", "retrying", "HTTP 503"),
        state(1.5, "a", "ready"),
        state(1.75, "a", "running"),
        state(3, "a", "succeeded"),
    )

    a = timeline.tasks["a"]
    assert shape(a.segments)[2:] == [
        ("running", 0, 1, "retried"),
        ("backoff", 1, 1.5, None),
        ("queued", 1.5, 1.75, None),
        ("running", 1.75, 3, "succeeded"),
    ]
    assert [segment.attempt for segment in a.segments if segment.phase is Phase.RUNNING] == [1, 2]
    assert [(mark.at, mark.kind, mark.reason) for mark in a.marks] == [
        (1, "attempt_failed", "HTTP 503")
    ]
    assert a.attempts == 2
    assert a.seconds_in(Phase.RUNNING) == pytest.approx(2.25)


def test_a_failed_task_skips_its_dependent_which_never_runs() -> None:
    timeline = timeline_of(
        at(0, "run_started"),
        state(0, "a", "ready"),
        state(0, "a", "running"),
        state(1, "a", "failed", "BackendError: outage"),
        state(1, "b", "skipped", "its input 'a' failed"),
        at(1.2, "run_finished", status="failed"),
    )

    a, b = timeline.tasks["a"], timeline.tasks["b"]
    assert shape(a.segments)[-1] == ("running", 0, 1, "failed")
    assert (a.outcome, a.reason) == ("failed", "BackendError: outage")
    assert shape(b.segments) == [("waiting", 0, 1, None)]
    assert (b.outcome, b.attempts) == ("skipped", 0)
    assert [(mark.at, mark.kind) for mark in b.marks] == [(1, "skipped")]


def test_a_resumed_run_lays_its_sessions_end_to_end_and_restores_finished_tasks() -> None:
    timeline = timeline_of(
        at(0, "run_started", finished=[]),
        state(0, "a", "ready"),
        state(0, "a", "running"),
        state(4, "a", "succeeded"),
        state(4, "b", "ready"),
        state(5, "b", "running"),
        at(10, "llm_retry", task="b"),  # the last thing the first process logged
        # a day later
        at(86_410, "run_resumed", finished=["a"]),
        state(86_410, "a", "succeeded", "restored from an earlier attempt"),
        state(86_410, "b", "ready"),
        state(86_411, "b", "running"),
        state(86_413, "b", "succeeded"),
        at(86_414, "run_finished", status="succeeded"),
    )

    first, second = timeline.sessions
    assert (first.offset, first.seconds, second.offset, second.seconds) == (0, 10, 10, 4)
    assert second.kind == "resumed"
    assert timeline.gap_before(1) == 86_400
    assert timeline.seconds == 14
    a, b = timeline.tasks["a"], timeline.tasks["b"]
    assert shape(a.segments)[-2:] == [("running", 0, 4, "succeeded"), ("restored", 10, 14, None)]
    assert (a.outcome, a.restored, a.attempts) == ("succeeded", True, 1)
    assert shape(b.segments) == [
        ("waiting", 0, 4, None),
        ("queued", 4, 5, None),
        ("running", 5, 10, "unfinished"),  # killed: the log never said how it ended
        ("waiting", 10, 10, None),
        ("queued", 10, 11, None),
        ("running", 11, 13, "succeeded"),
    ]
    assert (b.outcome, b.restored, b.attempts) == ("succeeded", False, 2)


def test_every_resume_starts_a_session_and_only_its_own_finished_tasks_are_restored() -> None:
    timeline = timeline_of(
        at(0, "run_started"),
        at(1, "run_finished", status="interrupted"),
        at(100, "run_resumed", finished=[]),
        state(100, "a", "ready"),
        state(100, "a", "running"),
        state(102, "a", "succeeded"),
        at(102, "run_finished", status="interrupted"),
        at(200, "run_resumed", finished=["a"]),
        state(200, "b", "ready"),
        state(200, "b", "running"),
        state(201, "b", "cancelled", "interrupted"),
        at(201, "run_finished", status="interrupted"),
    )

    assert [(s.kind, s.offset) for s in timeline.sessions] == [
        ("started", 0),
        ("resumed", 1),
        ("resumed", 3),
    ]
    assert timeline.seconds == 4
    a, b = timeline.tasks["a"], timeline.tasks["b"]
    assert shape(a.segments) == [
        ("waiting", 0, 1, None),
        ("waiting", 1, 1, None),
        ("queued", 1, 1, None),
        ("running", 1, 3, "succeeded"),
        ("restored", 3, 4, None),
    ]
    assert a.restored
    assert shape(b.segments)[-1] == ("running", 3, 4, "cancelled")
    assert (b.outcome, b.reason) == ("cancelled", "interrupted")


def test_a_run_without_events_has_tasks_but_no_time() -> None:
    timeline = build_timeline([], AGENTS)

    assert timeline.sessions == []
    assert timeline.seconds == 0
    assert list(timeline.tasks) == ["a", "b"]
    assert all(
        task.segments == [] and task.outcome == "pending" for task in timeline.tasks.values()
    )


def test_odd_lines_are_ignored_and_tasks_only_the_log_names_are_kept() -> None:
    timeline = timeline_of(
        {"type": "task_state", "task": "a", "state": "running"},  # no ts
        at(0, "run_started"),
        {"ts": "yesterday", "type": "task_state", "task": "a", "state": "running"},
        at(0.5, "something_new", task="a"),
        at(1, "task_state", task="extra", agent="docs", state="ready"),
        at(2, "task_state", task="extra", agent="docs", state="running"),
        at(3, "task_state", task="extra", agent="docs", state="succeeded"),
    )

    assert list(timeline.tasks) == ["a", "b", "extra"]
    assert timeline.tasks["extra"].agent == "docs"
    assert shape(timeline.tasks["a"].segments) == [("waiting", 0, 3, None)]
    assert timeline.tasks["a"].outcome == "pending"


def test_axis_ticks_are_round_and_labels_as_short_as_the_step() -> None:
    assert axis_ticks(3.36) == [0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert axis_ticks(0) == [0]
    assert [tick_label(t, 0.25) for t in axis_ticks(1.9)[:3]] == ["0", "0.25s", "0.50s"]
    assert [tick_label(t, 900) for t in axis_ticks(5000)][-2:] == ["1h", "1h15m"]


# --- `orchestrate show RUN_ID --timeline`, on real runs ----------------------------------


@pytest.fixture
def retried_run(isolated: Path, write_script, monkeypatch: pytest.MonkeyPatch) -> str:
    """A run where the developer's first call fails and the devops task fails for good."""
    monkeypatch.setenv("ORCHESTRATE_RETRY_BASE_SECONDS", "0")
    monkeypatch.setenv("ORCHESTRATE_RETRY_CAP_SECONDS", "0")
    script = write_script(
        fullstack={"answer": "FILE: app.py\n```python\nprint(1)\n```\n", "fail_first": 1},
        devops={"error": "simulated outage"},
    )
    result = runner.invoke(
        app, ["build", str(EXAMPLE_SPEC), "--model", f"scripted:{script}", "--json"]
    )
    assert result.exit_code == 1, result.output
    return str(json.loads(result.stdout)["run_id"])


def test_show_timeline_draws_a_line_per_task_without_colour_when_piped(retried_run: str) -> None:
    result = runner.invoke(app, ["show", retried_run, "--timeline"], env={"COLUMNS": "100"})

    assert result.exit_code == 0, result.output
    assert not ANSI.search(result.stdout)
    lines = result.stdout.splitlines()
    for task in BUNDLED_CREW_CONTEXTS:
        [line] = [line for line in lines if line.startswith(f"{task} ")]
        assert "█" in line or task == "review"
    assert re.search(r"^implement .*█.* (\d+\.\d)s succeeded$", result.stdout, re.MULTILINE)
    assert re.search(r"^deploy .* failed$", result.stdout, re.MULTILINE)
    assert re.search(r"^review .*◆.* skipped$", result.stdout, re.MULTILINE)
    assert "critical path" in result.stdout
    assert any(line.strip().startswith("┬") for line in lines), "an axis"
    assert all(len(line) <= 100 for line in lines)


def test_show_timeline_of_a_run_with_an_empty_log(retried_run: str, isolated: Path) -> None:
    (next((isolated / "runs").iterdir()) / "events.jsonl").write_text("")

    result = runner.invoke(app, ["show", retried_run, "--timeline"])

    assert result.exit_code == 0, result.output
    assert "No task timings" in result.stdout
