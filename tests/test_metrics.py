"""The metrics recorder: events in, Prometheus samples out; the host's shared files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from orchestrate.observe.exposition import HostCollector
from orchestrate.observe.metrics import Metrics, metrics_for
from orchestrate.observe.recorder import MetricsRecorder, split_model


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def metrics(tmp_path: Path) -> Metrics:
    return metrics_for(tmp_path / "metrics")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def recorder(metrics: Metrics, clock: Clock) -> MetricsRecorder:
    return MetricsRecorder(metrics, currency="EUR", clock=clock)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def state(task: str, agent: str, new_state: str, reason: str | None = None) -> dict[str, object]:
    return {
        "type": "task_state",
        "task": task,
        "agent": agent,
        "state": new_state,
        "reason": reason,
    }


def test_a_task_lifecycle_gives_waits_duration_and_gauges(recorder, metrics, clock) -> None:
    recorder.on_event({"type": "run_started"})
    clock.now += 2.0
    recorder.on_event(state("design", "architect", "ready"))
    assert sample(metrics, "orchestrate_ready_tasks") == 1
    clock.now += 0.5
    recorder.on_event(state("design", "architect", "running"))
    assert sample(metrics, "orchestrate_ready_tasks") == 0
    assert sample(metrics, "orchestrate_agents_running", agent="architect") == 1
    clock.now += 3.0
    recorder.on_event(state("design", "architect", "succeeded"))

    assert sample(metrics, "orchestrate_agents_running", agent="architect") == 0
    assert sample(metrics, "orchestrate_task_input_wait_seconds_sum", agent="architect") == 2.0
    assert sample(metrics, "orchestrate_task_queue_wait_seconds_sum", agent="architect") == 0.5
    duration = {"agent": "architect", "outcome": "succeeded"}
    assert sample(metrics, "orchestrate_task_duration_seconds_sum", **duration) == 3.0
    assert sample(metrics, "orchestrate_task_duration_seconds_bucket", le="2.5", **duration) == 0
    assert sample(metrics, "orchestrate_task_duration_seconds_bucket", le="5.0", **duration) == 1


def test_a_retry_counts_once_and_its_duration_spans_every_attempt(recorder, metrics, clock):
    recorder.on_event({"type": "run_started"})
    for new_state in ("ready", "running"):
        recorder.on_event(state("implement", "fullstack", new_state))
    clock.now += 1.0
    recorder.on_event(
        {
            "type": "attempt_failed",
            "task": "implement",
            "reason": "RateLimitedError: slow down",
            "retry_in_seconds": 0.5,
        }
    )
    recorder.on_event(state("implement", "fullstack", "retrying", "RateLimitedError: slow down"))
    clock.now += 1.0
    recorder.on_event(state("implement", "fullstack", "ready"))
    recorder.on_event(state("implement", "fullstack", "running"))
    clock.now += 1.0
    recorder.on_event({"type": "attempt_failed", "task": "implement", "reason": "ValueError: bug"})
    recorder.on_event(state("implement", "fullstack", "failed", "ValueError: bug"))

    assert (
        sample(metrics, "orchestrate_task_retries_total", agent="fullstack", reason="rate_limited")
        == 1
    )
    assert (
        sample(metrics, "orchestrate_task_failures_total", agent="fullstack", reason="internal")
        == 1
    )
    failed = {"agent": "fullstack", "outcome": "failed"}
    assert sample(metrics, "orchestrate_task_duration_seconds_sum", **failed) == 3.0
    assert sample(metrics, "orchestrate_task_input_wait_seconds_count", agent="fullstack") == 1
    assert sample(metrics, "orchestrate_agents_running", agent="fullstack") == 0


def test_model_calls_give_tokens_cost_latency_and_cache_counts(recorder, metrics) -> None:
    call = {
        "type": "llm_call",
        "task": "design",
        "agent": "architect",
        "model": "openai:gpt-4o-mini",
        "seconds": 0.3,
        "prompt_tokens": 120,
        "completion_tokens": 40,
        "cached": False,
        "error": None,
        "cost": 0.002,
    }
    recorder.on_event(call)
    recorder.on_event({**call, "cached": True})
    recorder.on_event({**call, "error": "ServerError: 503", "completion_tokens": 0, "cost": 0})

    model = {"model": "openai:gpt-4o-mini"}
    assert sample(metrics, "orchestrate_cache_hits_total", **model) == 1
    assert sample(metrics, "orchestrate_cache_misses_total", **model) == 2
    tokens = {"agent": "architect", **model}
    assert sample(metrics, "orchestrate_tokens_total", direction="input", **tokens) == 240
    assert sample(metrics, "orchestrate_tokens_total", direction="output", **tokens) == 40
    assert sample(metrics, "orchestrate_cost_total", currency="EUR", **tokens) == 0.002
    latency = {"backend": "openai", **model}
    assert sample(metrics, "orchestrate_model_request_duration_seconds_count", **latency) == 2
    assert (
        sample(metrics, "orchestrate_model_request_failures_total", reason="server", **latency) == 1
    )


def test_breaker_retries_files_secrets_and_the_run_outcome(recorder, metrics) -> None:
    recorder.note_remote_models(["ollama:llama3.2", "scripted:/tmp/script.yaml"])
    assert sample(metrics, "orchestrate_circuit_breaker_state", model="ollama:llama3.2") == 0
    assert (
        sample(metrics, "orchestrate_circuit_breaker_state", model="scripted:script.yaml") is None
    )
    recorder.on_event({"type": "circuit_changed", "model": "ollama:llama3.2", "state": "open"})
    assert sample(metrics, "orchestrate_circuit_breaker_state", model="ollama:llama3.2") == 2
    recorder.on_event({"type": "llm_retry", "model": "ollama:llama3.2"})
    recorder.on_event(state("design", "architect", "running"))
    recorder.on_event({"type": "file_written", "task": "design", "path": "a.py"})
    recorder.on_event(
        {
            "type": "secret_found",
            "task": "design",
            "action": "redacted",
            "findings": [
                {"kind": "AWS Access Key", "line": 3},
                {"kind": "AWS Access Key", "line": 9},
            ],
        }
    )
    recorder.on_event({"type": "run_finished", "status": "interrupted"})

    assert (
        sample(
            metrics, "orchestrate_model_retries_total", backend="ollama", model="ollama:llama3.2"
        )
        == 1
    )
    assert sample(metrics, "orchestrate_files_written_total", agent="architect") == 1
    assert (
        sample(
            metrics, "orchestrate_secret_findings_total", kind="AWS Access Key", action="redacted"
        )
        == 2
    )
    assert sample(metrics, "orchestrate_runs_total", status="interrupted") == 1
    assert sample(metrics, "orchestrate_agents_running", agent="architect") == 0  # run over


def test_the_worker_limit_gauge_follows_the_limiter(recorder, metrics) -> None:
    limits = iter([8, 4, 2])
    current = recorder.watch_worker_limit(lambda: next(limits), workers=6)
    assert sample(metrics, "orchestrate_worker_limit") == 6
    assert [current(), current(), current()] == [6, 4, 2]
    assert sample(metrics, "orchestrate_worker_limit") == 2


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("openai:gpt-4o-mini", ("openai", "openai:gpt-4o-mini")),
        ("openai:meta-llama/Llama-3-8B", ("openai", "openai:meta-llama/Llama-3-8B")),
        ("embedded:/models/coder-7b.gguf", ("embedded", "embedded:coder-7b.gguf")),
        ("scripted:examples/scripted/todo.yaml", ("scripted", "scripted:todo.yaml")),
        ("embedded:smollm2-135m", ("embedded", "embedded:smollm2-135m")),
    ],
)
def test_model_labels_never_hold_a_path(name: str, expected: tuple[str, str]) -> None:
    assert split_model(name) == expected


COUNTING_CHILD = """
import sys
from pathlib import Path
from orchestrate.observe.metrics import metrics_for
metrics = metrics_for(Path(sys.argv[1]))
metrics.tokens.labels("qa", "scripted:x.yaml", "output").inc(int(sys.argv[2]))
metrics.agents_running.labels("qa").inc()
if sys.argv[3] == "hang":
    print("ready", flush=True)
    sys.stdin.read()
