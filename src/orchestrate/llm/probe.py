"""Asking a remote model server what it has, for `doctor` and `models`.

A probe lists the server's models, which shows in one cheap request whether the
server is reachable, how long it takes to answer, and whether the model is there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from orchestrate.errors import BackendError, BackendRefusedError
from orchestrate.llm.backend import parse_model_name
from orchestrate.llm.remote import Connections


@dataclass(frozen=True)
class Probe:
    """What one server said when asked for its models."""

    backend: str  # "ollama" or "openai"
    where: str  # the host or base URL asked
    models: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    error: str | None = None  # set when the server could not be asked
    listed: bool = True  # False: the server answered but does not list its models

    @property
    def reachable(self) -> bool:
        return self.error is None

    def has(self, model: str) -> bool:
        """Whether ``model`` (a name without its backend) is among the listed models."""
        return model in self.models or f"{model}:latest" in self.models


def probe_ollama(connections: Connections) -> Probe:
    from orchestrate.llm.ollama_backend import OllamaBackend

    backend = OllamaBackend("probe", connections)
    started = time.perf_counter()
    try:
        models = [model.model or "" for model in backend.list_models()]
    except BackendError as exc:
        return Probe("ollama", backend.host, error=_without_name(exc, backend.name))
    return Probe("ollama", backend.host, models, _ms_since(started))


def probe_openai(connections: Connections) -> Probe:
    from orchestrate.llm.openai_backend import OpenAIBackend

    backend = OpenAIBackend("probe", connections)
    started = time.perf_counter()
    try:
        models = backend.list_models()
    except BackendRefusedError as exc:
        if "HTTP 404" in str(exc):  # it answered, but has no model list to give
            return Probe("openai", backend.base_url, [], _ms_since(started), listed=False)
        return Probe("openai", backend.base_url, error=_without_name(exc, backend.name))
    except BackendError as exc:
        return Probe("openai", backend.base_url, error=_without_name(exc, backend.name))
    return Probe("openai", backend.base_url, models, _ms_since(started))


def probe_for(model: str, connections: Connections) -> Probe:
    """Probe the server that ``model`` (BACKEND:NAME, a remote backend) lives on."""
    backend, _ = parse_model_name(model)
    return probe_ollama(connections) if backend == "ollama" else probe_openai(connections)


def _without_name(error: BackendError, name: str) -> str:
    return str(error).removeprefix(f"{name}: ")


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
