"""Tests for orchestrate.testing.llm_server, through the official openai and ollama clients.

The fault tests double as the record of what each client raises, which the remote
backends map to their own errors:

    fault        openai client                         ollama client
    rate_limit   openai.RateLimitError (429,           ollama.ResponseError, status_code 429
                 response.headers["retry-after"])      (no headers: Retry-After is lost)
    unavailable  openai.InternalServerError (503)      ollama.ResponseError, status_code 503
    slow         openai.APITimeoutError                httpx.ReadTimeout (not wrapped)
    reset        openai.APIConnectionError             httpx.ReadError (not wrapped)
                 (__cause__ httpx.ReadError)
    truncated    json.JSONDecodeError (not wrapped)    json.JSONDecodeError (not wrapped)
    ...streamed  httpx.RemoteProtocolError             httpx.RemoteProtocolError
                 (not wrapped: raised while iterating)  (not wrapped)
    down()       openai.InternalServerError (503)      ollama.ResponseError, status_code 503
    stop()       openai.APIConnectionError             ConnectionError (the builtin)
                 (__cause__ httpx.ConnectError)

Streaming and non-streaming requests raise the same, except for truncated bodies.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import ollama
import openai
import pytest

from orchestrate.testing.llm_server import FakeLLMServer, default_answer

MODEL = "llama3.2:1b"
QUESTION = "What is the capital of France please?"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
PROMPT_WORDS = 9  # "Be brief." + the question, counted in whitespace-separated words
EXPECTED = default_answer(MODEL, MESSAGES)
SLOW_SECONDS = 5.0  # how long the slow fault sleeps (stop() cuts it short)...
CLIENT_TIMEOUT = 2.0  # ...and the clients' timeout: well under it, yet roomy for a busy machine


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(models=(MODEL,), retry_after="7", slow_seconds=SLOW_SECONDS) as server:
        yield server


@pytest.fixture
def oai(server: FakeLLMServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=server.openai_base_url, api_key="x", max_retries=0, timeout=CLIENT_TIMEOUT
    )
    yield client
    client.close()


@pytest.fixture
def oll(server: FakeLLMServer) -> Iterator[ollama.Client]:
    client = ollama.Client(host=server.ollama_host, timeout=CLIENT_TIMEOUT)
    yield client
    client.close()


def openai_chat(client: openai.OpenAI, stream: bool = False, **kwargs: Any) -> str:
    """The reply's text, read to the end whether streamed or not."""
    if not stream:
        reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, **kwargs)
        return reply.choices[0].message.content or ""
    chunks = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **kwargs)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def ollama_chat(client: ollama.Client, stream: bool = False, **kwargs: Any) -> str:
    if not stream:
        return client.chat(model=MODEL, messages=MESSAGES, **kwargs).message.content or ""
    chunks = client.chat(model=MODEL, messages=MESSAGES, stream=True, **kwargs)
    return "".join(chunk.message.content or "" for chunk in chunks)


# Replies ------------------------------------------------------------------------------


def test_openai_reply_and_usage(server, oai):
    reply = oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.object == "chat.completion"
    assert reply.model == MODEL
    assert reply.choices[0].message.content == EXPECTED
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == PROMPT_WORDS
    assert reply.usage.completion_tokens == len(EXPECTED.split())
    assert reply.usage.total_tokens == PROMPT_WORDS + len(EXPECTED.split())
    assert server.requests == [
        {
            "path": "/v1/chat/completions",
            "model": MODEL,
            "stream": False,
            "fault": None,
            "status": 200,
        }
    ]


def test_openai_stream_ends_with_finish_reason_then_usage(oai):
    chunks = list(
        oai.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    *answer, last_choice, usage = chunks
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in answer) == EXPECTED
    assert len(answer) > 5  # one chunk per word, after the role chunk
    assert last_choice.choices[0].finish_reason == "stop"
    assert usage.choices == []
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (
        PROMPT_WORDS,
        len(EXPECTED.split()),
    )


