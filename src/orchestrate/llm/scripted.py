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
        error: "simulated outage"   # a permanent failure, never retried
      fullstack:
        answers:                # successive calls get successive answers; the last repeats
          - "first answer"
          - "second answer"
      qa:
        answer: "..."
        fail_first: 2               # the first 2 calls fail transiently, then it answers
        failure: rate_limit         # timeout | rate_limit | server_error | empty
      docs:
        answer: "..."
        latency_seconds: 60
        uninterruptible: true       # sits out its latency even when the task is cancelled
    default:                    # for agents not listed
      answer: "Nothing to add."

Tokens are counted as whitespace-separated words. Calls are counted per agent within
the process, so ``fail_first`` fails the first calls of a run and later ones succeed.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrate.errors import (
    BackendError,
    BackendTimeoutError,
    ModelNotFoundError,
    RateLimitedError,
    ServerError,
    TaskCancelledError,
    describe_validation_error,
)
from orchestrate.llm.backend import ChatMessage, Completion, CompletionRequest


class ScriptedAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    answer: str | None = None
    answers: list[str] | None = Field(None, min_length=1)
    error: str | None = None
    latency_seconds: float | None = Field(None, ge=0, le=3600)
    fail_first: int = Field(0, ge=0, le=1000)
    failure: Literal["timeout", "rate_limit", "server_error", "empty"] = "server_error"
    # Like a model stuck in a call that nothing can interrupt: for testing what a run
    # does when cancelling a task does not stop it.
    uninterruptible: bool = False

    @model_validator(mode="after")
    def _answer_or_error(self) -> ScriptedAnswer:
        given = [self.answer, self.answers, self.error]
        if sum(value is not None for value in given) != 1:
            raise ValueError("give exactly one of 'answer', 'answers' or 'error'")
        return self

    def text_for(self, call_number: int) -> str:
        """The answer to the agent's ``call_number``-th call (counting from 1)."""
        if self.answers is not None:
            return self.answers[min(call_number, len(self.answers)) - 1]
        return self.answer or ""


class Script(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_seconds: float = Field(0.0, ge=0, le=3600)
    agents: dict[str, ScriptedAnswer] = Field(default_factory=dict)
    default: ScriptedAnswer | None = None


class ScriptedBackend:
    """Answers each agent from a script, after the scripted latency."""

    context_window = 1_000_000

    def __init__(self, script: Script, source: Path, fingerprint: str = "") -> None:
        self._script = script
        self._source = source
        self._fingerprint = fingerprint
        self._calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path) -> ScriptedBackend:
        try:
            raw = path.read_bytes()
            data = yaml.safe_load(raw.decode("utf-8"))
        except FileNotFoundError:
            raise ModelNotFoundError(f"scripted model file not found: {path}") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ModelNotFoundError(f"cannot read scripted model file {path}: {exc}") from exc
        try:
            return cls(Script.model_validate(data), path, hashlib.sha256(raw).hexdigest())
        except ValidationError as exc:
            problems = describe_validation_error(exc)
            raise ModelNotFoundError(f"scripted model file {path}: {problems}") from exc

    @property
    def name(self) -> str:
        return f"scripted:{self._source}"

    @property
    def identity(self) -> str:
        return f"scripted:{self._fingerprint}"

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
        if scripted.uninterruptible:
            time.sleep(latency)
        elif request.cancel.wait(latency):
            raise TaskCancelledError("cancelled while waiting for the scripted answer")
        with self._calls_lock:
            self._calls[request.agent] += 1
            call_number = self._calls[request.agent]
        if scripted.error is not None:
            raise BackendError(scripted.error)
        text = scripted.text_for(call_number)
        if call_number <= scripted.fail_first:
            text = _fail(scripted.failure, call_number)
        completion_tokens = _count_words(text)
        if request.on_progress is not None:
            request.on_progress(completion_tokens)
        return Completion(text, self.count_tokens(request.messages), completion_tokens)

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        return sum(_count_words(message["content"]) for message in messages)


def _fail(failure: str, call_number: int) -> str:
    """Raise the scripted transient failure; an "empty" failure is an empty answer."""
    where = f"(scripted failure on call {call_number})"
    if failure == "timeout":
        raise BackendTimeoutError(f"the model did not answer in time {where}")
    if failure == "rate_limit":
        raise RateLimitedError(f"rate limited {where}", retry_after=0.0)
    if failure == "server_error":
        raise ServerError(f"HTTP 503 Service Unavailable {where}")
    return ""


def _count_words(text: str) -> int:
    return len(text.split())
