"""End-to-end `orchestrate build` through the CLI on the scripted backend."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from conftest import EXAMPLE_SCRIPT, EXAMPLE_SPEC
from orchestrate.cli.app import app

runner = CliRunner()


def build(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["build", *args, "--json"])
    payload = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.exit_code, payload


def test_scripted_build_writes_the_project_and_records_the_run(isolated: Path) -> None:
    code, result = build(str(EXAMPLE_SPEC), "--model", f"scripted:{EXAMPLE_SCRIPT}", "--out", "out")

    assert code == 0
    assert result["status"] == "succeeded"
    expected = ["DESIGN.md", "Makefile", "README.md", "REVIEW.md", "tests/test_todo.py", "todo.py"]
    assert result["files"] == expected
    assert result["verdict"] == "approve"
    run_dir = Path(result["run_dir"])
    assert sorted(p.name for p in (run_dir / "tasks").iterdir()) == [
        f"{task}.md"
        for task in sorted(
            ["design", "implement", "deploy", "test", "document", "checks", "review"]
        )
    ]
    assert (run_dir / "outputs" / "todo.py").read_text().startswith('"""A tiny todo list')
    assert (isolated / "out" / "tests" / "test_todo.py").is_file()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded"
    assert all(task["state"] == "succeeded" for task in record["tasks"].values())
    assert record["tasks"]["implement"]["files"] == ["todo.py"]
    assert record["crew"]["tasks"]["review"]["context"] == [
        "implement",
        "test",
        "deploy",
        "document",
    ]
    assert record["crew"]["agents"]["critic"]["role"] == "Code Reviewer"
    assert record["tasks"]["design"]["completion_tokens"] > 0


def test_events_are_typed_lines_in_lifecycle_order(isolated: Path) -> None:
    _, result = build(str(EXAMPLE_SPEC), "--model", f"scripted:{EXAMPLE_SCRIPT}")

    lines = (Path(result["run_dir"]) / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "run_started" and events[-1]["type"] == "run_finished"
    design_states = [
        e["state"] for e in events if e["type"] == "task_state" and e["task"] == "design"
    ]
    assert design_states == ["ready", "running", "succeeded"]
    assert {e["type"] for e in events} >= {"llm_call", "file_written", "task_state"}


def test_independent_tasks_overlap_in_time(isolated: Path, write_script) -> None:
    script = yaml.safe_load(EXAMPLE_SCRIPT.read_text())
    slow = {
        agent: {**script["agents"][agent], "latency_seconds": 0.5}
        for agent in ("fullstack", "devops")
    }
    path = write_script(**slow)

    _, result = build(str(EXAMPLE_SPEC), "--model", f"scripted:{path}", "--workers", "2")

    record = json.loads((Path(result["run_dir"]) / "run.json").read_text())
    implement, deploy = record["tasks"]["implement"], record["tasks"]["deploy"]
    assert implement["started_at"] < deploy["ended_at"]
    assert deploy["started_at"] < implement["ended_at"]


def test_a_failed_task_skips_its_dependents_and_exits_1(isolated: Path, write_script) -> None:
    path = write_script(devops={"error": "simulated outage"})

    code, result = build(str(EXAMPLE_SPEC), "--model", f"scripted:{path}")

    assert code == 1
    assert result["status"] == "failed"
    tasks = result["tasks"]
    assert tasks["deploy"]["state"] == "failed"
    assert "simulated outage" in tasks["deploy"]["reason"]
    assert tasks["review"]["state"] == "skipped"
    assert "deploy" in tasks["review"]["reason"]
    assert all(
        tasks[name]["state"] == "succeeded" for name in ("design", "implement", "test", "document")
    )


def test_hostile_paths_are_refused_and_nothing_leaves_the_outputs(
    isolated: Path, write_script
) -> None:
    answer = (
        "FILE: ../escape.txt\n```\nx\n```\n"
        "FILE: /tmp/absolute.txt\n```\nx\n```\n"
        "FILE: ok/inside.txt\n```\nfine\n```\n"
    )
    path = write_script(fullstack={"answer": answer})

    code, result = build(str(EXAMPLE_SPEC), "--model", f"scripted:{path}")

    assert code == 0
    assert result["refused_files"] == ["../escape.txt", "/tmp/absolute.txt"]
    assert "ok/inside.txt" in result["files"]
    run_dir = Path(result["run_dir"])
    assert not (run_dir / "escape.txt").exists()
    assert not (run_dir.parent / "escape.txt").exists()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    refused = [e for e in events if e["type"] == "file_refused"]
    assert {e["path"] for e in refused} == {"../escape.txt", "/tmp/absolute.txt"}


def test_output_file_receives_an_answer_without_file_blocks(isolated: Path, write_script) -> None:
    path = write_script(architect={"answer": "Just prose, no blocks."})

    _, result = build(str(EXAMPLE_SPEC), "--model", f"scripted:{path}")

    outputs = Path(result["run_dir"]) / "outputs"
    assert (outputs / "DESIGN.md").read_text() == "Just prose, no blocks.\n"


def test_inline_spec_text_is_accepted(isolated: Path) -> None:
    code, result = build("a todo CLI in Python", "--model", f"scripted:{EXAMPLE_SCRIPT}")

    assert code == 0
    record = json.loads((Path(result["run_dir"]) / "run.json").read_text())
    assert record["spec_title"] == "a todo CLI in Python"
    assert record["spec_source"] == "inline"


def test_plain_progress_lines_when_not_on_a_terminal(isolated: Path) -> None:
    result = runner.invoke(
        app, ["build", str(EXAMPLE_SPEC), "--model", f"scripted:{EXAMPLE_SCRIPT}"]
    )

    assert result.exit_code == 0
    assert "design: running" in result.stderr
    assert "implement: wrote todo.py" in result.stderr
    assert "succeeded" in result.stdout
    assert "critical path" in result.stdout
