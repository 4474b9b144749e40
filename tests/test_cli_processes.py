"""Builds in a real process: signals stop them cleanly, `tail --follow` streams them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import DEADLINE_SECONDS, EXAMPLE_SCRIPT, EXAMPLE_SPEC, wait_for
from orchestrate.cli.app import app


def running_tasks(runs: Path) -> set[str]:
    events = next(runs.glob("*/events.jsonl"), None)
    if events is None:
        return set()
    states: dict[str, str] = {}
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "task_state":
            states[event["task"]] = event["state"]
    return {task for task, state in states.items() if state == "running"}


def start_build(script: dict, folder: Path) -> subprocess.Popen[str]:
    script_path = folder / "script.yaml"
    script_path.write_text(yaml.safe_dump(script))
    command = [sys.executable, "-m", "orchestrate", "build", str(EXAMPLE_SPEC)]
    command += ["--model", f"scripted:{script_path}", "--json"]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )


def test_tail_follow_streams_a_live_run_to_its_end(isolated: Path) -> None:
    script = yaml.safe_load(EXAMPLE_SCRIPT.read_text())
    script["latency_seconds"] = 0.4
    process = start_build(script, isolated)
    try:
        wait_for(lambda: bool(running_tasks(isolated / "runs")), "the first task")
        run_id = next((isolated / "runs").iterdir()).name
        followed = CliRunner().invoke(app, ["tail", run_id, "--follow", "--json"])
        process.communicate(timeout=DEADLINE_SECONDS)
    finally:
        process.kill()

    events = [json.loads(line) for line in followed.stdout.splitlines()]
    assert followed.exit_code == 0
    assert events[-1]["type"] == "run_finished"
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    stored = (isolated / "runs" / run_id / "events.jsonl").read_text().splitlines()
    assert len(events) == len(stored)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_cancels_the_run_and_keeps_what_was_written(
    isolated: Path, signal_number: int
) -> None:
    script = yaml.safe_load(EXAMPLE_SCRIPT.read_text())
    script["agents"]["fullstack"]["latency_seconds"] = 600
    script["agents"]["devops"]["latency_seconds"] = 600
    process = start_build(script, isolated)
    try:
        wait_for(lambda: running_tasks(isolated / "runs") == {"implement", "deploy"}, "tasks")
        process.send_signal(signal_number)
        stdout, _ = process.communicate(timeout=DEADLINE_SECONDS)
    finally:
        process.kill()

    assert process.returncode == 130
    result = json.loads(stdout)
    assert result["status"] == "interrupted"
    states = {name: task["state"] for name, task in result["tasks"].items()}
    assert states == {
        "design": "succeeded",
        "implement": "cancelled",
        "deploy": "cancelled",
        "test": "cancelled",
        "document": "cancelled",
        "checks": "cancelled",
        "review": "cancelled",
    }
    assert result["files"] == ["DESIGN.md"]
    record = json.loads((Path(result["run_dir"]) / "run.json").read_text())
    assert record["status"] == "interrupted"
