"""Tests for the spend ledger, pricing and the spend guard (orchestrate.safety.budget etc.)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from orchestrate.errors import BackendError, BudgetExceeded, SettingsError
from orchestrate.llm.backend import CompletionRequest
from orchestrate.llm.scripted import Script, ScriptedBackend
from orchestrate.safety.budget import BudgetLedger
from orchestrate.safety.pricing import MICROS, ModelPrice, load_pricing
from orchestrate.safety.spend import SpendGuard

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def ledger(tmp_path):
    return BudgetLedger(tmp_path / "budget.sqlite3", daily_budget=1.0, currency="USD")


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT state, reserved, cost FROM spend ORDER BY id").fetchall()


def test_reserve_then_settle_moves_money_from_reserved_to_spent(ledger):
    reservation = ledger.reserve("openai:gpt-4o", 300_000, task="design")
    assert (ledger.today().reserved, ledger.today().spent) == (0.3, 0.0)

    ledger.settle(reservation, 120_000, prompt_tokens=10, completion_tokens=20)

    today = ledger.today()
    assert (today.spent, today.reserved, today.remaining, today.calls) == (0.12, 0.0, 0.88, 1)
    assert ledger.remaining_share() == pytest.approx(0.88)


def test_a_call_that_does_not_fit_is_refused_with_both_numbers(ledger):
    ledger.reserve("m", 900_000)
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve("m", 200_000)
    assert str(info.value) == (
        "a call to m may cost up to 0.2 USD but only 0.1 of today's 1 USD is left "
        "(ORCHESTRATE_DAILY_BUDGET)"
    )
    assert len(rows(ledger.path)) == 1  # the refusal left no row behind


def test_released_calls_cost_nothing(ledger):
    ledger.release(ledger.reserve("m", 500_000))
    assert ledger.today().remaining == 1.0
    assert ledger.today().calls == 0


def test_settling_twice_changes_nothing(ledger):
    reservation = ledger.reserve("m", 500_000)
    ledger.settle(reservation, 100_000, 1, 1)
    ledger.settle(reservation, 400_000, 1, 1)
    assert ledger.today().spent == 0.1


def test_threads_share_one_ledger(ledger):
    admitted = []
    start = threading.Barrier(4)

    def spend():
        start.wait()
        for _ in range(10):
            try:
                reservation = ledger.reserve("m", 40_000)
            except BudgetExceeded:
                continue
            ledger.settle(reservation, 40_000, 1, 1)
            admitted.append(reservation.id)

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 25  # exactly 1.0 / 0.04
    assert ledger.today().spent == pytest.approx(1.0)


SPENDER = """
import json, random, sys
from pathlib import Path
from orchestrate.errors import BudgetExceeded
from orchestrate.safety.budget import BudgetLedger
path, count, seed, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
ledger = BudgetLedger(Path(path), daily_budget=1.0, currency="USD")
rng = random.Random(seed)
settled, refused = [], 0
while not go.exists():
    pass
