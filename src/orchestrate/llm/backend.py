"""What every model backend provides, and how a model name picks one.

A model name is ``BACKEND:NAME``: ``embedded:smollm2-135m`` runs a small model inside
the process; ``ollama:llama3.2`` asks an Ollama server; ``openai:gpt-4o-mini`` asks any
OpenAI-compatible endpoint; ``scripted:FILE`` answers from a YAML file (a test double).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestrate.errors import ModelNotFoundError

if TYPE_CHECKING:
    from orchestrate.llm.remote import Connections
    from orchestrate.safety.gpu import GpuLeaseManager

ChatMessage = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


@dataclass(frozen=True)
class CompletionRequest:
    """One chat completion for one agent."""

    messages: list[ChatMessage]
    agent: str
    max_tokens: int
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    cancel: threading.Event = field(default_factory=threading.Event)
    # Called with the number of tokens generated so far, for live progress.
    on_progress: Callable[[int], None] | None = None
    # False on a retry: the cached answer is what the last attempt rejected.
    read_cache: bool = True
    task: str = ""  # the task asking, for the spend ledger's records
    # Told of what happens on the way to an answer (a retry, a circuit opening, a switch
    # to the fallback model) as (kind, fields), so the run can record it as an event.
    on_event: Callable[[str, dict[str, Any]], None] | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False  # answered from the response cache, not by the model
    model: str | None = None  # who answered, when not the backend asked (a budget fallback)
    cost: float = 0.0  # in the budget's currency; 0 for local models and cache hits


class Backend(Protocol):
    """A source of chat completions, safe to call from several threads at once."""

    @property
    def name(self) -> str: ...

    @property
    def context_window(self) -> int: ...

    @property
    def identity(self) -> str:
        """Names the model and fingerprints its weights: equal identities, equal answers."""

    def prepare(self) -> None:
        """Do slow one-time work (loading weights) before the first task starts."""

    def complete(self, request: CompletionRequest) -> Completion: ...

    def count_tokens(self, messages: list[ChatMessage]) -> int: ...


class BackendLayer:
    """A backend that wraps another, adding one concern to ``complete``.

    Everything else (name, identity, context window, loading, token counts) is the
    wrapped backend's, so layers stack without changing what the model is.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    @property
    def identity(self) -> str:
        return self.inner.identity

    def prepare(self) -> None:
        self.inner.prepare()

    def complete(self, request: CompletionRequest) -> Completion:
        return self.inner.complete(request)

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        return self.inner.count_tokens(messages)


BACKENDS = ("embedded", "ollama", "openai", "scripted")


def parse_model_name(model: str) -> tuple[str, str]:
    """Split ``BACKEND:NAME`` and check the backend exists."""
    backend, separator, name = model.partition(":")
    if not separator or not name or backend not in BACKENDS:
        raise ModelNotFoundError(
            f"unknown model '{model}': use BACKEND:NAME with BACKEND one of "
            f"{', '.join(BACKENDS)} (for example embedded:smollm2-135m)"
        )
    return backend, name


def create_backend(
    model: str,
    *,
    models_dir: Path,
    embedded_model: Path | None = None,
    leases: GpuLeaseManager | None = None,
    connections: Connections | None = None,
    adapter: Path | None = None,
) -> Backend:
    """Build the backend a model name asks for; nothing heavy is loaded yet.

    With ``leases``, a local model holds a device lease around each generation;
    ``connections`` says where the remote backends are; ``adapter`` is a LoRA adapter
    folder loaded on embedded models (other backends have their own weights).
    """
    backend, name = parse_model_name(model)
    if backend in ("ollama", "openai"):
        from orchestrate.llm.remote import Connections

        return _remote_backend(backend, name, connections or Connections())
    if backend == "scripted":
        from orchestrate.llm.scripted import ScriptedBackend

        return ScriptedBackend.from_file(Path(name))
    from orchestrate.llm.embedded import EmbeddedBackend, locate_embedded_model

    source = locate_embedded_model(name, override=embedded_model)
    return EmbeddedBackend(model, source, models_dir, leases=leases, adapter=adapter)


def _remote_backend(backend: str, name: str, connections: Connections) -> Backend:
    if backend == "ollama":
        from orchestrate.llm.ollama_backend import OllamaBackend

        return OllamaBackend(name, connections)
    from orchestrate.llm.openai_backend import OpenAIBackend

    return OpenAIBackend(name, connections)
