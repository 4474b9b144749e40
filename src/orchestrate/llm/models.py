"""From settings to the models a run talks to: a layered chain per model an agent uses.

Each model becomes one *link*, built once per process and shared by every agent and
chain that names it, layered from the outside in:

    response cache -> spend guard -> retries + circuit breaker -> the model itself

The cache is outermost so a hit costs nothing and needs no budget; the spend guard
reserves once for all of a call's retries; retries and the breaker apply to remote
models only (a local model does not have flaky networks, and the scripted test double's
injected failures are meant for the scheduler). An agent's chain is its model followed
by the fallback models, tried in that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrate.llm.backend import Backend, create_backend, parse_model_name
from orchestrate.llm.remote import Connections
from orchestrate.llm.resilience import (
    BreakerConfig,
    CircuitBreaker,
    FallbackChain,
    ResilientBackend,
)

if TYPE_CHECKING:
    from orchestrate.llm.cache import ResponseCache
    from orchestrate.llm.replay import TaskReplay
    from orchestrate.safety.gpu import GpuLeaseManager
    from orchestrate.safety.spend import SpendGuard
    from orchestrate.settings import Settings

REMOTE_BACKENDS = ("ollama", "openai")


def connections_from(settings: Settings) -> Connections:
    key = settings.openai_api_key
    return Connections(
        ollama_host=settings.ollama_host,
        openai_base_url=settings.openai_base_url,
        openai_api_key=key.get_secret_value() if key is not None else None,
        timeout_seconds=settings.llm_timeout_seconds,
        connect_timeout_seconds=min(5.0, settings.llm_timeout_seconds),
        stream=settings.llm_stream,
        tokenizer_file=settings.tokenizer_file,
        context_window=settings.context_window,
    )


@dataclass
class ModelRouter:
    """The chain each agent asks, keyed by the agent's model."""

    chains: dict[str, FallbackChain]
    agent_models: dict[str, str]
    default_model: str
    replay: TaskReplay | None = None  # whole-task answers; None when caching is off

    @classmethod
    def single(cls, backend: Backend, *, replay: TaskReplay | None = None) -> ModelRouter:
        """Every agent on one ready-made backend, without fallbacks."""
        return cls({backend.name: FallbackChain([backend])}, {}, backend.name, replay)

    def for_agent(self, agent: str) -> Backend:
        return self.chains[self.agent_models.get(agent, self.default_model)]

    @property
    def models(self) -> list[str]:
        """Every model some chain may call, main models first."""
        names: list[str] = []
        for chain in self.chains.values():
            names += [link.name for link in chain.links if link.name not in names]
        return names

    def prepare(self) -> None:
        """Get each chain's first answering model ready (load weights, reach servers)."""
        for chain in self.chains.values():
            chain.prepare()


class LinkFactory:
    """Builds each model's layered link once, with one circuit breaker per model."""

    def __init__(
        self,
        settings: Settings,
        *,
        leases: GpuLeaseManager | None = None,
        spend_guard: SpendGuard | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.settings = settings
        self.connections = connections_from(settings)
        self._leases = leases
        self._spend_guard = spend_guard
        self.cache = cache
        self._links: dict[str, Backend] = {}
        self.breakers: dict[str, CircuitBreaker] = {}

    def chain(self, models: list[str]) -> FallbackChain:
        return FallbackChain([self.link(model) for model in models])

    def link(self, model: str) -> Backend:
        if model not in self._links:
            self._links[model] = self._build(model)
        return self._links[model]

    def _build(self, model: str) -> Backend:
        settings = self.settings
        backend = create_backend(
            model,
            models_dir=settings.models_dir,
            embedded_model=settings.embedded_model,
            leases=self._leases,
            connections=self.connections,
            adapter=settings.embedded_adapter,
        )
        if parse_model_name(model)[0] in REMOTE_BACKENDS:
            config = BreakerConfig(
                settings.breaker_failure_threshold, settings.breaker_reset_seconds
            )
            breaker = self.breakers[model] = CircuitBreaker(model, config)
            backend = ResilientBackend(backend, breaker, settings.retry_policy_per_call())
        if self._spend_guard is not None:
            from orchestrate.safety.spend import BudgetedBackend

            backend = BudgetedBackend(backend, self._spend_guard)
        if self.cache is not None:
            from orchestrate.llm.cache import CachingBackend

            backend = CachingBackend(backend, self.cache, cache_sampled=settings.cache_sampled)
        return backend


def build_router(
    links: LinkFactory, agent_models: dict[str, str], default_model: str
) -> ModelRouter:
    """One chain per distinct agent model, each backed by the settings' fallbacks."""
    settings = links.settings
    wanted = {default_model, *agent_models.values()}
    chains = {model: links.chain(settings.model_chain(model)) for model in sorted(wanted)}
    replay = None
    if links.cache is not None:
        from orchestrate.llm.replay import TaskReplay

        replay = TaskReplay(links.cache, cache_sampled=settings.cache_sampled)
    return ModelRouter(chains, agent_models, default_model, replay)


def models_in_use(
    settings: Settings, agent_models: dict[str, str], default_model: str
) -> list[str]:
    """Every model a build may call, checked to be well-formed; main models first."""
    names: list[str] = []
    for model in [default_model, *agent_models.values()]:
        for name in settings.model_chain(model):
            parse_model_name(name)
            if name not in names:
                names.append(name)
    return names