def test_openai_stream_has_no_usage_unless_asked(oai):
    chunks = list(oai.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_ollama_reply_and_counts(oll):
    reply = oll.chat(model=MODEL, messages=MESSAGES)
    assert reply.message.role == "assistant"
    assert reply.message.content == EXPECTED
    assert reply.done is True
    assert reply.done_reason == "stop"
    assert reply.prompt_eval_count == PROMPT_WORDS
    assert reply.eval_count == len(EXPECTED.split())
    assert reply.total_duration and reply.eval_duration


def test_ollama_stream_sends_a_chunk_per_word_then_the_counts(oll):
    chunks = list(oll.chat(model=MODEL, messages=MESSAGES, stream=True))
    *words, last = chunks
    assert "".join(chunk.message.content for chunk in words) == EXPECTED
    assert len(words) == len(EXPECTED.split())
    assert not any(chunk.done for chunk in words)
    assert last.done is True
    assert last.done_reason == "stop"
    assert (last.prompt_eval_count, last.eval_count) == (PROMPT_WORDS, len(words))


def test_ollama_streams_unless_told_not_to(server):
    body = {"model": MODEL, "messages": MESSAGES}  # no "stream": real Ollama streams
    reply = httpx.post(f"{server.url}/api/chat", json=body)
    assert reply.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in reply.text.splitlines()]
    assert len(lines) == len(EXPECTED.split()) + 1
    assert lines[-1]["done"] is True
    assert server.requests[-1]["stream"] is True


def test_model_lists_and_version(server, oai, oll):
    assert [model.model for model in oll.list().models] == [MODEL]
    tags = httpx.get(f"{server.url}/api/tags").json()["models"]
    assert tags[0]["name"] == MODEL
    assert tags[0]["details"]["format"] == "gguf"
    assert httpx.get(f"{server.url}/api/version").json() == {"version": "0.6.0"}
    models = oai.models.list().data
    assert [(m.id, m.object, m.owned_by) for m in models] == [(MODEL, "model", "fake")]


def test_unknown_model_is_404_when_models_are_listed(oai, oll):
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-nope", messages=MESSAGES)
    with pytest.raises(ollama.ResponseError) as caught:
        oll.chat(model="nope:7b", messages=MESSAGES)
    assert caught.value.status_code == 404
    assert caught.value.error == 'model "nope:7b" not found, try pulling it first'


def test_any_model_is_served_when_none_are_listed():
    with FakeLLMServer() as server, ollama.Client(host=server.ollama_host) as client:
        assert client.chat(model="anything:1b", messages=MESSAGES).message.content == EXPECTED


def test_answer_callable_sees_model_and_messages():
    seen: list[tuple[str, list[dict[str, Any]]]] = []

    def answer(model: str, messages: list[dict[str, Any]]) -> str:
        seen.append((model, messages))
        return "forty two"

    with FakeLLMServer(answer=answer) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0)
        assert openai_chat(client, stream=True) == "forty two"
    assert seen == [(MODEL, MESSAGES)]


# Stop strings and max tokens ----------------------------------------------------------


@pytest.fixture
def counting_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(answer=lambda model, messages: "one two three STOP four five") as server:
        yield server


@pytest.mark.parametrize("stream", [False, True])
def test_openai_stop_and_max_tokens(counting_server, stream):
    client = openai.OpenAI(base_url=counting_server.openai_base_url, api_key="x", max_retries=0)
    assert openai_chat(client, stream, stop=["STOP", "five"]) == "one two three"
    assert openai_chat(client, stream, stop="three") == "one two"
    assert openai_chat(client, stream, max_tokens=2) == "one two"
    assert openai_chat(client, stream, max_completion_tokens=4) == "one two three STOP"


def test_openai_finish_reason_and_usage_when_cut(counting_server):
    client = openai.OpenAI(base_url=counting_server.openai_base_url, api_key="x", max_retries=0)
    cut = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None
    assert cut.usage.completion_tokens == 2
    stopped = client.chat.completions.create(model=MODEL, messages=MESSAGES, stop=["STOP"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage is not None
    assert stopped.usage.completion_tokens == 3


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_stop_and_num_predict(counting_server, stream):
    client = ollama.Client(host=counting_server.ollama_host)
    assert ollama_chat(client, stream, options={"stop": ["STOP"]}) == "one two three"
    assert ollama_chat(client, stream, options={"num_predict": 2}) == "one two"
    assert ollama_chat(client, stream, options={"num_predict": -1}) == (
        "one two three STOP four five"
    )


def test_ollama_done_reason_when_cut(counting_server):
    client = ollama.Client(host=counting_server.ollama_host)
    cut = client.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 2})
    assert (cut.done_reason, cut.eval_count) == ("length", 2)


