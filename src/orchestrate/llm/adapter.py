"""The one CrewAI LLM through which every model call of a run passes.

CrewAI talks to ``OrchestrateLLM``; it hands the call to a backend and reports what
happened (time, tokens) to the run. Later layers (cache, budget, circuit breaker,
GPU lease, metrics) hook in here. Importing this module imports crewai, so only the
commands that run a crew import it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crewai.llms.base_llm import BaseLLM
from pydantic import PrivateAttr

from orchestrate.errors import TaskCancelledError
from orchestrate.llm.backend import Backend, ChatMessage, CompletionRequest
from orchestrate.safety.spend import SpendGuard, SpentCall


@dataclass(frozen=True)
class CallRecord:
    """One finished model call, as the run records it."""

    task: str
    agent: str
    model: str
    seconds: float
    prompt_tokens: int
    completion_tokens: int
    cost: float = 0.0  # in the budget's currency; 0 for local models


class OrchestrateLLM(BaseLLM):
    """A CrewAI LLM bound to one task, answering through a shared backend."""

    llm_type: str = "orchestrate"
    _backend: Backend = PrivateAttr()
    _task: str = PrivateAttr()
    _agent: str = PrivateAttr()
    _cancel: threading.Event = PrivateAttr()
    _on_call: Callable[[CallRecord], None] = PrivateAttr()
    _on_progress: Callable[[int], None] | None = PrivateAttr()
    _spend_guard: SpendGuard | None = PrivateAttr()

    def __init__(
        self,
        *,
        backend: Backend,
        task: str,
        agent: str,
        max_tokens: int,
        temperature: float,
        cancel: threading.Event,
        on_call: Callable[[CallRecord], None],
        on_progress: Callable[[int], None] | None = None,
        spend_guard: SpendGuard | None = None,
    ) -> None:
        super().__init__(model=backend.name, max_tokens=max_tokens, temperature=temperature)
        self._backend = backend
        self._task = task
        self._agent = agent
        self._cancel = cancel
        self._on_call = on_call
        self._on_progress = on_progress
        self._spend_guard = spend_guard

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
        **kwargs: Any,
    ) -> str:
        """Answer a chat request; raise TaskCancelledError once the run is cancelled."""
        if self._cancel.is_set():
            raise TaskCancelledError("the run was interrupted")
        request = CompletionRequest(
            messages=to_chat_messages(messages),
            agent=self._agent,
            max_tokens=int(self.max_tokens or 512),
            temperature=float(self.temperature or 0.0),
            stop=tuple(self.stop_sequences),
            cancel=self._cancel,
            on_progress=self._on_progress,
        )
        started = time.perf_counter()
        spent = self._complete(request)
        self._on_call(
            CallRecord(
                task=self._task,
                agent=self._agent,
                model=spent.model,
                seconds=time.perf_counter() - started,
                prompt_tokens=spent.completion.prompt_tokens,
                completion_tokens=spent.completion.completion_tokens,
                cost=spent.cost,
            )
        )
        return spent.completion.text

    def _complete(self, request: CompletionRequest) -> SpentCall:
        """Answer through the budget when there is one: reserve, call, settle."""
        if self._spend_guard is None:
            return SpentCall(self._backend.complete(request), self._backend.name, 0.0)
        return self._spend_guard.complete(self._backend, request, task=self._task)

    def supports_function_calling(self) -> bool:
        return False

    def supports_stop_words(self) -> bool:
        return True

    def get_context_window_size(self) -> int:
        return self._backend.context_window

    def get_input_tokens_count(
        self, messages: Any, tools: Any = None, response_model: Any = None
    ) -> int:
        return self._backend.count_tokens(to_chat_messages(messages))


def to_chat_messages(messages: Any) -> list[ChatMessage]:
    """CrewAI passes a string or a list of role/content dicts; normalise to the latter."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    normalised: list[ChatMessage] = []
    for message in messages:
        content = message.get("content") or ""
        if not isinstance(content, str):  # multimodal parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        normalised.append({"role": str(message.get("role", "user")), "content": content})
    return normalised
