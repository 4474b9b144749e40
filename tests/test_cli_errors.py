"""Bad input through the CLI: one clear line, exit code 2, no traceback, no run left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLE_SCRIPT, EXAMPLE_SPEC
from orchestrate.cli.app import app

runner = CliRunner()

VALID_AGENTS = """
agents:
  architect: {role: A, goal: G, backstory: B}
  fullstack: {role: F, goal: G, backstory: B}
"""


def invoke(*args: str):
    return runner.invoke(app, list(args))


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error:")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message, message


CREWS = {
    "unknown key": (
        VALID_AGENTS + "tasks:\n  design: {agent: architect, description: d, "
        "expected_output: o, priority: 3}\n",
        ["tasks.design.priority", "unknown key"],
    ),
    "unknown agent": (
        VALID_AGENTS + "tasks:\n  design: {agent: wizard, description: d, expected_output: o}\n",
        ["task 'design'", "agent 'wizard'"],
    ),
    "missing context": (
        VALID_AGENTS + "tasks:\n  design: {agent: architect, description: d, "
        "expected_output: o, context: [research]}\n",
        ["task 'design'", "'research'"],
    ),
    "cycle": (
        VALID_AGENTS + "tasks:\n"
        "  design: {agent: architect, description: d, expected_output: o, context: [build]}\n"
        "  build: {agent: fullstack, description: d, expected_output: o, context: [design]}\n",
        ["cycle", "design", "build"],
    ),
}


@pytest.mark.parametrize("case", CREWS)
def test_invalid_crews_are_rejected_before_any_model_loads(isolated: Path, case: str) -> None:
    text, fragments = CREWS[case]
    crew = isolated / "crew.yaml"
    crew.write_text(text)

    result = invoke("build", "x", "--crew", str(crew), "--model", "embedded:no-such-model")

    assert_user_error(result, *fragments)
    assert not (isolated / "runs").exists()


def test_graph_reports_a_cycle_too(isolated: Path) -> None:
    crew = isolated / "crew.yaml"
    crew.write_text(CREWS["cycle"][0])

    assert_user_error(invoke("graph", "--crew", str(crew)), "cycle")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["build", "missing-spec.md"], "spec file not found"),
        (["build", "   "], "spec is empty"),
        (["build", "x", "--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["build", "x", "--model", "scripted:nope.yaml"], "scripted model file not found"),
        (["build", "x", "--workers", "0"], "ORCHESTRATE_WORKERS"),
        (["build", "x", "--crew", "no-crew.yaml"], "crew file not found"),
        (["show", "nope"], "no run 'nope'"),
        (["tail", "nope"], "no run 'nope'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(isolated: Path, args: list[str], fragment: str) -> None:
    result = invoke(*args)

    assert_user_error(result, fragment)
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_environment_setting_is_named(isolated: Path, monkeypatch) -> None:
    monkeypatch.setenv("ORCHESTRATE_MAX_TOKENS", "lots")

    result = invoke("build", str(EXAMPLE_SPEC), "--model", f"scripted:{EXAMPLE_SCRIPT}")

    assert_user_error(result, "ORCHESTRATE_MAX_TOKENS")


def test_env_example_documents_every_setting() -> None:
    from conftest import REPO
    from orchestrate.settings import Settings

    documented = (REPO / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"ORCHESTRATE_{name.upper()}" in documented, name


def test_an_unwritable_runs_folder_is_a_user_error(isolated: Path, monkeypatch) -> None:
    (isolated / "blocker").write_text("")
    monkeypatch.setenv("ORCHESTRATE_RUNS_DIR", str(isolated / "blocker" / "runs"))

    result = invoke("build", str(EXAMPLE_SPEC), "--model", f"scripted:{EXAMPLE_SCRIPT}")

    assert_user_error(result, "cannot create a run folder", "ORCHESTRATE_RUNS_DIR")


def test_out_must_be_a_folder(isolated: Path) -> None:
    (isolated / "taken.txt").write_text("")

    result = invoke("build", "x", "--model", "embedded:none", "--out", "taken.txt")

    assert_user_error(result, "--out taken.txt is a file")
