"""`runs`, `show`, `tail`, `graph`, `doctor`, `--version` and a light `--help`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import BUNDLED_RUN_TASKS, EXAMPLE_SCRIPT, EXAMPLE_SPEC
from orchestrate import __version__
from orchestrate.cli.app import app

runner = CliRunner()


@pytest.fixture
def finished_run(isolated: Path) -> str:
    result = runner.invoke(
        app, ["build", str(EXAMPLE_SPEC), "--model", f"scripted:{EXAMPLE_SCRIPT}", "--json"]
    )
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["run_id"])


def test_runs_lists_the_run_with_its_spec(finished_run: str) -> None:
    result = runner.invoke(app, ["runs", "--json"])

    assert result.exit_code == 0
    [row] = json.loads(result.stdout)
    assert row["id"] == finished_run
    assert row["status"] == "succeeded"
    assert row["spec"] == "Todo CLI"


def test_runs_table_and_empty_message(isolated: Path) -> None:
    assert "No runs yet" in runner.invoke(app, ["runs"]).stdout


def test_show_prints_tasks_tokens_and_files_by_id_prefix(finished_run: str) -> None:
    result = runner.invoke(app, ["show", finished_run[:15]], env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    for fragment in (
        finished_run,
        "design",
        "architect",
        "succeeded",
        "todo.py",
        "verdict approve",
    ):
        assert fragment in result.stdout


def test_show_json_is_the_stored_record(finished_run: str) -> None:
    record = json.loads(runner.invoke(app, ["show", finished_run, "--json"]).stdout)

    assert record["id"] == finished_run
    assert set(record["tasks"]) == BUNDLED_RUN_TASKS


def test_tail_prints_every_event(finished_run: str) -> None:
    plain = runner.invoke(app, ["tail", finished_run]).stdout.splitlines()
    raw = runner.invoke(app, ["tail", finished_run, "--json"]).stdout.splitlines()

    assert len(plain) == len(raw) > 10
    assert json.loads(raw[-1])["type"] == "run_finished"
    assert "run succeeded" in plain[-1]


def test_tail_follow_stops_at_the_end_of_a_finished_run(finished_run: str) -> None:
    result = runner.invoke(app, ["tail", finished_run, "--follow"])

    assert result.exit_code == 0
    assert "run succeeded" in result.stdout.splitlines()[-1]


def test_graph_prints_levels_critical_path_and_mermaid(isolated: Path) -> None:
    text = runner.invoke(app, ["graph"]).stdout
    mermaid = runner.invoke(app, ["graph", "--mermaid"]).stdout

    assert "2. implement, deploy" in text
    assert "3. test, document" in text
    assert "4. checks" in text
    assert "design -> implement -> test -> checks -> review" in text
    assert "checks       sandbox" in text
    assert mermaid.startswith("graph TD")
    assert "design ==> implement" in mermaid
    assert "design --> deploy" in mermaid


def test_doctor_passes_on_an_installed_machine(isolated: Path) -> None:
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    for check in (
        "python",
        "crewai",
        "state directory",
        "runs folder",
        "embedded model",
        "crew",
        "sandbox",
    ):
        assert check in result.stdout


def test_doctor_fails_when_the_state_directory_is_unwritable(isolated: Path) -> None:
    blocker = isolated / "file-not-folder"
    blocker.write_text("")

    result = runner.invoke(app, ["doctor"], env={"ORCHESTRATE_HOME": str(blocker / "home")})

    assert result.exit_code == 1
    assert "state directory" in result.stdout


def test_version() -> None:
    result = runner.invoke(app, ["--version"])

    assert result.stdout.strip() == f"orchestrate {__version__}"


def test_help_imports_no_heavy_framework() -> None:
    probe = (
        "import sys\n"
        "sys.argv = ['orchestrate', '--help']\n"
        "from orchestrate.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('crewai', 'torch', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout

    assert "HEAVY []" in output
    assert "build" in output and "doctor" in output
