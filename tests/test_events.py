"""The event log: following a run that ends between two reads."""

from __future__ import annotations

from pathlib import Path

from orchestrate.store.events import EventLog, EventType, follow_events


def test_follow_reads_the_last_events_of_a_run_that_just_ended(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.emit(EventType.RUN_STARTED, run="r")
    checks = []

    def still_running() -> bool:
        # The run saves its status, then logs its last events: they land after our read.
        if not checks:
            log.emit(EventType.TASK_STATE, task="design", state="succeeded")
            log.emit(EventType.RUN_FINISHED, status="succeeded")
        checks.append(True)
        return False

    followed = list(follow_events(path, poll_seconds=0, still_running=still_running))

    assert [event["type"] for event in followed] == ["run_started", "task_state", "run_finished"]
    log.close()


def test_follow_skips_a_half_written_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"seq": 1, "type": "run_started"}\n{"seq": 2, "ty')

    followed = list(follow_events(path, poll_seconds=0, still_running=lambda: False))

    assert [event["seq"] for event in followed] == [1]
