"""Shared fixtures: an isolated state directory and runs folder, and scripted crews."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_SCRIPT = REPO / "examples" / "scripted" / "todo.yaml"
EXAMPLE_SPEC = REPO / "examples" / "specs" / "todo-cli.yaml"

DEADLINE_SECONDS = 60
# Other tools' variables that orchestrate reads as settings too.
FOREIGN_SETTINGS = ("OLLAMA_HOST", "OPENAI_BASE_URL", "OPENAI_API_KEY")


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition that another process makes true; fail loudly after a deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def tiny_llama(**overrides: Any) -> Any:
    """A random two-layer Llama, 64 wide, with grouped-query attention (4 query heads on
    2 key/value heads): SmolLM2's architecture at toy size, for decoder tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    settings: dict[str, Any] = {
        "vocab_size": 96,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    }
    return LlamaForCausalLM(LlamaConfig(**(settings | overrides))).eval()


def require_tool(name: str, debian_package: str) -> str:
    """The path of a system tool a test needs; skip without it, but fail under CI=true.

    `make test` installs these packages when it runs as root with apt-get; elsewhere a
    missing tool is the machine's limit, not a bug, except in CI where it must be there.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed: install the Debian package '{debian_package}'"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# The bundled crew's tasks and the tasks each one reads from (config/crew.yaml).
BUNDLED_CREW_CONTEXTS = {
    "design": [],
    "implement": ["design"],
    "deploy": ["design"],
    "test": ["implement"],
    "document": ["design", "implement"],
    "review": ["implement", "test", "deploy", "document"],
}

# The tasks a build of the bundled crew records: the agents' and the sandboxed checks.
BUNDLED_RUN_TASKS = {*BUNDLED_CREW_CONTEXTS, "checks"}


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in an empty folder with private state; no ORCHESTRATE_* from the caller leaks in."""
    for name in list(os.environ):
        if name.startswith("ORCHESTRATE_") or name in FOREIGN_SETTINGS:
            monkeypatch.delenv(name)
    monkeypatch.setenv("ORCHESTRATE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture
def write_script(tmp_path: Path) -> Callable[..., Path]:
    """Write a scripted-model file from the example, with answers overridden per agent."""

    def write(name: str = "script.yaml", **agents: dict[str, Any]) -> Path:
        script = yaml.safe_load(EXAMPLE_SCRIPT.read_text())
        for agent, answer in agents.items():
            script["agents"][agent] = answer
        path = tmp_path / name
        path.write_text(yaml.safe_dump(script))
        return path

    return write
