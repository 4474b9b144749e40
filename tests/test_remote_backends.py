"""The Ollama and OpenAI-compatible backends against a real HTTP server on 127.0.0.1.

The server (orchestrate.testing.llm_server) speaks both APIs and fails on demand; the
backends use the official clients, so each failure travels the real wire and the real
client before our retries, circuit breakers and fallback chains see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrate.errors import (
    AllBackendsFailedError,
    BackendRefusedError,
    BackendTimeoutError,
    BackendUnavailableError,
    CircuitOpenError,
    RateLimitedError,
    ServerError,
)
from orchestrate.llm.backend import CompletionRequest, create_backend
from orchestrate.llm.models import LinkFactory, connections_from
from orchestrate.llm.remote import Connections
from orchestrate.settings import load_settings
from orchestrate.testing.llm_server import FakeLLMServer

MODEL = "llama3.2:1b"
PROTOCOLS = ("ollama", "openai")


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(models=(MODEL,), retry_after="0", slow_seconds=1.0) as running:
        yield running


def connections(server: FakeLLMServer, **changes: Any) -> Connections:
    fields: dict[str, Any] = {
        "ollama_host": server.ollama_host,
        "openai_base_url": server.openai_base_url,
        "timeout_seconds": 0.5,
    }
    return Connections(**(fields | changes))


def ask(backend: Any, events: list[tuple[str, dict[str, Any]]] | None = None, **extra: Any):
    sink = events if events is not None else []
    request = CompletionRequest(
        messages=[{"role": "user", "content": "write a haiku about retries"}],
        agent="architect",
        max_tokens=32,
        on_event=lambda kind, fields: sink.append((kind, fields)),
        **extra,
    )
    return backend.complete(request)


def links_for(server: FakeLLMServer, isolated: Path, **settings: Any) -> LinkFactory:
    base = {
        "ollama_host": server.ollama_host,
        "openai_base_url": server.openai_base_url,
        "llm_timeout_seconds": 0.5,
        "llm_retry_base_seconds": 0.0,
        "llm_retry_cap_seconds": 1.0,
    }
    return LinkFactory(load_settings(**(base | settings)))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_with_the_servers_token_counts(
    server: FakeLLMServer, protocol: str, stream: bool
) -> None:
    backend = create_backend(
        f"{protocol}:{MODEL}", models_dir=Path(), connections=connections(server, stream=stream)
    )
    progress: list[int] = []

    completion = ask(backend, on_progress=progress.append)

    assert completion.text.startswith("Answer to: write a haiku")
    assert completion.prompt_tokens == 5  # the server counts words
    assert completion.completion_tokens == len(completion.text.split())
    assert server.requests[-1]["stream"] is stream
    if stream:
        assert progress == list(range(1, len(progress) + 1)) and len(progress) > 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("rate_limit", RateLimitedError),
        ("unavailable", ServerError),
        ("slow", BackendTimeoutError),
        ("truncated", ServerError),
        ("reset", BackendUnavailableError),
    ],
)
def test_each_fault_becomes_a_transient_error(
    server: FakeLLMServer, protocol: str, fault: str, error: type[Exception]
) -> None:
    backend = create_backend(
        f"{protocol}:{MODEL}", models_dir=Path(), connections=connections(server)
    )
    server.inject(fault)  # type: ignore[arg-type]
    with pytest.raises(error):
        ask(backend)
    assert ask(backend).text  # the next call is fine


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_rate_limit_carries_the_retry_after_hint(server: FakeLLMServer, protocol: str) -> None:
    server.retry_after = "7"
    backend = create_backend(
        f"{protocol}:{MODEL}", models_dir=Path(), connections=connections(server)
    )
    server.inject("rate_limit")
    with pytest.raises(RateLimitedError) as limited:
        ask(backend)
    assert limited.value.retry_after == 7.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_transient_faults_are_retried_until_an_answer(
    server: FakeLLMServer, isolated: Path, protocol: str
) -> None:
    link = links_for(server, isolated).link(f"{protocol}:{MODEL}")
    for fault in ("rate_limit", "unavailable"):
        server.inject(fault)  # type: ignore[arg-type]
    events: list[tuple[str, dict[str, Any]]] = []

    assert ask(link, events).text
    retries = [fields for kind, fields in events if kind == "llm_retry"]
    assert [retry["attempt"] for retry in retries] == [1, 2]
    assert "HTTP 429" in retries[0]["reason"] and "HTTP 503" in retries[1]["reason"]
    assert server.chat_count == 3


def test_a_retry_waits_as_long_as_retry_after_asks(server: FakeLLMServer, isolated: Path) -> None:
    server.retry_after = "0.3"
    link = links_for(server, isolated).link(f"ollama:{MODEL}")
    server.inject("rate_limit")
    events: list[tuple[str, dict[str, Any]]] = []

    ask(link, events)

    (retry,) = [fields for kind, fields in events if kind == "llm_retry"]
    assert retry["retry_in_seconds"] == pytest.approx(0.3)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_breaker_opens_after_consecutive_failures_and_closes_after_a_trial(
    server: FakeLLMServer, isolated: Path, protocol: str
) -> None:
    links = links_for(
        server,
        isolated,
        llm_retry_max_attempts=1,
        breaker_failure_threshold=3,
        breaker_reset_seconds=0.3,
    )
    link = links.link(f"{protocol}:{MODEL}")
    events: list[tuple[str, dict[str, Any]]] = []
    server.down()
    for _ in range(3):
        with pytest.raises(ServerError):
            ask(link, events)
    assert server.chat_count == 3

    with pytest.raises(CircuitOpenError):
        ask(link, events)
    assert server.chat_count == 3  # refused without asking the server

    server.up()
    import time

    time.sleep(0.35)
    assert ask(link, events).text
    states = [fields["state"] for kind, fields in events if kind == "circuit_changed"]
    assert states == ["open", "half_open", "closed"]


def test_the_breaker_is_shared_by_every_chain_using_the_model(
    server: FakeLLMServer, isolated: Path
) -> None:
    links = links_for(server, isolated, llm_retry_max_attempts=1, breaker_failure_threshold=2)
    first = links.chain([f"ollama:{MODEL}"])
    second = links.chain([f"ollama:{MODEL}", "embedded:smollm2-135m"])
    assert first.links[0] is second.links[0]
    server.down()
    for _ in range(2):
        with pytest.raises(ServerError):
            ask(first)
    with pytest.raises(CircuitOpenError):
        ask(first)
    assert links.breakers[f"ollama:{MODEL}"].state.value == "open"


def test_the_chain_falls_back_to_the_next_backend(server: FakeLLMServer, isolated: Path) -> None:
    with FakeLLMServer(models=(MODEL,)) as hosted:
        links = links_for(server, isolated, openai_base_url=hosted.openai_base_url)
        chain = links.chain([f"openai:{MODEL}", f"ollama:{MODEL}"])
        hosted.down()
        events: list[tuple[str, dict[str, Any]]] = []

        completion = ask(chain, events)

    assert completion.model == f"ollama:{MODEL}"
    fallbacks = [fields for kind, fields in events if kind == "model_fallback"]
    assert fallbacks == [
        {
            "from_model": f"openai:{MODEL}",
            "to_model": f"ollama:{MODEL}",
            "reason": fallbacks[0]["reason"],
        }
    ]
    assert "HTTP 503" in fallbacks[0]["reason"]


def test_when_every_backend_is_down_the_error_names_each(
    server: FakeLLMServer, isolated: Path
) -> None:
    links = links_for(server, isolated, llm_retry_max_attempts=1)
    chain = links.chain([f"openai:{MODEL}", f"ollama:{MODEL}"])
    server.stop()

    with pytest.raises(AllBackendsFailedError) as failed:
        chain.prepare()
    message = str(failed.value)
    assert message.startswith("every model failed: openai:llama3.2:1b: cannot reach")
    assert "ollama:llama3.2:1b: cannot reach Ollama at" in message


def test_a_model_ollama_lacks_is_refused_with_the_pull_command(server: FakeLLMServer) -> None:
    backend = create_backend("ollama:qwen3:8b", models_dir=Path(), connections=connections(server))
    with pytest.raises(BackendRefusedError, match=r"run `ollama pull qwen3:8b`"):
        backend.prepare()


def test_the_ollama_identity_names_the_weights_digest(server: FakeLLMServer) -> None:
    backend = create_backend(f"ollama:{MODEL}", models_dir=Path(), connections=connections(server))
    backend.prepare()
    digest = server_digest(server)
    assert backend.identity == f"ollama:{MODEL}@{digest}"


def server_digest(server: FakeLLMServer) -> str:
    import ollama

    (model,) = ollama.Client(host=server.ollama_host).list().models
    return model.digest or ""


def test_an_endpoint_that_wants_a_key_gets_it_from_settings(isolated: Path) -> None:
    with FakeLLMServer(models=(MODEL,), api_key="sk-test") as keyed:
        good = links_for(keyed, isolated, openai_api_key="sk-test").link(f"openai:{MODEL}")
        bad = create_backend(f"openai:{MODEL}", models_dir=Path(), connections=connections(keyed))
        assert ask(good).text
        with pytest.raises(BackendRefusedError, match="HTTP 401"):
            ask(bad)
        assert keyed.chat_count == 2  # the refusal was not retried


def test_the_openai_key_is_read_from_the_environment(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:1")
    settings = load_settings()
    found = connections_from(settings)
    assert found.openai_api_key == "sk-from-env"
    assert found.ollama_host == "http://127.0.0.1:1"
    assert "sk-from-env" not in repr(settings)


def test_tokens_are_counted_locally_when_the_server_reports_none(server: FakeLLMServer) -> None:
    from orchestrate.llm.tokens import TokenCounter

    counter = TokenCounter(MODEL)
    assert not counter.exact
    assert counter.count_text("x" * 40) == 10
