"""`orchestrate budget`, `orchestrate gpu`, and builds that spend a budget (scripted, priced)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from typer.testing import CliRunner

from conftest import EXAMPLE_SCRIPT, EXAMPLE_SPEC
from orchestrate.cli.app import app
from orchestrate.safety.budget import BudgetLedger
from orchestrate.safety.gpu import GpuLeaseManager
from orchestrate.settings import load_settings

runner = CliRunner()


def invoke_json(*args: str) -> tuple[int, object]:
    result = runner.invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else None


def test_budget_on_a_fresh_machine(isolated: Path) -> None:
    code, payload = invoke_json("budget")
    assert code == 0
    assert payload == {
        **payload,
        "currency": "USD",
        "budget": 5.0,
        "spent": 0.0,
        "reserved": 0.0,
        "remaining": 5.0,
        "calls": 0,
        "worker_limit": 4,  # the configured workers, below the budget's 8
    }


def test_budget_shows_spend_and_a_lower_worker_limit(isolated: Path, monkeypatch) -> None:
    monkeypatch.setenv("ORCHESTRATE_WORKERS", "16")
    ledger = BudgetLedger(isolated / "home" / "budget.sqlite3", daily_budget=5.0, currency="USD")
    ledger.settle(ledger.reserve("openai:gpt-4o", 4_200_000), 4_200_000, 1, 1)  # 16% left
    ledger.reserve("openai:gpt-4o", 100_000)  # one call in flight, from this live process

    code, payload = invoke_json("budget")

    assert code == 0
    assert (payload["spent"], payload["reserved"], payload["calls"]) == (4.2, 0.1, 2)
    assert payload["remaining"] == 0.7
    assert payload["worker_limit"] == 2
    table = runner.invoke(app, ["budget"]).stdout
    assert "4.2000 USD" in table and "2 of 16" in table


def test_gpu_lists_the_cpu_and_current_leases(isolated: Path, monkeypatch) -> None:
    monkeypatch.setenv("ORCHESTRATE_CPU_CAPACITY_MIB", "2048")
    manager = GpuLeaseManager.from_settings(load_settings())
    with manager.lease("embedded:smollm2-135m for dev", "cpu", 700):
        code, payload = invoke_json("gpu")
        table = runner.invoke(app, ["gpu"]).stdout

    assert code == 0
    cpu = next(device for device in payload if device["device"] == "cpu")
    assert (cpu["total_mib"], cpu["capacity_mib"], cpu["leased_mib"]) == (2048, 1536, 700)
    assert [entry["holder"] for entry in cpu["held"]] == ["embedded:smollm2-135m for dev"]
    assert cpu["held"][0]["pid"] == os.getpid()
    assert "embedded:smollm2-135m" in table and "1536" in table


def priced_setup(isolated: Path, monkeypatch, budget: str) -> Path:
    """A paid scripted model (one unit per input or output token, per million) and a free one."""
    (isolated / "pricing.yaml").write_text(
        yaml.safe_dump(
            {
                "currency": "USD",
                "models": {
                    "scripted:*": {"input": 0, "output": 0},
                    "scripted:*paid*": {"input": 100_000, "output": 100_000},
                },
            }
        )
    )
    monkeypatch.setenv("ORCHESTRATE_PRICING_FILE", str(isolated / "pricing.yaml"))
    monkeypatch.setenv("ORCHESTRATE_DAILY_BUDGET", budget)
    paid = isolated / "paid.yaml"
    paid.write_text(EXAMPLE_SCRIPT.read_text())
    return paid


def build(model: Path, *extra: str) -> tuple[int, dict, list[dict]]:
    code, payload = invoke_json("build", str(EXAMPLE_SPEC), "--model", f"scripted:{model}", *extra)
    assert isinstance(payload, dict)
    lines = (Path(payload["run_dir"]) / "events.jsonl").read_text().splitlines()
    return code, payload, [json.loads(line) for line in lines]


def test_a_build_on_a_paid_model_is_stopped_by_the_budget(isolated: Path, monkeypatch) -> None:
    paid = priced_setup(isolated, monkeypatch, budget="100")

    code, result, events = build(paid, "--max-tokens", "400", "--workers", "1")

    assert code == 1
    reasons = [task["reason"] or "" for task in result["tasks"].values()]
    assert any(reason.startswith("BudgetExceeded: a call to scripted:") for reason in reasons)
    costs = [event["cost"] for event in events if event["type"] == "llm_call"]
    assert costs and all(cost > 0 for cost in costs)
    _, today = invoke_json("budget")
    assert isinstance(today, dict)
    assert today["spent"] == round(sum(costs), 6) <= 100
    assert today["reserved"] == 0


def test_the_fallback_model_answers_when_the_budget_is_spent(isolated: Path, monkeypatch) -> None:
    paid = priced_setup(isolated, monkeypatch, budget="0")
    monkeypatch.setenv("ORCHESTRATE_FALLBACK_MODEL", f"scripted:{EXAMPLE_SCRIPT}")

    code, result, events = build(paid)

    assert code == 0
    models = {event["model"] for event in events if event["type"] == "llm_call"}
    assert models == {f"scripted:{EXAMPLE_SCRIPT}"}
    assert "todo.py" in result["files"]


def test_an_unpriced_model_is_refused_before_the_run(isolated: Path, monkeypatch) -> None:
    (isolated / "pricing.yaml").write_text(yaml.safe_dump({"currency": "USD", "models": {}}))
    monkeypatch.setenv("ORCHESTRATE_PRICING_FILE", str(isolated / "pricing.yaml"))

    result = runner.invoke(app, ["build", "x", "--model", f"scripted:{EXAMPLE_SCRIPT}"])

    assert result.exit_code == 2
    assert "no price for model 'scripted:" in result.stderr
    assert not (isolated / "runs").exists()


def test_a_paid_fallback_is_refused(isolated: Path, monkeypatch) -> None:
    paid = priced_setup(isolated, monkeypatch, budget="1")
    monkeypatch.setenv("ORCHESTRATE_FALLBACK_MODEL", f"scripted:{paid}")

    result = runner.invoke(app, ["build", "x", "--model", f"scripted:{paid}"])

    assert result.exit_code == 2
    assert "ORCHESTRATE_FALLBACK_MODEL" in result.stderr and "not free" in result.stderr


def test_answers_from_the_cache_cost_nothing_and_need_no_budget(
    isolated: Path, monkeypatch
) -> None:
    paid = priced_setup(isolated, monkeypatch, budget="1000")
    first_code, first, _ = build(paid)
    monkeypatch.setenv("ORCHESTRATE_DAILY_BUDGET", "0")  # nothing left to spend

    code, second, events = build(paid)

    assert first_code == code == 0
    assert first["cost"] > 0
    assert second["cost"] == 0
    assert second["cached_calls"] == 6
    assert all(event["cached"] for event in events if event["type"] == "llm_call")


def test_a_fallback_answer_is_not_cached_as_the_paid_model_s(isolated: Path, monkeypatch) -> None:
    paid = priced_setup(isolated, monkeypatch, budget="0")
    monkeypatch.setenv("ORCHESTRATE_FALLBACK_MODEL", f"scripted:{EXAMPLE_SCRIPT}")
    build(paid)
    monkeypatch.setenv("ORCHESTRATE_DAILY_BUDGET", "1000")
    monkeypatch.delenv("ORCHESTRATE_FALLBACK_MODEL")

    code, result, events = build(paid)

    assert code == 0
    assert result["cached_calls"] == 0
    assert {event["model"] for event in events if event["type"] == "llm_call"} == {
        f"scripted:{paid}"
    }
