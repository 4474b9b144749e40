"""Crashes and interruptions in real processes, then `orchestrate resume`.

Model calls are counted from the run's event log across both processes: a task that
had finished before the crash must not call the model again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml
from typer.testing import CliRunner

from conftest import DEADLINE_SECONDS, EXAMPLE_SCRIPT, EXAMPLE_SPEC, wait_for
from orchestrate.cli.app import app
from orchestrate.store.events import read_events

runner = CliRunner()


def task_states(runs: Path) -> dict[str, str]:
    events = next(runs.glob("*/events.jsonl"), None)
    states: dict[str, str] = {}
    if events is not None:
        for event in read_events(events):
            if event["type"] == "task_state":
                states[event["task"]] = event["state"]
    return states


def start_build(
    folder: Path, uninterruptible: tuple[str, ...] = (), **latencies: float
) -> subprocess.Popen[str]:
    """Build the example with the given per-agent latencies, without the response cache."""
    script = yaml.safe_load(EXAMPLE_SCRIPT.read_text())
    for agent, seconds in latencies.items():
        script["agents"][agent]["latency_seconds"] = seconds
    for agent in uninterruptible:
        script["agents"][agent]["uninterruptible"] = True
    script_path = folder / "script.yaml"
    script_path.write_text(yaml.safe_dump(script))
    command = [sys.executable, "-m", "orchestrate", "build", str(EXAMPLE_SPEC)]
    command += ["--model", f"scripted:{script_path}", "--no-cache", "--json"]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )


def model_calls(run_dir: Path) -> Counter[str]:
    events = read_events(run_dir / "events.jsonl")
    return Counter(event["task"] for event in events if event["type"] == "llm_call")


def resume(run_id: str, *args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["resume", run_id, "--no-cache", "--json", *args])
    payload = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.exit_code, payload


def test_a_run_killed_with_sigkill_resumes_without_redoing_finished_tasks(isolated: Path):
    process = start_build(isolated, fullstack=0.3, devops=0.3, qa=600, docs=600)
    runs = isolated / "runs"
    try:
        wait_for(
            lambda: {"test": "running", "deploy": "succeeded"}.items() <= task_states(runs).items(),
            "deploy to finish and test to start",
        )
        process.kill()  # SIGKILL: no handler runs, nothing is flushed on the way out
        process.wait(DEADLINE_SECONDS)
    finally:
        process.kill()
    run_dir = next(runs.iterdir())
    before = task_states(runs)
    finished_before = {task for task, state in before.items() if state == "succeeded"}
    assert finished_before == {"design", "implement", "deploy"}
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"

    script = yaml.safe_load((isolated / "script.yaml").read_text())
    for agent in ("qa", "docs"):
        script["agents"][agent]["latency_seconds"] = 0
    (isolated / "script.yaml").write_text(yaml.safe_dump(script))
    code, result = resume(run_dir.name)

    assert code == 0, result
    assert result["status"] == "succeeded"
    assert result["resumes"] == 1
    calls = model_calls(run_dir)
    assert all(calls[task] == 1 for task in finished_before), calls
    assert calls["review"] == 1
    assert result["files"] == [
        "DESIGN.md",
        "Makefile",
        "README.md",
        "REVIEW.md",
        "tests/test_todo.py",
        "todo.py",
    ]
    resumed = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "run_resumed"]
    assert resumed[0]["finished"] == ["design", "implement", "deploy"]


def test_ctrl_c_saves_state_and_exits_130_then_resume_finishes(isolated: Path):
    process = start_build(isolated, fullstack=600, devops=600)
    runs = isolated / "runs"
    try:
        wait_for(lambda: task_states(runs).get("implement") == "running", "implement to start")
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=DEADLINE_SECONDS)
    finally:
        process.kill()
    assert process.returncode == 130
    interrupted = json.loads(stdout)
    assert interrupted["status"] == "interrupted"
    assert interrupted["tasks"]["design"]["state"] == "succeeded"
    run_dir = Path(interrupted["run_dir"])
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"

    script = yaml.safe_load((isolated / "script.yaml").read_text())
    for agent in ("fullstack", "devops"):
        script["agents"][agent]["latency_seconds"] = 0
    (isolated / "script.yaml").write_text(yaml.safe_dump(script))
    code, result = resume(run_dir.name[:12])

    assert code == 0
    assert model_calls(run_dir)["design"] == 1
    assert {task["state"] for task in result["tasks"].values()} == {"succeeded"}
    # the makespan adds both sessions: the first one's time is not forgotten
    assert result["seconds"] > interrupted["seconds"] > 0


def test_a_second_ctrl_c_quits_at_once_and_the_run_still_resumes(isolated: Path):
    # The fullstack call ignores cancellation, so only the second Ctrl-C can end the
    # process before the grace period would.
    process = start_build(isolated, uninterruptible=("fullstack",), fullstack=600, devops=600)
    runs = isolated / "runs"
    try:
        wait_for(lambda: task_states(runs).get("implement") == "running", "implement to start")
        assert process.stderr is not None
        process.send_signal(signal.SIGINT)
        assert "stopping" in process.stderr.readline()
        process.send_signal(signal.SIGINT)
        process.wait(DEADLINE_SECONDS)
    finally:
        process.kill()
    assert process.returncode == 130
    run_dir = next(runs.iterdir())
    # It left without saving (a stuck thread might hold what a save needs); the run's
    # process is gone, so the run lists as interrupted and can be resumed.
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    listed = runner.invoke(app, ["runs"])
    assert "interrupted" in listed.stdout

    script = yaml.safe_load((isolated / "script.yaml").read_text())
    script["agents"]["fullstack"] = {"answer": "FILE: app.py\n```python\nx = 1\n```"}
    script["agents"]["devops"]["latency_seconds"] = 0
    (isolated / "script.yaml").write_text(yaml.safe_dump(script))
    code, result = resume(run_dir.name)

    assert code == 0, result
    assert model_calls(run_dir)["design"] == 1


def test_a_failed_run_resumes_with_the_failed_task_only(isolated: Path, write_script):
    failing = write_script(devops={"error": "invalid API key"})
    first = runner.invoke(app, ["build", str(EXAMPLE_SPEC), "--model", f"scripted:{failing}"])
    assert first.exit_code == 1
    run_dir = next((isolated / "runs").iterdir())

    fixed = write_script("fixed.yaml")
    code, result = resume(run_dir.name, "--model", f"scripted:{fixed}")

    assert code == 0
    calls = model_calls(run_dir)
    assert calls == Counter(
        {"design": 1, "implement": 1, "test": 1, "document": 1, "deploy": 2, "review": 1}
    )
    assert result["failure"] is None


def test_resume_refuses_a_run_another_process_holds(isolated: Path):
    process = start_build(isolated, fullstack=600)
    runs = isolated / "runs"
    try:
        wait_for(lambda: task_states(runs).get("implement") == "running", "implement to start")
        code = runner.invoke(app, ["resume", next(runs.iterdir()).name])
    finally:
        process.kill()
        process.wait(DEADLINE_SECONDS)
    assert code.exit_code == 2
    assert "being run by another process" in code.stderr


def test_resume_of_a_finished_run_has_nothing_to_do(isolated: Path):
    runner.invoke(app, ["build", str(EXAMPLE_SPEC), "--model", f"scripted:{EXAMPLE_SCRIPT}"])
    run_id = next((isolated / "runs").iterdir()).name

    result = runner.invoke(app, ["resume", run_id])

    assert result.exit_code == 0
    assert "already succeeded" in result.stdout


def test_build_needs_a_spec_or_resume(isolated: Path):
    result = runner.invoke(app, ["build"])
    assert result.exit_code == 2
    assert "give a SPEC" in result.stderr
    both = runner.invoke(app, ["build", "spec text", "--resume", "abc"])
    assert both.exit_code == 2
    assert "drop SPEC" in both.stderr
