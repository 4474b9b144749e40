"""Whole builds on remote backends: through injected faults, fallbacks and outages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLE_SPEC
from orchestrate.cli.app import app
from orchestrate.store.events import read_events
from orchestrate.testing.llm_server import FakeLLMServer

MODEL = "llama3.2:1b"
runner = CliRunner()
PRICES = """currency: USD
models:
  "embedded:*": {input: 0, output: 0}
  "ollama:*": {input: 0, output: 0}
  "openai:*": {input: 0.15, output: 0.60}
"""


@pytest.fixture
def server(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    """A fake server, and settings that retry at once so the tests stay quick."""
    pricing = isolated / "pricing.yaml"
    pricing.write_text(PRICES)
    with FakeLLMServer(models=(MODEL,), retry_after="0") as running:
        for name, value in {
            "ORCHESTRATE_PRICING_FILE": str(pricing),
            "ORCHESTRATE_OLLAMA_HOST": running.ollama_host,
            "ORCHESTRATE_OPENAI_BASE_URL": running.openai_base_url,
            "ORCHESTRATE_LLM_TIMEOUT_SECONDS": "2",
            "ORCHESTRATE_LLM_RETRY_BASE_SECONDS": "0",
            "ORCHESTRATE_RETRY_BASE_SECONDS": "0",
            "ORCHESTRATE_BREAKER_RESET_SECONDS": "0.2",
        }.items():
            monkeypatch.setenv(name, value)
        yield running


def build(*args: str) -> tuple[int, dict[str, object], str]:
    result = runner.invoke(app, ["build", str(EXAMPLE_SPEC), "--json", *args])
    payload = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, payload, result.stderr


def events_of(payload: dict[str, object], kind: str) -> list[dict[str, object]]:
    folder = Path("runs") / str(payload["run_id"])
    return [event for event in read_events(folder / "events.jsonl") if event["type"] == kind]


@pytest.mark.parametrize("protocol", ["ollama", "openai"])
def test_a_crew_run_completes_through_thirty_percent_faults(
    server: FakeLLMServer, protocol: str
) -> None:
    server.fault_rate(0.3, seed=18)  # five faults of three kinds in the first nine calls

    code, payload, stderr = build("--model", f"{protocol}:{MODEL}", "--no-cache")

    assert code == 0, stderr
    assert payload["status"] == "succeeded"
    faults = [request for request in server.requests if request["fault"]]
    assert faults, "the server injected no fault"
    retried = events_of(payload, "llm_retry")
    assert retried, "no call was retried"
    assert server.chat_count == len(faults) + 6  # every fault was retried; six answers


def test_a_build_falls_back_when_the_main_model_is_down(server: FakeLLMServer) -> None:
    with FakeLLMServer(models=(MODEL,)) as hosted:
        hosted.inject("unavailable", times=100)  # it lists models, but every chat fails
        runner_env = {"ORCHESTRATE_OPENAI_BASE_URL": hosted.openai_base_url}
        result = runner.invoke(
            app,
            [
                "build",
                str(EXAMPLE_SPEC),
                "--json",
                "--model",
                "openai:gpt-4o-mini",
                "--fallback",
                f"ollama:{MODEL}",
            ],
            env=runner_env,
        )

    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    switches = events_of(payload, "model_fallback")
    assert switches and all(event["to_model"] == f"ollama:{MODEL}" for event in switches)
    calls = events_of(payload, "llm_call")
    answered = [call for call in calls if not call["error"]]
    assert {call["model"] for call in answered} == {f"ollama:{MODEL}"}

    shown = runner.invoke(app, ["show", str(payload["run_id"])])
    assert "By model" in shown.stdout and "fallbacks" in shown.stdout
    # The 503s generated nothing: the budget keeps none of their worst-case reservations.
    budget = json.loads(runner.invoke(app, ["budget", "--json"]).stdout)
    assert (budget["spent"], budget["reserved"]) == (0, 0)


def test_every_backend_down_is_one_clear_line_and_exit_1(server: FakeLLMServer) -> None:
    server.stop()

    result = runner.invoke(
        app,
        ["build", str(EXAMPLE_SPEC), "--model", f"ollama:{MODEL}", "--fallback", "openai:x"],
    )

    assert result.exit_code == 1
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: every model failed: ollama:llama3.2:1b: cannot reach")
    assert "openai:x: cannot reach" in message
    assert "Traceback" not in result.output
    assert not list(Path("runs").glob("*")) if Path("runs").exists() else True


def test_an_agent_can_have_its_own_model(server: FakeLLMServer, tmp_path: Path) -> None:
    import yaml

    from orchestrate.bundled import default_crew_file

    crew = yaml.safe_load(default_crew_file().read_text())
    crew["agents"]["architect"]["model"] = f"openai:{MODEL}"
    crew_file = tmp_path / "crew.yaml"
    crew_file.write_text(yaml.safe_dump(crew))
    (tmp_path / "pricing.yaml").write_text(
        "currency: USD\nmodels:\n  'ollama:*': {input: 0, output: 0}\n"
        f"  'openai:{MODEL}': {{input: 1.0, output: 2.0}}\n"
    )

    result = runner.invoke(
        app,
        [
            "build",
            str(EXAMPLE_SPEC),
            "--json",
            "--model",
            f"ollama:{MODEL}",
            "--crew",
            str(crew_file),
        ],
        env={"ORCHESTRATE_PRICING_FILE": str(tmp_path / "pricing.yaml")},
    )

    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    models = {call["agent"]: call["model"] for call in events_of(payload, "llm_call")}
    assert models["architect"] == f"openai:{MODEL}"
    assert {model for agent, model in models.items() if agent != "architect"} == {f"ollama:{MODEL}"}
    paid = [call for call in events_of(payload, "llm_call") if call["cost"]]
    assert [call["agent"] for call in paid] == ["architect"]
    budget = runner.invoke(app, ["budget", "--json"])
    assert json.loads(budget.stdout)["spent"] == pytest.approx(paid[0]["cost"])


def test_a_crew_file_with_an_unknown_backend_is_refused(isolated: Path, tmp_path: Path) -> None:
    import yaml

    from orchestrate.bundled import default_crew_file

    crew = yaml.safe_load(default_crew_file().read_text())
    crew["agents"]["docs"]["model"] = "bedrock:claude"
    crew_file = tmp_path / "crew.yaml"
    crew_file.write_text(yaml.safe_dump(crew))

    result = runner.invoke(app, ["build", str(EXAMPLE_SPEC), "--crew", str(crew_file)])

    assert result.exit_code == 2
    assert (
        "agents.docs.model" in result.stderr and "unknown model 'bedrock:claude'" in result.stderr
    )


def test_doctor_checks_each_backend_and_lists_ollama_models(server: FakeLLMServer) -> None:
    result = runner.invoke(
        app,
        ["doctor"],
        env={"ORCHESTRATE_MODEL": f"ollama:{MODEL}", "ORCHESTRATE_FALLBACKS": "openai:nope"},
    )
    output = result.stdout
    assert f"model ollama:{MODEL}" in output and "model present" in output
    assert "model openai:nope" in output and "no model 'nope'" in output
    assert "ollama models" in output and MODEL in output
    assert result.exit_code == 1  # openai:nope is missing


def test_models_lists_what_the_servers_have(server: FakeLLMServer) -> None:
    result = runner.invoke(app, ["models", "--json"], env={"ORCHESTRATE_OPENAI_API_KEY": "k"})
    assert result.exit_code == 0, result.output
    names = [row["model"] for row in json.loads(result.stdout)]
    assert names == [
        "embedded:smollm2-135m",
        f"ollama:{MODEL}",
        f"openai:{MODEL}",
        "scripted:FILE",
    ]
