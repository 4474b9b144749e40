"""Model usage per agent and per model: `usage_by` on events, and `orchestrate show`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLE_SPEC
from orchestrate.cli.app import app
from orchestrate.store.events import read_events
from orchestrate.store.runs import RunFolder
from orchestrate.store.usage import UNKNOWN, UsageTotals, run_events, usage_by

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def call(agent: str = "qa", model: str = "m", **fields: Any) -> dict[str, Any]:
    """An llm_call event as the build writes it; ``fields`` override the defaults."""
    event = {
        "type": "llm_call",
        "task": "test",
        "agent": agent,
        "model": model,
        "seconds": 2.0,
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "cached": False,
        "error": None,
        "cost": 0.0,
    }
    return {**event, **fields}


def fallback(from_model: str = "m", to_model: str = "local") -> dict[str, Any]:
    return {
        "type": "model_fallback",
        "task": "test",
        "from_model": from_model,
        "to_model": to_model,
        "reason": "budget",
    }


# usage_by


def test_answered_calls_add_tokens_seconds_and_cost() -> None:
    events = [call(cost=0.25), call(seconds=3.0, completion_tokens=200, cost=0.5)]

    [(name, totals)] = usage_by(events, "agent").items()

    assert name == "qa"
    assert totals == UsageTotals(
        calls=2, prompt_tokens=200, completion_tokens=250, cost=0.75, seconds=5.0
    )
    assert totals.tokens_per_second == 50.0


def test_cache_hits_count_only_as_cached() -> None:
    events = [call(), call(cached=True, seconds=0.01, prompt_tokens=100, completion_tokens=50)]

    totals = usage_by(events, "model")["m"]

    assert (totals.calls, totals.cached) == (1, 1)
    assert (totals.prompt_tokens, totals.completion_tokens, totals.seconds) == (100, 50, 2.0)


def test_failed_calls_count_as_calls_and_failures_and_add_only_their_cost() -> None:
    events = [call(), call(error="ServerError: HTTP 503", seconds=30.0, cost=0.1)]

    totals = usage_by(events, "agent")["qa"]

    assert (totals.calls, totals.failed, totals.cost) == (2, 1, 0.1)
    assert (totals.prompt_tokens, totals.seconds) == (100, 2.0)
    assert totals.tokens_per_second == 25.0  # the failure's 30 s are not model speed


def test_tokens_per_second_is_none_without_answered_model_time() -> None:
    assert UsageTotals().tokens_per_second is None
    assert usage_by([call(cached=True)], "model")["m"].tokens_per_second is None
    assert usage_by([call(seconds=0.0)], "model")["m"].tokens_per_second is None


def test_fallbacks_count_on_the_model_that_fell_back() -> None:
    events = [fallback("paid", "local"), call(model="local"), fallback("paid", "local")]

    by_model = usage_by(events, "model")
    by_agent = usage_by(events, "agent")

    assert by_model["paid"] == UsageTotals(fallbacks=2)
    assert by_model["local"].fallbacks == 0
    assert by_model["local"].calls == 1
    assert by_agent == {
        "qa": UsageTotals(calls=1, prompt_tokens=100, completion_tokens=50, seconds=2.0)
    }


def test_a_fallback_that_names_its_agent_counts_on_that_agent() -> None:
    assert usage_by([{**fallback(), "agent": "qa"}], "agent") == {"qa": UsageTotals(fallbacks=1)}


def test_older_logs_and_unknown_event_types_are_tolerated() -> None:
    old_call = {
        "type": "llm_call",
        "task": "test",
        "model": "m",
        "seconds": 1.0,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached": False,
    }
    events = [
        old_call,
        {**old_call, "agent": None, "cost": None},
        {"type": "gpu_lease", "device": 0},
        {"seq": 9},
        {"type": "llm_call"},
    ]

    by_agent = usage_by(events, "agent")
    by_model = usage_by(events, "model")

    assert list(by_agent) == [UNKNOWN]
    assert by_agent[UNKNOWN] == UsageTotals(
        calls=3, prompt_tokens=20, completion_tokens=10, seconds=2.0
    )
    assert by_model["m"].calls == 2
    assert by_model[UNKNOWN].calls == 1


def test_groups_are_sorted_by_name() -> None:
    events = [call(agent="qa"), call(agent="architect"), call(agent="docs")]

    assert list(usage_by(events, "agent")) == ["architect", "docs", "qa"]


def test_grouping_by_anything_else_is_refused() -> None:
    with pytest.raises(ValueError, match="'agent' or 'model'"):
        usage_by([call()], "task")  # type: ignore[arg-type]


def test_a_run_without_an_event_log_has_no_events(tmp_path: Path) -> None:
    assert run_events(RunFolder(tmp_path)) == []


# orchestrate show


@pytest.fixture
def flaky_run(isolated: Path, write_script, monkeypatch: pytest.MonkeyPatch) -> RunFolder:
    """A finished scripted build in which qa's first call failed and was retried."""
    monkeypatch.setenv("ORCHESTRATE_RETRY_BASE_SECONDS", "0")
    monkeypatch.setenv("ORCHESTRATE_RETRY_CAP_SECONDS", "0")
    script = write_script(qa={"answer": "Tests.", "fail_first": 1})
    result = runner.invoke(
        app, ["build", str(EXAMPLE_SPEC), "--model", f"scripted:{script}", "--json"]
    )
    assert result.exit_code == 0, result.output
    return RunFolder(Path(json.loads(result.stdout)["run_dir"]))


