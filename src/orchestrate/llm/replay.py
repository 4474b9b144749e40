"""Whole-task replay: a repeated task answered without assembling its CrewAI agent.

The response cache answers every repeated model call, but a task still pays CrewAI to
build its agent, its prompt and its flow (about 20 ms of CPU per task, under the GIL,
so parallel tasks do not hide it). When a task's inputs match an earlier run's exactly
(the model's identity, the sampling parameters, the agent, the prompt, the context and
the CrewAI version that turns them into messages) and that earlier answer came
deterministically from the task's own model, the answer is stored under a task key in
the same response cache and replayed directly.

The rules are the response cache's: a retry never replays, sampled answers are kept
only when the user asks for it, and a fallback model's answer is not the task model's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version

from orchestrate.llm.backend import Completion
from orchestrate.llm.cache import ResponseCache

_FORMAT = 1  # bump when the key material changes


@dataclass(frozen=True)
class TaskInputs:
    """Everything that decides the messages a task sends to its model."""

    model_identity: str
    role: str
    goal: str
    backstory: str
    prompt: str
    expected_output: str
    context: str
    max_tokens: int
    temperature: float


class TaskReplay:
    """Stores and replays whole-task answers in the response cache."""

    def __init__(self, responses: ResponseCache, *, cache_sampled: bool) -> None:
        self._responses = responses
        self._cache_sampled = cache_sampled

    def applies_to(self, inputs: TaskInputs) -> bool:
        """Whether answers to these inputs may be stored and replayed at all."""
        return inputs.temperature == 0 or self._cache_sampled

    def recall(self, inputs: TaskInputs) -> Completion | None:
        """The earlier answer to exactly these inputs, or None."""
        if not self.applies_to(inputs):
            return None
        return self._responses.get(task_key(inputs))

    def keep(self, inputs: TaskInputs, answer: Completion) -> None:
        """Remember a task's answer, with the tokens it took to produce."""
        if self.applies_to(inputs) and answer.text.strip():
            self._responses.put(task_key(inputs), answer)


def task_key(inputs: TaskInputs) -> str:
    """The cache key of a whole task; distinct from every model-call key."""
    material = {"format": _FORMAT, "kind": "task", "crewai": _crewai_version(), **vars(inputs)}
    canonical = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@cache
def _crewai_version() -> str:
    # Read from the installed metadata, so computing a key never imports crewai.
    try:
        return version("crewai")
    except PackageNotFoundError:
        return "unknown"