"""


def test_the_host_view_sums_processes_and_forgets_killed_ones_gauges(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"

    def child(tokens: int, mode: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", COUNTING_CHILD, str(directory), str(tokens), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    assert child(5, "exit").wait() == 0
    hung = child(7, "hang")
    assert hung.stdout is not None and hung.stdout.readline() == "ready\n"

    def scrape() -> str:
        return "".join(
            f"{s.name}{s.labels} {s.value}\n"
            for family in HostCollector(directory).collect()
            for s in family.samples
        )

    running = "orchestrate_agents_running{'agent': 'qa'}"
    assert "orchestrate_tokens_total{'agent': 'qa', 'direction': 'output', 'model': " in scrape()
    assert f"{running} 1.0" in scrape()  # the live one; the ended one removed its own
    tokens = [line for line in scrape().splitlines() if line.startswith("orchestrate_tokens")]
    assert tokens[0].endswith(" 12.0")  # 5 + 7: counters of ended processes stay

    os.kill(hung.pid, signal.SIGKILL)
    hung.wait()
    assert running not in scrape()  # a SIGKILLed build does not look busy forever
    assert any(line.endswith(" 12.0") for line in scrape().splitlines())


def test_exposition_is_valid_prometheus_text(metrics: Metrics) -> None:
    metrics.runs.labels("succeeded").inc()
    text = generate_latest(metrics.registry).decode()
    assert 'orchestrate_runs_total{status="succeeded"} 1.0' in text
    assert "# TYPE orchestrate_task_duration_seconds histogram" in text


def test_checks_rounds_limits_and_repairs_are_counted(recorder, metrics) -> None:
    checks = {"type": "checks_ran", "task": "checks", "kind": "build", "status": "failed"}
    recorder.on_event({**checks, "limits_hit": ["processes", "wall time"]})
    recorder.on_event({"type": "repair_finished", "agent": "fullstack", "error": None})
    recorder.on_event({**checks, "kind": "repair", "status": "passed", "limits_hit": []})
    recorder.on_event({"type": "repair_finished", "agent": "fullstack", "error": "no files"})

    assert sample(metrics, "orchestrate_checks_total", kind="build", status="failed") == 1
    assert sample(metrics, "orchestrate_checks_total", kind="repair", status="passed") == 1
    assert sample(metrics, "orchestrate_sandbox_limits_hit_total", limit="processes") == 1
    assert sample(metrics, "orchestrate_sandbox_limits_hit_total", limit="wall time") == 1
    repairs = "orchestrate_repairs_total"
    assert sample(metrics, repairs, agent="fullstack", outcome="wrote_files") == 1
    assert sample(metrics, repairs, agent="fullstack", outcome="failed") == 1
