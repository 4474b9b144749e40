"""Fault tolerance end to end: retries, failures, fail-fast, timeouts and the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import EXAMPLE_SPEC, REPO
from orchestrate.cli.app import app
from orchestrate.store.events import read_events

runner = CliRunner()


@pytest.fixture
def fast_retries(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No backoff waits, so a test with retries takes no longer than one without."""
    monkeypatch.setenv("ORCHESTRATE_RETRY_BASE_SECONDS", "0")
    monkeypatch.setenv("ORCHESTRATE_RETRY_CAP_SECONDS", "0")
    return isolated


def build(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["build", str(EXAMPLE_SPEC), *args, "--json"])
    payload = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.exit_code, payload


def events_of(result: dict) -> list[dict]:
    return list(read_events(Path(result["run_dir"]) / "events.jsonl"))


def test_transient_failures_are_retried_until_the_task_succeeds(fast_retries, write_script):
    path = write_script(architect={"answer": "The design.", "fail_first": 2})

    code, result = build("--model", f"scripted:{path}")

    assert code == 0
    design = result["tasks"]["design"]
    assert design["state"] == "succeeded"
    assert design["attempts"] == 3
    assert design["llm_calls"] == 3
    failed = [event for event in events_of(result) if event["type"] == "attempt_failed"]
    assert [(event["task"], event["attempt"]) for event in failed] == [("design", 1), ("design", 2)]
    assert all("ServerError: HTTP 503" in event["reason"] for event in failed)
    assert all(event["retry_in_seconds"] == 0 for event in failed)
    assert all(task["attempts"] == 1 for name, task in result["tasks"].items() if name != "design")


@pytest.mark.parametrize("failure", ["timeout", "rate_limit", "empty"])
def test_every_transient_kind_is_retried(fast_retries, write_script, failure):
    path = write_script(qa={"answer": "Tests.", "fail_first": 1, "failure": failure})

    code, result = build("--model", f"scripted:{path}")

    assert code == 0
    assert result["tasks"]["test"]["attempts"] == 2


def test_transient_failures_beyond_max_attempts_fail_the_task(fast_retries, write_script):
    path = write_script(qa={"answer": "Tests.", "fail_first": 10, "failure": "timeout"})

    code, result = build("--model", f"scripted:{path}")

    assert code == 1
    assert result["tasks"]["test"]["state"] == "failed"
    assert result["tasks"]["test"]["attempts"] == 3
    assert "BackendTimeoutError" in result["tasks"]["test"]["reason"]


def test_a_permanent_failure_is_not_retried_and_skips_exactly_its_dependents(
    fast_retries, write_script
):
    path = write_script(fullstack={"error": "invalid API key"})

    code, result = build("--model", f"scripted:{path}")

    assert code == 1
    states = {name: task["state"] for name, task in result["tasks"].items()}
    assert states == {
        "design": "succeeded",
        "implement": "failed",
        "deploy": "succeeded",
        "test": "skipped",
        "document": "skipped",
        "checks": "skipped",
        "review": "skipped",
    }
    assert result["tasks"]["implement"]["attempts"] == 1
    assert result["failure"] == (
        "task 'implement' failed: BackendError: invalid API key; "
        "skipped because of it: test, document, checks, review"
    )


def test_fail_fast_cancels_the_rest_of_the_run(fast_retries, write_script):
    path = write_script(
        fullstack={"error": "invalid API key"}, devops={"answer": "Deploy.", "latency_seconds": 30}
    )

    code, result = build("--model", f"scripted:{path}", "--fail-fast")

    assert code == 1
    assert result["status"] == "failed"
    deploy = result["tasks"]["deploy"]
    assert deploy["state"] == "cancelled"
    assert deploy["reason"] == "stopped by --fail-fast after 'implement' failed"
    assert result["failure"].startswith("task 'implement' failed")


