"""The Ray executor on a real local Ray (two CPUs, no dashboard), one per module.

Builds run the scripted crew: in process for the comparison with the local executor,
in subprocesses joined to this module's cluster where a process must die for real (a
Ray worker mid-task, or the driver itself).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from conftest import DEADLINE_SECONDS, EXAMPLE_SCRIPT, EXAMPLE_SPEC, wait_for
from orchestrate.cli.app import app
from orchestrate.errors import (
    BudgetExceeded,
    RemoteTaskError,
    TaskCancelledError,
    TransientError,
    WorkerLostError,
)
from orchestrate.safety.budget import BudgetLedger
from orchestrate.scheduler.policy import RetryPolicy
from orchestrate.scheduler.ray_resources import GPU_MEMORY_RESOURCE, gpu_share, task_resources
from orchestrate.store.events import read_events

ray = pytest.importorskip("ray")

from orchestrate.scheduler.ray_executor import task_error  # noqa: E402  (needs ray)

runner = CliRunner()
REMOTE_TITLE = "ray::run_attempt"  # the process title of a worker running an attempt


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """One local Ray for the whole module; its address, for subprocess drivers."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


# What each task asks Ray for.


def test_a_task_without_a_local_model_takes_a_small_share_of_a_cpu():
    assert task_resources(None, {"CPU": 2.0, "GPU": 1.0}) == {"num_cpus": 0.25}


def test_a_local_model_on_a_cluster_without_gpus_takes_a_whole_cpu():
    assert task_resources(640, {"CPU": 8.0}) == {"num_cpus": 1.0}


def test_a_local_model_takes_a_whole_gpu_when_its_memory_is_unknown():
    assert task_resources(640, {"CPU": 8.0, "GPU": 2.0}) == {"num_cpus": 1.0, "num_gpus": 1.0}


def test_advertised_gpu_memory_sizes_the_share_and_is_asked_for_exactly():
    cluster = {"CPU": 8.0, "GPU": 2.0, GPU_MEMORY_RESOURCE: 2 * 80_000.0}
    options = task_resources(2_441, cluster)
    assert options == {
        "num_cpus": 1.0,
        "num_gpus": 0.04,  # 2,441 of 80,000 MiB, rounded up to a hundredth
        "resources": {GPU_MEMORY_RESOURCE: 2_441.0},
    }


def test_a_gpu_share_is_at_least_a_hundredth_and_at_most_one_gpu():
    assert gpu_share(1, 80_000) == 0.01
    assert gpu_share(100_000, 80_000) == 1.0
    assert gpu_share(40_000, 80_000) == 0.5


# What Ray's failures mean to the retry policy.


def test_a_dead_worker_is_a_transient_failure_the_policy_retries():
    error = task_error(ray.exceptions.WorkerCrashedError())
    assert isinstance(error, WorkerLostError)
    assert isinstance(error, TransientError)
    assert RetryPolicy(max_attempts=3).should_retry(error, 1)


def test_a_task_ray_cannot_run_is_not_retried():
    cause = ImportError("No module named 'orchestrate'")
    error = task_error(ray.exceptions.RayTaskError("run_attempt", "traceback", cause))
    assert isinstance(error, RemoteTaskError)
    assert not RetryPolicy(max_attempts=3).should_retry(error, 1)


def test_a_cancelled_ray_task_is_a_cancelled_attempt():
    cancelled = ray.exceptions.TaskCancelledError()
    assert isinstance(task_error(cancelled), TaskCancelledError)


# Bad input: one line, a non-zero exit, no run folder.


def test_an_unknown_executor_is_refused_before_a_run_starts(isolated: Path):
    result = build(isolated, "--executor", "foo")
    assert result.exit_code == 2
    assert "ORCHESTRATE_EXECUTOR: Input should be 'local' or 'ray'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (isolated / "runs").exists()


def test_an_unreachable_cluster_is_refused_before_a_run_starts(isolated: Path):
    result = build(isolated, "--executor", "ray", "--ray-address", "127.0.0.1:1")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in result.stderr
    assert not (isolated / "runs").exists()