# Faults -------------------------------------------------------------------------------

# What each client raises, by fault kind and by streaming or not (see the module docstring).
OPENAI_RAISES: dict[str, tuple[type[BaseException], type[BaseException]]] = {
    "rate_limit": (openai.RateLimitError, openai.RateLimitError),
    "unavailable": (openai.InternalServerError, openai.InternalServerError),
    "slow": (openai.APITimeoutError, openai.APITimeoutError),
    "reset": (openai.APIConnectionError, openai.APIConnectionError),
    "truncated": (json.JSONDecodeError, httpx.RemoteProtocolError),
}
OLLAMA_RAISES: dict[str, tuple[type[BaseException], type[BaseException]]] = {
    "rate_limit": (ollama.ResponseError, ollama.ResponseError),
    "unavailable": (ollama.ResponseError, ollama.ResponseError),
    "slow": (httpx.ReadTimeout, httpx.ReadTimeout),
    "reset": (httpx.ReadError, httpx.ReadError),
    "truncated": (json.JSONDecodeError, httpx.RemoteProtocolError),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", list(OPENAI_RAISES))
def test_openai_client_sees_each_fault(server, oai, kind, stream):
    server.inject(kind)
    with pytest.raises(OPENAI_RAISES[kind][stream]) as caught:
        openai_chat(oai, stream)
    if kind == "rate_limit":
        assert isinstance(caught.value, openai.RateLimitError)
        assert caught.value.response.headers["retry-after"] == "7"
        assert caught.value.body == {
            "message": "Rate limit reached; retry later",
            "type": "rate_limit_exceeded",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    if kind == "reset":
        assert isinstance(caught.value.__cause__, httpx.ReadError)
    # The fault is spent, and the client's connection pool gets over it.
    assert openai_chat(oai, stream) == EXPECTED
    assert [r["fault"] for r in server.requests] == [kind, None]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", list(OLLAMA_RAISES))
def test_ollama_client_sees_each_fault(server, oll, kind, stream):
    server.inject(kind)
    with pytest.raises(OLLAMA_RAISES[kind][stream]) as caught:
        ollama_chat(oll, stream)
    statuses = {"rate_limit": 429, "unavailable": 503}
    if kind in statuses:
        assert isinstance(caught.value, ollama.ResponseError)
        assert caught.value.status_code == statuses[kind]
    assert ollama_chat(oll, stream) == EXPECTED
    assert [r["fault"] for r in server.requests] == [kind, None]


def test_records_the_status_of_each_fault(server, oai):
    for kind in ("rate_limit", "unavailable", "reset", "truncated"):
        server.inject(kind)
        with pytest.raises(Exception):  # noqa: B017 - which one is tested above
            openai_chat(oai)
    assert [(r["fault"], r["status"]) for r in server.requests] == [
        ("rate_limit", 429),
        ("unavailable", 503),
        ("reset", None),
        ("truncated", 200),
    ]


def test_injected_faults_queue_in_order_for_chat_requests_only(server, oai):
    server.inject("rate_limit", times=2)
    server.inject("unavailable")
    assert oai.models.list().data  # not a chat request: spends no fault
    for expected in (openai.RateLimitError, openai.RateLimitError, openai.InternalServerError):
        with pytest.raises(expected):
            openai_chat(oai)
    assert openai_chat(oai) == EXPECTED
    assert server.chat_count == 4
    assert [r["fault"] for r in server.requests] == [
        None,
        "rate_limit",
        "rate_limit",
        "unavailable",
        None,
    ]


def test_clear_faults_forgets_queued_ones_and_comes_up(server, oai):
    server.inject("unavailable", times=5)
    server.fault_rate(1.0)
    server.down()
    server.clear_faults()
    assert openai_chat(oai) == EXPECTED


def test_fault_rate_fails_about_that_share_and_repeats_with_a_seed():
    def run() -> list[str | None]:
        with (
            FakeLLMServer() as server,
            openai.OpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0) as client,
        ):
            server.fault_rate(0.3, seed=7)
            failures = 0
            for _ in range(200):
                try:
                    openai_chat(client)
                except (openai.APIError, json.JSONDecodeError):
                    failures += 1
            faults = [r["fault"] for r in server.requests]
        assert failures == sum(fault is not None for fault in faults)
        return faults

    faults = run()
    assert 0.2 < sum(fault is not None for fault in faults) / len(faults) < 0.4
    assert {fault for fault in faults} == {None, "rate_limit", "unavailable", "reset", "truncated"}
    assert run() == faults  # same seed, same requests in the same order: same faults


def test_bad_fault_arguments_are_refused(server):
    with pytest.raises(ValueError, match="unknown fault"):
        server.inject("explode")
    with pytest.raises(ValueError, match="times"):
        server.inject("reset", times=0)
    with pytest.raises(ValueError, match="rate"):
        server.fault_rate(1.5)


def test_down_answers_503_everywhere_until_up(server, oai, oll):
    server.down()
    with pytest.raises(openai.InternalServerError):
        openai_chat(oai)
    with pytest.raises(openai.InternalServerError):
        oai.models.list()
    with pytest.raises(ollama.ResponseError) as caught:
        oll.list()
    assert caught.value.status_code == 503
    assert httpx.get(f"{server.url}/api/version").status_code == 503
    server.up()
    assert openai_chat(oai) == EXPECTED
    assert oll.list().models
    assert [r["fault"] for r in server.requests][:4] == ["down"] * 4


def test_api_key_is_demanded_when_set():
    with FakeLLMServer(api_key="sesame") as server:
        wrong = openai.OpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            openai_chat(wrong)
        right = openai.OpenAI(base_url=server.openai_base_url, api_key="sesame", max_retries=0)
        assert openai_chat(right) == EXPECTED
        authorized = ollama.Client(server.ollama_host, headers={"Authorization": "Bearer sesame"})
        assert ollama_chat(authorized) == EXPECTED


def test_bad_requests_get_400(server):
    reply = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json")
    assert reply.status_code == 400
    assert "error" in reply.json()
    assert httpx.post(f"{server.url}/api/chat", json={"messages": []}).json() == {
        "error": "model is required"
    }


# Lifecycle ----------------------------------------------------------------------------


def test_latency_delays_each_chat_reply():
    with FakeLLMServer(latency=0.1) as server:
        started = time.monotonic()
        httpx.post(f"{server.url}/api/chat", json={"model": MODEL, "stream": False})
        assert time.monotonic() - started >= 0.1


def test_concurrent_requests_are_all_counted(server, oll):
    def ask(_: int) -> str:
        return ollama_chat(oll)  # one client for all: its httpx pool is thread-safe

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, range(64)))
    assert answers == [EXPECTED] * 64
    assert server.chat_count == len(server.requests) == 64