def test_a_hung_task_is_cancelled_at_its_timeout(fast_retries, write_script, tmp_path):
    crew = yaml.safe_load((REPO / "config" / "crew.yaml").read_text())
    crew["tasks"]["deploy"]["timeout_seconds"] = 0.5
    crew_path = tmp_path / "crew.yaml"
    crew_path.write_text(yaml.safe_dump(crew))
    path = write_script(devops={"answer": "Deploy.", "latency_seconds": 600})

    code, result = build("--model", f"scripted:{path}", "--crew", str(crew_path))

    assert code == 1
    assert result["tasks"]["deploy"]["state"] == "failed"
    assert result["tasks"]["deploy"]["reason"] == "TaskTimeoutError: ran past its 0.5 s limit"
    assert result["tasks"]["review"]["state"] == "skipped"
    assert result["tasks"]["document"]["state"] == "succeeded"


def test_retry_settings_per_agent_in_the_crew_file(fast_retries, write_script, tmp_path):
    crew = yaml.safe_load((REPO / "config" / "crew.yaml").read_text())
    crew["agents"]["qa"]["retry"] = {"max_attempts": 5}
    crew_path = tmp_path / "crew.yaml"
    crew_path.write_text(yaml.safe_dump(crew))
    path = write_script(qa={"answer": "Tests.", "fail_first": 4})

    code, result = build("--model", f"scripted:{path}", "--crew", str(crew_path))

    assert code == 0
    assert result["tasks"]["test"]["attempts"] == 5


def test_a_repeated_build_is_answered_from_the_cache(isolated, write_script):
    path = write_script()

    first_code, first = build("--model", f"scripted:{path}")
    second_code, second = build("--model", f"scripted:{path}")

    assert first_code == second_code == 0
    assert first["llm_calls"] == 6
    assert first["cached_calls"] == 0
    assert second["llm_calls"] == 0
    assert second["cached_calls"] == 6
    assert second["files"] == first["files"]
    cached_events = [event for event in events_of(second) if event["type"] == "llm_call"]
    assert all(event["cached"] for event in cached_events)


def test_no_cache_asks_the_model_again(isolated, write_script):
    path = write_script()
    build("--model", f"scripted:{path}")

    code, result = build("--model", f"scripted:{path}", "--no-cache")

    assert code == 0
    assert result["llm_calls"] == 6
    assert result["cached_calls"] == 0


def test_an_edited_script_is_a_different_model_for_the_cache(isolated, write_script):
    build("--model", f"scripted:{write_script()}")
    changed = write_script(architect={"answer": "A different design."})

    _, result = build("--model", f"scripted:{changed}")

    assert result["tasks"]["design"]["llm_calls"] == 1
    assert result["tasks"]["design"]["cached_calls"] == 0


def test_sampled_calls_are_cached_only_on_request(isolated, write_script, monkeypatch):
    path = write_script()
    monkeypatch.setenv("ORCHESTRATE_TEMPERATURE", "0.7")
    build("--model", f"scripted:{path}")
    _, uncached = build("--model", f"scripted:{path}")
    monkeypatch.setenv("ORCHESTRATE_CACHE_SAMPLED", "true")
    build("--model", f"scripted:{path}")
    _, cached = build("--model", f"scripted:{path}")

    assert uncached["cached_calls"] == 0
    assert cached["cached_calls"] == 6


def test_durations_of_earlier_runs_feed_the_graph_estimate(isolated, write_script):
    path = write_script()
    build("--model", f"scripted:{path}", "--no-cache")

    result = runner.invoke(app, ["graph", "--model", f"scripted:{path}"])

    assert result.exit_code == 0
    assert "median durations of earlier runs" in result.stdout
    fresh = runner.invoke(app, ["graph", "--model", "scripted:other.yaml"])
    assert "every task counts as 1" in fresh.stdout


def test_cache_command_reports_and_clears(isolated, write_script):
    build("--model", f"scripted:{write_script()}")

    shown = runner.invoke(app, ["cache"])
    cleared = runner.invoke(app, ["cache", "clear"])
    after = runner.invoke(app, ["cache"])

    assert shown.exit_code == cleared.exit_code == after.exit_code == 0
    assert "12 answers" in shown.stdout  # six model calls, and the six tasks they answered
    assert "removed 12 cached answers" in cleared.stdout
    assert "0 answers" in after.stdout
