"""The scripted backend: fixed answers per agent from a YAML file.

A documented test double for tests, benchmarks and demos, never the default. The file
gives each agent (by its name in the crew) an answer, an optional latency, or an error
to raise, so a crew's behaviour and timing can be reproduced exactly::

    latency_seconds: 0.5        # default for every agent
    agents:
      architect:
        answer: |
          FILE: DESIGN.md
          ```markdown
          ...
          ```
        latency_seconds: 1.0
      devops:
        error: "simulated outage"
    default:                    # for agents not listed
      answer: "Nothing to add."

Tokens are counted as whitespace-separated words.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrate.errors import (
    BackendError,
    ModelNotFoundError,
    TaskCancelledError,
    describe_validation_error,
)
from orchestrate.llm.backend import ChatMessage, Completion, CompletionRequest


class ScriptedAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    answer: str | None = None
    error: str | None = None
    latency_seconds: float | None = Field(None, ge=0, le=3600)

    @model_validator(mode="after")
    def _answer_or_error(self) -> ScriptedAnswer:
        if (self.answer is None) == (self.error is None):
            raise ValueError("give exactly one of 'answer' or 'error'")
        return self


class Script(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_seconds: float = Field(0.0, ge=0, le=3600)
    agents: dict[str, ScriptedAnswer] = Field(default_factory=dict)
    default: ScriptedAnswer | None = None


class ScriptedBackend:
    """Answers each agent from a script, after the scripted latency."""

    context_window = 1_000_000

    def __init__(self, script: Script, source: Path) -> None:
        self._script = script
        self._source = source

    @classmethod
    def from_file(cls, path: Path) -> ScriptedBackend:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelNotFoundError(f"scripted model file not found: {path}") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ModelNotFoundError(f"cannot read scripted model file {path}: {exc}") from exc
        try:
            return cls(Script.model_validate(data), path)
        except ValidationError as exc:
            problems = describe_validation_error(exc)
            raise ModelNotFoundError(f"scripted model file {path}: {problems}") from exc

    @property
    def name(self) -> str:
        return f"scripted:{self._source}"

    def prepare(self) -> None:
        """Nothing to load."""

    def complete(self, request: CompletionRequest) -> Completion:
        scripted = self._script.agents.get(request.agent, self._script.default)
        if scripted is None:
            raise BackendError(
                f"{self._source} has no answer for agent '{request.agent}' and no default"
            )
        latency = (
            scripted.latency_seconds
            if scripted.latency_seconds is not None
            else self._script.latency_seconds
        )
        if request.cancel.wait(latency):
            raise TaskCancelledError("cancelled while waiting for the scripted answer")
        if scripted.error is not None:
            raise BackendError(scripted.error)
        text = scripted.answer or ""
        completion_tokens = _count_words(text)
        if request.on_progress is not None:
            request.on_progress(completion_tokens)
        return Completion(text, self.count_tokens(request.messages), completion_tokens)

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        return sum(_count_words(message["content"]) for message in messages)


def _count_words(text: str) -> int:
    return len(text.split())
