"""Tests for orchestrate.workspace.tools: the CrewAI file tools over a workspace."""

from __future__ import annotations

import pytest

from orchestrate.agents import load_crewai
from orchestrate.safety.secrets import SecretScanner
from orchestrate.workspace.writer import Workspace

AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"


@pytest.fixture(scope="module")
def tools_module():
    load_crewai()  # crewai quietly, as the build imports it
    from orchestrate.workspace import tools

    return tools


@pytest.fixture
def tools(tools_module, tmp_path):
    workspace = Workspace(tmp_path / "area", lock_dir=tmp_path / "locks", scanner=SecretScanner())
    return {tool.name: tool for tool in tools_module.workspace_tools(workspace)}, workspace


def test_the_tools_are_crewai_tools_with_schemas(tools):
    from crewai.tools import BaseTool

    by_name, _ = tools
    assert sorted(by_name) == ["list_files", "read_file", "write_file"]
    assert all(isinstance(tool, BaseTool) for tool in by_name.values())
    assert set(by_name["write_file"].args_schema.model_fields) == {"path", "content"}


def test_write_read_and_list_go_through_the_workspace(tools):
    by_name, workspace = tools
    assert by_name["list_files"].run() == "The project has no files yet."
    assert by_name["write_file"].run(path="src/app.py", content="x = 1\n") == (
        "Wrote src/app.py (6 bytes)."
    )
    assert by_name["write_file"].run(path="src/app.py", content="x = 1\n") == (
        "src/app.py already had exactly this content."
    )
    assert by_name["read_file"].run(path="src/app.py") == "x = 1\n"
    assert by_name["list_files"].run() == "src/app.py"
    assert (workspace.root / "src" / "app.py").read_text() == "x = 1\n"


def test_refusals_come_back_as_sentences(tools, tmp_path):
    by_name, _ = tools
    answer = by_name["write_file"].run(path="../escape.txt", content="owned")
    assert answer == "Not written: '..' would leave the project folder"
    assert not (tmp_path / "escape.txt").exists()
    assert by_name["read_file"].run(path="/etc/passwd").startswith("Cannot read '/etc/passwd'")


def test_secrets_written_through_the_tool_are_redacted(tools):
    by_name, workspace = tools
    answer = by_name["write_file"].run(path="config.py", content=f'KEY = "{AWS_KEY}"\n')
    assert answer == "Wrote config.py (19 bytes; 1 secret(s) redacted)."
    assert AWS_KEY not in (workspace.root / "config.py").read_text()