for _ in range(count):
    worst = rng.randint(5_000, 15_000)
    try:
        reservation = ledger.reserve("m", worst)
    except BudgetExceeded:
        refused += 1
        continue
    cost = rng.randint(worst // 2, worst)
    ledger.settle(reservation, cost, 1, 1)
    settled.append([reservation.id, cost])
print(json.dumps({"settled": settled, "refused": refused}))
"""


def test_processes_never_overspend_and_lose_no_entry(tmp_path):
    path, go = tmp_path / "budget.sqlite3", tmp_path / "go"
    BudgetLedger(path, daily_budget=1.0, currency="USD")  # create the schema first
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SPENDER, str(path), "50", str(seed), str(go)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in range(4)
    ]
    go.touch()
    reports = [json.loads(process.communicate(timeout=120)[0]) for process in processes]

    settled = {entry_id: cost for report in reports for entry_id, cost in report["settled"]}
    stored = rows(path)
    assert sum(report["refused"] for report in reports) > 0  # the budget did run out
    assert len(stored) == len(settled) == sum(len(r["settled"]) for r in reports)
    assert all(state == "settled" for state, _, _ in stored)
    assert sum(cost for _, _, cost in stored) == sum(settled.values()) <= MICROS


HOLDER = """
import sys
from pathlib import Path
from orchestrate.safety.budget import BudgetLedger
ledger = BudgetLedger(Path(sys.argv[1]), daily_budget=1.0, currency="USD")
ledger.reserve("m", 300_000)
print("reserved", flush=True)
sys.stdin.readline()
"""


def test_a_killed_processes_reservation_counts_at_its_worst_case(tmp_path, ledger):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ledger.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "reserved\n"
    assert ledger.today().reserved == 0.3  # alive: still in flight

    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)

    today = ledger.today()
    assert (today.spent, today.reserved) == (0.3, 0.0)
    assert rows(ledger.path) == [("abandoned", 300_000, 300_000)]


# --- pricing ---------------------------------------------------------------------------


def write_pricing(folder: Path, models: dict, currency: str = "USD") -> Path:
    path = folder / "pricing.yaml"
    path.write_text(yaml.safe_dump({"currency": currency, "models": models}))
    return path


def test_the_bundled_pricing_makes_local_models_free():
    pricing = load_pricing(None, currency="USD")
    assert pricing.price_of("embedded:smollm2-135m").is_free
    assert pricing.price_of("scripted:/any/file.yaml").is_free
    assert not pricing.price_of("openai:gpt-4o").is_free


def test_the_longest_matching_pattern_wins(tmp_path):
    path = write_pricing(
        tmp_path,
        {"openai:*": {"input": 5, "output": 15}, "openai:gpt-4o-mini*": {"input": 1, "output": 2}},
    )
    pricing = load_pricing(path, currency="USD")
    assert pricing.price_of("openai:gpt-4o-mini-2024").input == 1
    assert pricing.price_of("openai:o3").input == 5


def test_an_unpriced_model_is_a_settings_error(tmp_path):
    pricing = load_pricing(
        write_pricing(tmp_path, {"embedded:*": {"input": 0, "output": 0}}), currency="USD"
    )
    with pytest.raises(SettingsError, match=r"no price for model 'openai:gpt-4o'.*'openai:\*'"):
        pricing.price_of("openai:gpt-4o")


@pytest.mark.parametrize(
    ("models", "currency", "message"),
    [
        ({"m": {"input": 1, "output": 1}}, "EUR", "is in EUR but the budget is in USD"),
        ({"m": {"input": -1, "output": 1}}, "USD", "models.m.input"),
        ({"m": {"input": 1}}, "USD", "models.m.output: required key is missing"),
    ],
)
def test_bad_pricing_files_are_settings_errors(tmp_path, models, currency, message):
    with pytest.raises(SettingsError, match=message):
        load_pricing(write_pricing(tmp_path, models, currency), currency="USD")


def test_a_missing_pricing_file_names_the_setting(tmp_path):
    with pytest.raises(SettingsError, match="ORCHESTRATE_PRICING_FILE"):
        load_pricing(tmp_path / "nope.yaml", currency="USD")


def test_cost_is_per_million_tokens_rounded_up():
    price = ModelPrice(input=2.5, output=10.0)
    assert price.cost_micros(1_000_000, 0) == 2_500_000  # 2.50 per million input tokens
    assert price.cost_micros(1, 1) == 13  # 2.5 + 10 millionths, rounded up


# --- the spend guard, with the scripted backend priced ---------------------------------


def scripted(answer: str = "four words in all") -> ScriptedBackend:
    return ScriptedBackend(Script(default={"answer": answer}), Path("priced.yaml"))


def request(max_tokens: int = 100) -> CompletionRequest:
    return CompletionRequest([{"role": "user", "content": "one two"}], "dev", max_tokens)


@pytest.fixture
def priced(tmp_path):
    return load_pricing(
        write_pricing(tmp_path, {"scripted:*": {"input": 1000, "output": 2000}}), currency="USD"
    )


def test_a_paid_call_reserves_its_worst_case_and_settles_to_its_cost(ledger, priced):
    spent = SpendGuard(ledger, priced).complete(scripted(), request(100), task="t")
    # worst case 2 * 1000 + 100 * 2000 = 202,000 millionths; real 2 * 1000 + 4 * 2000
    assert spent.cost == 0.01
    assert rows(ledger.path) == [("settled", 202_000, 10_000)]


def test_a_call_over_budget_is_refused_or_sent_to_the_fallback(ledger, priced):
    big = request(max_tokens=1000)  # worst case 2.002, over the whole budget
    with pytest.raises(BudgetExceeded):
        SpendGuard(ledger, priced).complete(scripted(), big, task="t")

    local = ScriptedBackend(Script(default={"answer": "local answer"}), Path("local.yaml"))
    guard = SpendGuard(ledger, priced, fallback=lambda: local)
    spent = guard.complete(scripted(), big, task="t")
    assert (spent.completion.text, spent.model, spent.cost) == ("local answer", local.name, 0.0)
    assert rows(ledger.path) == []


def test_a_failed_paid_call_counts_its_worst_case(ledger, priced):
    failing = ScriptedBackend(Script(default={"error": "provider timeout"}), Path("p.yaml"))
    with pytest.raises(BackendError, match="provider timeout"):
        SpendGuard(ledger, priced).complete(failing, request(100), task="t")
    assert rows(ledger.path) == [("settled", 202_000, 202_000)]


def test_free_models_never_touch_the_ledger(ledger):
    free = load_pricing(None, currency="USD")
    spent = SpendGuard(ledger, free).complete(scripted(), request(), task="t")
    assert spent.cost == 0.0
    assert rows(ledger.path) == []
