"""The one CrewAI LLM through which every model call of a run passes.

CrewAI talks to ``OrchestrateLLM``; it hands the call to a backend and reports what
happened (time, tokens, cost, failure) to the run. The backend it is given is already
layered: the response cache, over the budget's spend guard, over the model itself.
Importing this module imports crewai, so only the commands that run a crew import it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crewai.llms.base_llm import BaseLLM
from pydantic import PrivateAttr

from orchestrate.errors import BudgetExceeded, TaskCancelledError, UnparseableOutputError
from orchestrate.llm.backend import Backend, ChatMessage, Completion, CompletionRequest


@dataclass(frozen=True)
class CallRecord:
    """One finished model call, as the run records it."""

    task: str
    agent: str
    model: str
    seconds: float
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False
    error: str | None = None  # the call failed; no answer came back
    cost: float = 0.0  # in the budget's currency; 0 for local models and cache hits


class OrchestrateLLM(BaseLLM):
    """A CrewAI LLM bound to one task, answering through a shared backend."""

    llm_type: str = "orchestrate"
    _backend: Backend = PrivateAttr()
    _task: str = PrivateAttr()
    _agent: str = PrivateAttr()
    _cancel: threading.Event = PrivateAttr()
    _on_call: Callable[[CallRecord], None] = PrivateAttr()
    _on_progress: Callable[[int], None] | None = PrivateAttr()
    _read_cache: bool = PrivateAttr()
    _on_event: Callable[[str, dict[str, Any]], None] | None = PrivateAttr()

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
        read_cache: bool = True,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(model=backend.name, max_tokens=max_tokens, temperature=temperature)
        self._backend = backend
        self._task = task
        self._agent = agent
        self._cancel = cancel
        self._on_call = on_call
        self._on_progress = on_progress
        self._read_cache = read_cache
        self._on_event = on_event

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
        """Answer a chat request; raise TaskCancelledError once the task must stop."""
        if self._cancel.is_set():
            raise TaskCancelledError("the task was told to stop")
        request = CompletionRequest(
            messages=to_chat_messages(messages),
            agent=self._agent,
            max_tokens=int(self.max_tokens or 512),
            temperature=float(self.temperature or 0.0),
            stop=tuple(self.stop_sequences),
            cancel=self._cancel,
            on_progress=self._on_progress,
            read_cache=self._read_cache,
            task=self._task,
            on_event=self._on_event,
        )
        started = time.perf_counter()
        try:
            completion = self._backend.complete(request)
        except (TaskCancelledError, BudgetExceeded):
            raise  # the model was never asked (or was told to stop): not a model call
        except Exception as exc:
            self._report(started, error=f"{type(exc).__name__}: {exc}")
            raise
        self._report(started, completion=completion)
        if not completion.text.strip():
            # CrewAI would raise a bare ValueError; ours says the answer is worth retrying.
            raise UnparseableOutputError("the model returned an empty answer")
        return completion.text

    # CrewAI wraps every BaseLLM subclass's `call` in its own rate-limit retry: up to
    # three tries with uninterruptible sleeps, invisible to the run. Retries belong to
    # the scheduler, which backs off without holding a worker, honours cancellation and
    # records each attempt, so this marker (CrewAI's own) opts out of the wrapper.
    setattr(call, "_crewai_rate_limit_wrapped", True)  # noqa: B010

    def _report(
        self, started: float, *, completion: Completion | None = None, error: str | None = None
    ) -> None:
        self._on_call(
            CallRecord(
                task=self._task,
                agent=self._agent,
                model=(completion and completion.model) or self._backend.name,
                seconds=time.perf_counter() - started,
                prompt_tokens=completion.prompt_tokens if completion else 0,
                completion_tokens=completion.completion_tokens if completion else 0,
                cached=completion.cached if completion else False,
                error=error,
                cost=completion.cost if completion else 0.0,
            )
        )

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