def test_without_ray_installed_the_error_says_how_to_install_it(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without it
    result = build(isolated, "--executor", "ray")
    assert result.exit_code == 2
    assert "pip install 'unified-orchestrator[ray]'" in result.stderr
    assert not (isolated / "runs").exists()


# The budget stays global.


def test_reservations_from_concurrent_ray_tasks_never_overspend(cluster: str, tmp_path: Path):
    from orchestrate.safety.ray_budget import start_ledger_keeper

    ledger = BudgetLedger(tmp_path / "budget.sqlite3", daily_budget=1.0, currency="USD")
    remote_ledger = start_ledger_keeper(ledger)

    def reserve(keeper: Any, task: str) -> bool:
        try:
            keeper.reserve("openai:gpt-4o", 300_000, task=task)  # 0.30 of 1.00
        except BudgetExceeded:
            return False
        return True

    remote = ray.remote(num_cpus=0.25)(reserve)
    admitted = ray.get([remote.remote(remote_ledger, f"t{n}") for n in range(8)])

    assert sum(admitted) == 3
    today = ledger.today()
    assert today.reserved_micros == 900_000
    assert today.remaining_micros == 100_000


# Builds.


def test_the_scripted_crew_gives_the_same_outputs_and_events_as_locally(
    cluster: str, isolated: Path
):
    local = build(isolated, "--out", "local-out")
    on_ray = build(isolated, "--out", "ray-out", "--executor", "ray")

    assert local.exit_code == 0, local.stderr
    assert on_ray.exit_code == 0, on_ray.stderr
    local_result, ray_result = json.loads(local.stdout), json.loads(on_ray.stdout)
    assert ray_result["files"] == local_result["files"]
    for name in local_result["files"]:
        ray_file = (isolated / "ray-out" / name).read_text()
        assert ray_file == (isolated / "local-out" / name).read_text(), name
    assert task_events(Path(ray_result["run_dir"])) == task_events(Path(local_result["run_dir"]))
    assert ray_result["prompt_tokens"] == local_result["prompt_tokens"]
    assert ray_result["completion_tokens"] == local_result["completion_tokens"]
    for result, executor in ((local_result, "local"), (ray_result, "ray")):
        record = json.loads((Path(result["run_dir"]) / "run.json").read_text())
        assert record["executor"] == executor


def test_a_worker_killed_mid_task_is_retried_and_the_run_completes(cluster: str, isolated: Path):
    process = start_build(isolated, cluster, fullstack=3.0)
    runs = isolated / "runs"
    try:
        wait_for(lambda: task_state(runs, "implement") == "running", "implement to start")
        worker = find_attempt_process()
        worker.send_signal(signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=DEADLINE_SECONDS)
    finally:
        process.kill()

    assert process.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["status"] == "succeeded"
    assert result["tasks"]["implement"]["attempts"] == 2
    events = read_events(Path(result["run_dir"]) / "events.jsonl")
    failed = [e for e in events if e["type"] == "attempt_failed"]
    assert [(e["task"], e["attempt"]) for e in failed] == [("implement", 1)]
    assert failed[0]["reason"].startswith("WorkerLostError: the Ray worker running it died")
    assert "todo.py" in result["files"]


def test_a_run_whose_driver_was_killed_resumes_on_ray(cluster: str, isolated: Path):
    process = start_build(isolated, cluster, qa=600, docs=600)
    runs = isolated / "runs"
    try:
        wait_for(lambda: task_state(runs, "test") == "running", "test to start")
        process.kill()  # SIGKILL: the driver leaves without a word
        process.wait(DEADLINE_SECONDS)
    finally:
        process.kill()
    run_dir = next(runs.iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    script = yaml.safe_load((isolated / "script.yaml").read_text())
    for agent in ("qa", "docs"):
        script["agents"][agent]["latency_seconds"] = 0
    (isolated / "script.yaml").write_text(yaml.safe_dump(script))

    resumed = runner.invoke(
        app, ["resume", run_dir.name, "--no-cache", "--json", "--executor", "ray"]
    )

    assert resumed.exit_code == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == "succeeded"
    assert result["resumes"] == 1
    calls = [e["task"] for e in read_events(run_dir / "events.jsonl") if e["type"] == "llm_call"]
    assert calls.count("design") == calls.count("implement") == 1  # done before the kill
    assert "tests/test_todo.py" in result["files"]


# Helpers.


def build(folder: Path, *args: str) -> Any:
    command = ["build", str(EXAMPLE_SPEC), "--model", f"scripted:{EXAMPLE_SCRIPT}"]
    return runner.invoke(app, [*command, "--no-cache", "--json", *args])


def start_build(folder: Path, address: str, **latencies: float) -> subprocess.Popen[str]:
    """A driver in its own process, joined to this module's cluster."""
    script = yaml.safe_load(EXAMPLE_SCRIPT.read_text())
    for agent, seconds in latencies.items():
        script["agents"][agent]["latency_seconds"] = seconds
    script_path = folder / "script.yaml"
    script_path.write_text(yaml.safe_dump(script))
    command = [sys.executable, "-m", "orchestrate", "build", str(EXAMPLE_SPEC)]
    command += ["--model", f"scripted:{script_path}", "--no-cache", "--json"]
    command += ["--executor", "ray", "--ray-address", address]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )


def task_state(runs: Path, task: str) -> str | None:
    events = next(runs.glob("*/events.jsonl"), None)
    state = None
    if events is not None:
        for event in read_events(events):
            if event["type"] == "task_state" and event["task"] == task:
                state = event["state"]
    return state


def find_attempt_process() -> psutil.Process:
    """The one Ray worker process running an attempt now (Ray titles it by its task)."""
    found: list[psutil.Process] = []

    def look() -> bool:
        found[:] = [p for p in psutil.process_iter() if _title(p).startswith(REMOTE_TITLE)]
        return len(found) == 1

    wait_for(look, "one Ray worker to be running an attempt")
    return found[0]


def _title(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def task_events(run_dir: Path) -> dict[str, list[str]]:
    """Each task's events in order, by kind (and state), without times or run ids."""
    per_task: dict[str, list[str]] = {}
    for event in read_events(run_dir / "events.jsonl"):
        task = event.get("task")
        if task is None:
            continue
        kind = event["type"]
        if kind == "task_state":
            kind += f":{event['state']}"
        per_task.setdefault(task, []).append(kind)
    return per_task
