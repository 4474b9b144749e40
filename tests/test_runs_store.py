"""Tests for orchestrate.store.runs and orchestrate.store.events."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from orchestrate.errors import RunNotFoundError
from orchestrate.store.events import EventLog, EventType, read_events
from orchestrate.store.runs import RunFolder, RunRecord, RunStatus, RunStore, TaskRecord


def make_record(run_id="20240101-000000-abcdef", **changes):
    fields = {
        "id": run_id,
        "spec_title": "Todo",
        "spec_text": "A todo CLI.",
        "spec_source": "inline",
        "crew_file": "config/crew.yaml",
        "model": "scripted:x.yaml",
        "workers": 2,
        "tasks": {
            "design": TaskRecord(agent="architect", role="Architect", depends_on=[]),
            "build": TaskRecord(agent="dev", role="Dev", depends_on=["design"]),
        },
    }
    fields.update(changes)
    return RunRecord(**fields)


def add_run(root, run_id, **changes):
    folder = RunFolder(root / run_id)
    folder.path.mkdir(parents=True)
    folder.save(make_record(run_id, **changes))
    return folder


def test_create_makes_run_folder_layout(tmp_path):
    store = RunStore(tmp_path / "runs")
    folder = store.create()
    assert folder.path.parent == tmp_path / "runs"
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", folder.run_id)
    assert folder.tasks_dir.is_dir()
    assert folder.outputs_dir.is_dir()
    assert folder.run_json == folder.path / "run.json"
    assert folder.events_path == folder.path / "events.jsonl"
    assert not folder.run_json.exists()


def test_create_gives_distinct_ids(tmp_path):
    store = RunStore(tmp_path)
    assert store.create().run_id != store.create().run_id


def test_save_load_roundtrip(tmp_path):
    folder = RunStore(tmp_path).create()
    record = make_record(folder.run_id, status=RunStatus.SUCCEEDED, files=["a.py"])
    record.tasks["design"].prompt_tokens = 12
    record.tasks["build"].prompt_tokens = 30
    record.tasks["build"].completion_tokens = 7
    folder.save(record)
    loaded = folder.load()
    assert loaded == record
    assert loaded.started_at.tzinfo is not None
    assert (loaded.prompt_tokens, loaded.completion_tokens) == (42, 7)


def test_save_replaces_and_leaves_no_temp_files(tmp_path):
    folder = RunStore(tmp_path).create()
    folder.save(make_record(folder.run_id))
    folder.save(make_record(folder.run_id, status=RunStatus.FAILED))
    assert sorted(p.name for p in folder.path.iterdir()) == ["outputs", "run.json", "tasks"]
    assert json.loads(folder.run_json.read_text())["status"] == "failed"


def test_load_without_run_json_raises(tmp_path):
    folder = RunStore(tmp_path).create()
    with pytest.raises(RunNotFoundError, match=r"has no readable run\.json"):
        folder.load()


def test_write_task_output(tmp_path):
    folder = RunStore(tmp_path).create()
    path = folder.write_task_output("design", "# Design\n")
    assert path == folder.tasks_dir / "design.md"
    assert path.read_text(encoding="utf-8") == "# Design\n"


@pytest.fixture
def populated(tmp_path):
    add_run(tmp_path, "20240101-000000-aaaaaa")
    add_run(tmp_path, "20240101-000000-aabbbb")
    add_run(tmp_path, "20250101-120000-cccccc")
    return RunStore(tmp_path)


def test_find_exact_id(populated):
    found = populated.find("20240101-000000-aaaaaa")
    assert found.run_id == "20240101-000000-aaaaaa"
    assert found.load().id == "20240101-000000-aaaaaa"


def test_find_exact_id_wins_over_longer_prefix_match(tmp_path):
    add_run(tmp_path, "run1")
    add_run(tmp_path, "run10")
    assert RunStore(tmp_path).find("run1").run_id == "run1"


def test_find_unique_prefix(populated):
    assert populated.find("2025").run_id == "20250101-120000-cccccc"
    assert populated.find("20240101-000000-aab").run_id == "20240101-000000-aabbbb"


def test_find_ambiguous_prefix(populated):
    with pytest.raises(RunNotFoundError, match="matches several runs") as info:
        populated.find("20240101")
    assert "20240101-000000-aaaaaa" in str(info.value)
    assert "20240101-000000-aabbbb" in str(info.value)


@pytest.mark.parametrize("run_id", ["2023", "nothing"])
def test_find_missing(populated, run_id):
    with pytest.raises(RunNotFoundError, match=f"no run '{run_id}'"):
        populated.find(run_id)


@pytest.mark.parametrize("run_id", ["", "a/b", ".hidden", "../runs"])
def test_find_rejects_non_ids(populated, run_id):
    with pytest.raises(RunNotFoundError, match="is not a run id"):
        populated.find(run_id)


def test_find_ignores_folder_without_run_json(tmp_path):
    add_run(tmp_path, "20240101-000000-aaaaaa")
    (tmp_path / "20240101-000000-empty0").mkdir()
    assert RunStore(tmp_path).find("20240101").run_id == "20240101-000000-aaaaaa"


def test_find_in_missing_root(tmp_path):
    with pytest.raises(RunNotFoundError):
        RunStore(tmp_path / "nope").find("2024")


def test_list_runs_newest_first(populated):
    assert [record.id for record in populated.list_runs()] == [
        "20250101-120000-cccccc",
        "20240101-000000-aabbbb",
        "20240101-000000-aaaaaa",
    ]


def test_list_runs_skips_corrupt_and_incomplete_folders(tmp_path):
    add_run(tmp_path, "20240101-000000-aaaaaa")
    corrupt = tmp_path / "20240601-000000-bad000"
    corrupt.mkdir()
    (corrupt / "run.json").write_text("{not json", encoding="utf-8")
    invalid = tmp_path / "20240701-000000-bad111"
    invalid.mkdir()
    (invalid / "run.json").write_text('{"id": "x"}', encoding="utf-8")
    (tmp_path / "20240801-000000-empty0").mkdir()
    (tmp_path / "stray.txt").write_text("x", encoding="utf-8")
    assert [record.id for record in RunStore(tmp_path).list_runs()] == ["20240101-000000-aaaaaa"]


def test_list_runs_of_missing_root(tmp_path):
    assert RunStore(tmp_path / "nope").list_runs() == []


def test_is_live_for_current_process():
    record = make_record()
    assert record.pid == os.getpid()
    assert record.is_live() is True


@pytest.mark.parametrize("status", [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.INTERRUPTED])
def test_is_live_false_when_finished(status):
    assert make_record(status=status).is_live() is False


def test_is_live_false_for_dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    assert make_record(pid=child.pid).is_live() is False


def test_is_live_false_when_pid_started_after_the_run():
    # The current process started long before 2000: a recycled pid would look like this.
    record = make_record(started_at=datetime.fromisoformat("2000-01-01T00:00:00+00:00"))
    assert record.is_live() is False


def test_event_log_writes_numbered_json_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    first = log.emit(EventType.RUN_STARTED, run="r1", workers=2)
    second = log.emit(EventType.FILE_WRITTEN, task="build", path=Path("a/b.py"), bytes=3)
    log.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == [1, 2]
    assert [e["type"] for e in events] == ["run_started", "file_written"]
    assert events[0]["run"] == "r1"
    assert events[0]["workers"] == 2
    assert events[1]["path"] == "a/b.py"
    assert datetime.fromisoformat(events[0]["ts"]).tzinfo is not None
    assert (first["seq"], second["seq"]) == (1, 2)


def test_event_log_notifies_subscribers(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    seen_a, seen_b = [], []
    log.subscribe(seen_a.append)
    log.subscribe(seen_b.append)
    event = log.emit(EventType.ERROR, task=None, message="boom")
    log.close()
    assert seen_a == [event]
    assert seen_b == [event]
    assert event["message"] == "boom"
    assert event["type"] == "error"


def test_read_events_roundtrip(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.emit(EventType.TASK_STATE, task="a", state="running")
    log.emit(EventType.RUN_FINISHED, status="succeeded")
    log.close()
    events = list(read_events(path))
    assert [(e["seq"], e["type"]) for e in events] == [(1, "task_state"), (2, "run_finished")]


def test_read_events_skips_trailing_partial_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"seq": 1, "type": "run_started"}\n'
        '{"seq": 2, "type": "task_state"}\n'
        '{"seq": 3, "type": "task_st',
        encoding="utf-8",
    )
    assert [e["seq"] for e in read_events(path)] == [1, 2]


def test_read_events_skips_complete_but_corrupt_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"seq": 1}\nnot json\n[1, 2]\n{"seq": 4}\n', encoding="utf-8")
    assert [e["seq"] for e in read_events(path)] == [1, 4]