def test_stop_refuses_connections_and_start_listens_again_on_the_same_port(server, oai, oll):
    url = server.url
    server.stop()
    with pytest.raises(openai.APIConnectionError) as caught:
        openai_chat(oai)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    with pytest.raises(ConnectionError):
        ollama_chat(oll)
    server.start()
    assert server.url == url
    assert openai_chat(oai) == EXPECTED


def test_shutdown_is_quick_with_requests_in_flight_and_idle_connections():
    threads_before = threading.active_count()
    errors: list[BaseException] = []
    with FakeLLMServer(slow_seconds=30) as server:
        idle = openai.OpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0)
        openai_chat(idle)  # leaves a keep-alive connection open, and a thread reading it
        server.inject("slow")
        busy = openai.OpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0)
        waiting = threading.Thread(target=_catching(errors, lambda: openai_chat(busy)))
        waiting.start()
        _wait_for(lambda: server.chat_count == 2)
        started = time.monotonic()
    assert time.monotonic() - started < 1.0  # neither connection held the shutdown up
    waiting.join(timeout=2)
    assert not waiting.is_alive()
    assert errors and isinstance(errors[0], openai.APIConnectionError)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/api/version")
    _wait_for(lambda: threading.active_count() <= threads_before)


def test_cli_serves_until_interrupted():
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrate.testing.llm_server", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[4]  # "fake LLM server on URL (...)"
        assert httpx.get(f"{url}/api/version").json() == {"version": "0.6.0"}
    finally:
        process.send_signal(signal.SIGINT)  # as Ctrl-C
        assert process.wait(timeout=5) == 0


def _catching(errors: list[BaseException], call: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    return run


def _wait_for(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