def show(folder: RunFolder) -> str:
    result = runner.invoke(app, ["show", folder.run_id], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.stdout


def table(output: str, title: str) -> dict[str, dict[str, str]]:
    """The rows of the table printed under ``title``: first cell -> {header: cell}."""
    lines = output.splitlines()
    start = next(index for index, line in enumerate(lines) if line.strip() == title)
    headers = cells(lines[start + 1])
    rows = {}
    for line in lines[start + 2 :]:
        row = cells(line)
        if not line.startswith(" ") or len(row) != len(headers):
            break
        rows[row[0]] = dict(zip(headers[1:], row[1:], strict=True))
    return rows


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def append_events(folder: RunFolder, *events: dict[str, Any]) -> None:
    with folder.events_path.open("a", encoding="utf-8") as stream:
        for event in events:
            stream.write(json.dumps(event) + "\n")


def test_show_prints_usage_by_agent_and_by_model(flaky_run: RunFolder) -> None:
    record = flaky_run.load()

    output = show(flaky_run)

    by_agent, by_model = table(output, "By agent"), table(output, "By model")
    # The sandbox runs the checks and calls no model (a repair counts for its agent).
    assert set(by_agent) == {task.agent for task in record.tasks.values()} - {"sandbox"}
    qa, test_task = by_agent["qa"], record.tasks["test"]
    assert (qa["calls"], qa["cached"], qa["failed"]) == ("2", "0", "1")
    assert (qa["tokens in"], qa["tokens out"]) == (
        str(test_task.prompt_tokens),
        str(test_task.completion_tokens),
    )
    [model] = by_model.values()
    assert (model["calls"], model["cached"], model["failed"]) == ("7", "0", "1")
    assert (model["tokens in"], model["tokens out"]) == (
        str(record.prompt_tokens),
        str(record.completion_tokens),
    )
    assert "cost" not in model and "fallbacks" not in model  # nothing cost, nothing fell back
    assert output.index("By agent") > output.index("verdict approve")


def test_show_counts_cache_hits_of_a_repeated_build(flaky_run: RunFolder, write_script) -> None:
    script = write_script(qa={"answer": "Tests.", "fail_first": 1})
    again = runner.invoke(
        app, ["build", str(EXAMPLE_SPEC), "--model", f"scripted:{script}", "--json"]
    )
    cached_run = RunFolder(Path(json.loads(again.stdout)["run_dir"]))

    [model] = table(show(cached_run), "By model").values()

    assert (model["calls"], model["cached"], model["tokens in"], model["tok/s"]) == (
        "0",
        "6",
        "0",
        "-",
    )


def test_show_adds_cost_and_fallback_columns_when_there_are_any(flaky_run: RunFolder) -> None:
    append_events(
        flaky_run,
        fallback("paid-model", "scripted"),
        call(agent="critic", model="paid-model", cost=0.0125),
        {"type": "some_future_event", "detail": 1},
    )

    output = show(flaky_run)

    by_agent, by_model = table(output, "By agent"), table(output, "By model")
    assert by_agent["critic"]["cost"] == "0.0125 USD"  # the run records its currency
    assert by_agent["qa"]["cost"] == "0.0000 USD"
    assert "fallbacks" not in by_agent["critic"]
    assert by_model["paid-model"]["fallbacks"] == "1"
    assert by_model["paid-model"]["tok/s"] == "25.0"
    assert {row["fallbacks"] for name, row in by_model.items() if name != "paid-model"} == {"0"}


def test_show_prints_no_usage_tables_for_a_run_without_model_calls(flaky_run: RunFolder) -> None:
    kept = [event for event in read_events(flaky_run.events_path) if event["type"] != "llm_call"]
    flaky_run.events_path.write_text("".join(json.dumps(event) + "\n" for event in kept))

    output = show(flaky_run)

    assert "By agent" not in output and "By model" not in output
    assert "verdict approve" in output


def test_show_json_adds_the_usage_totals(flaky_run: RunFolder) -> None:
    result = runner.invoke(app, ["show", flaky_run.run_id, "--json"])

    stored = json.loads(result.stdout)
    assert stored["id"] == flaky_run.run_id
    assert set(stored["usage"]) == {"by_agent", "by_model"}
    qa = stored["usage"]["by_agent"]["qa"]
    assert (qa["calls"], qa["failed"], qa["cached"]) == (2, 1, 0)
    assert "tokens_per_second" in qa
    [model] = stored["usage"]["by_model"].values()
    assert model["prompt_tokens"] == flaky_run.load().prompt_tokens
