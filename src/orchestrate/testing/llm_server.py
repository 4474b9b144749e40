"""A fake LLM server that speaks Ollama's and OpenAI's chat APIs over real HTTP.

Why: the remote backends reach models through the official ``ollama`` and ``openai``
clients, and what goes wrong in production goes wrong on the wire: 429s with a
``Retry-After``, 503s, slow answers that hit the client's timeout, bodies cut short,
connections reset. Mocking the clients would skip all of that. This server answers on
127.0.0.1 with deterministic replies, fails on demand in each of those ways, and counts
what it was asked, so tests can check retries, timeouts and circuit breakers end to end
and benchmarks can measure the client side without a model in the loop.

    with FakeLLMServer(models=("llama3.2:1b",)) as server:
        server.inject("rate_limit", times=2)
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="x")

Standard library only, so it costs the project no dependency.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import selectors
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Literal, Self, TypedDict, cast, get_args

HOST: Final = "127.0.0.1"
DEFAULT_MODELS: Final = ("llama3.2:1b",)
OLLAMA_VERSION: Final = "0.6.0"

FaultKind = Literal["rate_limit", "unavailable", "slow", "truncated", "reset"]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
# The kinds fault_rate() picks from unless told otherwise: "slow" is left out because
# a random share of five-second sleeps makes a test slow, not interesting.
RANDOM_FAULT_KINDS: Final[tuple[FaultKind, ...]] = (
    "rate_limit",
    "unavailable",
    "reset",
    "truncated",
)

# answer(model, messages) -> the reply's text, before stop strings and max tokens cut it.
AnswerFn = Callable[[str, list[dict[str, Any]]], str]

JSON_TYPE: Final = "application/json; charset=utf-8"
NDJSON_TYPE: Final = "application/x-ndjson"
SSE_TYPE: Final = "text/event-stream"

# How long stop() waits for handler threads to notice their connection was closed.
_DRAIN_SECONDS: Final = 2.0
_TOKEN = re.compile(r"\s*\S+")  # a word with the whitespace before it: tokens join back


class RequestRecord(TypedDict):
    """One request the server received, as ``FakeLLMServer.requests`` lists it."""

    path: str
    model: str | None
    stream: bool
    fault: str | None  # a FaultKind, "down", or None when answered normally
    status: int | None  # None until answered, and for good when the connection was reset


@dataclass(slots=True)
class _Record:
    """A RequestRecord being filled in: logged on arrival, so the log is in arrival order
    and a request still sleeping (the slow fault) already shows. Its handler alone writes
    it, one field at a time, and each write is atomic, so readers need no lock for it."""

    path: str
    model: str | None = None
    stream: bool = False
    fault: str | None = None
    status: int | None = None

    def as_dict(self) -> RequestRecord:
        return {
            "path": self.path,
            "model": self.model,
            "stream": self.stream,
            "fault": self.fault,
            "status": self.status,
        }


@dataclass(frozen=True)
class _ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    max_tokens: int | None
    stop: tuple[str, ...]
    include_usage: bool = False


@dataclass(frozen=True)
class _Completion:
    tokens: tuple[str, ...]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class _ApiError:
    """An error reply: Ollama sends only the message, OpenAI the type and code too."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None


class _BadRequestError(Exception):
    pass


def default_answer(model: str, messages: list[dict[str, Any]]) -> str:
    """A reply that shows which question it answers, long enough to stream in several tokens."""
    question = next(
        (_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    return f"Answer to: {question[:40]} (a canned reply from the fake LLM server)"


def _text_of(content: object) -> str:
    """A message's text: OpenAI allows a list of parts besides a plain string."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _complete(text: str, request: _ChatRequest) -> _Completion:
    """Cut the answer at the first stop string, then at max tokens, as a model would stop."""
    finish: Literal["stop", "length"] = "stop"
    cuts = [i for stop in request.stop if (i := text.find(stop)) >= 0]
    if cuts:
        text = text[: min(cuts)]
    tokens = _TOKEN.findall(text)
    if request.max_tokens is not None and len(tokens) > request.max_tokens:
        tokens, finish = tokens[: request.max_tokens], "length"
    prompt = sum(len(_text_of(m.get("content")).split()) for m in request.messages)
    return _Completion(tuple(tokens), finish, prompt)


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None  # absent, or Ollama's -1/-2 for "no limit"


def _stop_strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return tuple(s for s in value if isinstance(s, str) and s)
    return ()


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages", [])
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _BadRequestError("messages must be a list of objects")
    return messages


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Dialect:
    """What differs between the two APIs: request fields, reply shapes, stream framing."""

    stream_type: str

    def parse(self, body: dict[str, Any]) -> _ChatRequest:
        raise NotImplementedError

    def error_body(self, error: _ApiError) -> dict[str, Any]:
        raise NotImplementedError

    def reply(self, request: _ChatRequest, done: _Completion, number: int) -> dict[str, Any]:
        raise NotImplementedError

    def stream(self, request: _ChatRequest, done: _Completion, number: int) -> Iterator[bytes]:
        raise NotImplementedError


class _Ollama(_Dialect):
    stream_type = NDJSON_TYPE

    def parse(self, body: dict[str, Any]) -> _ChatRequest:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequestError("model is required")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise _BadRequestError("options must be an object")
        return _ChatRequest(
            model=model,
            messages=_messages(body),
            stream=body.get("stream", True) is not False,  # Ollama streams unless told not to
            max_tokens=_positive_int(options.get("num_predict")),
            stop=_stop_strings(options.get("stop")),
        )

    def error_body(self, error: _ApiError) -> dict[str, Any]:
        return {"error": error.message}

    def reply(self, request: _ChatRequest, done: _Completion, number: int) -> dict[str, Any]:
        return self._chunk(request.model, done.text) | self._summary(done)

    def stream(self, request: _ChatRequest, done: _Completion, number: int) -> Iterator[bytes]:
        for token in done.tokens:
            yield _dumps(self._chunk(request.model, token)) + b"\n"
        yield _dumps(self._chunk(request.model, "") | self._summary(done)) + b"\n"

    @staticmethod
    def _chunk(model: str, content: str) -> dict[str, Any]:
        return {
            "model": model,
            "created_at": _now_rfc3339(),
            "message": {"role": "assistant", "content": content},
            "done": False,
        }

    @staticmethod
    def _summary(done: _Completion) -> dict[str, Any]:
        # Durations in nanoseconds, made up but plausible: 0.1 ms a prompt token, 1 ms an
        # output token, so callers that compute tokens per second get finite numbers.
        prompt_ns, eval_ns, load_ns = (
            done.prompt_tokens * 100_000,
            done.completion_tokens * 1_000_000,
            1_000_000,
        )
        return {
            "done": True,
            "done_reason": done.finish_reason,
            "total_duration": load_ns + prompt_ns + eval_ns,
            "load_duration": load_ns,
            "prompt_eval_count": done.prompt_tokens,
            "prompt_eval_duration": prompt_ns,
            "eval_count": done.completion_tokens,
            "eval_duration": eval_ns,
        }


class _OpenAI(_Dialect):
    stream_type = SSE_TYPE

    def parse(self, body: dict[str, Any]) -> _ChatRequest:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequestError("you must provide a model parameter")
        stream_options = body.get("stream_options") or {}
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        return _ChatRequest(
            model=model,
            messages=_messages(body),
            stream=body.get("stream") is True,
            max_tokens=_positive_int(limit),
            stop=_stop_strings(body.get("stop")),
            include_usage=isinstance(stream_options, dict)
            and stream_options.get("include_usage") is True,
        )

    def error_body(self, error: _ApiError) -> dict[str, Any]:
        return {
            "error": {
                "message": error.message,
                "type": error.type,
                "param": None,
                "code": error.code,
            }
        }

    def reply(self, request: _ChatRequest, done: _Completion, number: int) -> dict[str, Any]:
        message = {"role": "assistant", "content": done.text, "refusal": None}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": done.finish_reason,
        }
        return self._head(request, number, "chat.completion") | {
            "choices": [choice],
            "usage": self._usage(done),
        }

    def stream(self, request: _ChatRequest, done: _Completion, number: int) -> Iterator[bytes]:
        head = self._head(request, number, "chat.completion.chunk")
        if request.include_usage:
            head["usage"] = None  # as OpenAI does: every chunk but the last has a null usage
        deltas: list[tuple[dict[str, str], str | None]] = [
            ({"role": "assistant", "content": ""}, None)
        ]
        deltas += [({"content": token}, None) for token in done.tokens]
        deltas.append(({}, done.finish_reason))
        for delta, finish in deltas:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            yield self._event(head | {"choices": [choice]})
        if request.include_usage:
            yield self._event(head | {"choices": [], "usage": self._usage(done)})
        yield b"data: [DONE]\n\n"

    @staticmethod
    def _head(request: _ChatRequest, number: int, kind: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake{number}",
            "object": kind,
            "created": int(time.time()),
            "model": request.model,
            "system_fingerprint": "fp_fake",
        }

    @staticmethod
    def _usage(done: _Completion) -> dict[str, int]:
        return {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
        }

    @staticmethod
    def _event(payload: dict[str, Any]) -> bytes:
        return b"data: " + _dumps(payload) + b"\n\n"


_OLLAMA: Final = _Ollama()
_OPENAI: Final = _OpenAI()
_CHAT_PATHS: Final[dict[str, _Dialect]] = {"/api/chat": _OLLAMA, "/v1/chat/completions": _OPENAI}


def _dialect_for(path: str) -> _Dialect:
    return _OPENAI if path.startswith("/v1/") else _OLLAMA


class _FaultPlan:
    """Which fault, if any, the next chat request gets: queued ones first, then chance."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[FaultKind] = deque()
        self._rate = 0.0
        self._kinds: tuple[FaultKind, ...] = ()
        self._random = random.Random()

    def inject(self, kind: FaultKind, times: int) -> None:
        _check_kinds((kind,))
        if times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        with self._lock:
            self._queue.extend([kind] * times)

    def set_rate(self, rate: float, kinds: Sequence[FaultKind], seed: int | None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, not {rate}")
        if not kinds:
            raise ValueError("kinds must name at least one fault")
        _check_kinds(kinds)
        with self._lock:
            self._rate, self._kinds, self._random = rate, tuple(kinds), random.Random(seed)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._rate = 0.0

    def next(self) -> FaultKind | None:
        # One lock around the draw too, so a seeded plan gives the same sequence of faults
        # however many threads send requests (the order of requests may still differ).
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            if self._rate and self._random.random() < self._rate:
                return self._random.choice(self._kinds)
        return None


def _check_kinds(kinds: Sequence[str]) -> None:
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {unknown}; known: {list(FAULT_KINDS)}")


class FakeLLMServer:
    """An Ollama- and OpenAI-compatible chat server on 127.0.0.1 that fails on demand.

    ``models=None`` accepts any model name (and lists ``DEFAULT_MODELS``); an explicit list
    makes other names a 404, as a real server that lacks the model answers. ``latency``
    delays every answered chat request, for tests of concurrency; keep it 0 in benchmarks.
    ``api_key`` makes every endpoint demand ``Authorization: Bearer <key>``. ``retry_after``
    and ``slow_seconds`` shape the rate-limit and slow faults and may be changed any time.
    """

    def __init__(
        self,
        models: Sequence[str] | None = None,
        answer: AnswerFn | None = None,
        latency: float = 0.0,
        *,
        port: int = 0,
        api_key: str | None = None,
        retry_after: float | str = "1",
        slow_seconds: float = 5.0,
    ) -> None:
        if isinstance(models, str):
            models = (models,)  # one name, not a sequence of one-letter names
        self.models: tuple[str, ...] = tuple(models) if models is not None else DEFAULT_MODELS
        self.strict_models = models is not None
        self.answer: AnswerFn = answer or default_answer
        self.latency = latency
        self.api_key = api_key
        self.retry_after = str(retry_after)
        self.slow_seconds = slow_seconds
        self.created = int(time.time())
        self._port = port
        self._faults = _FaultPlan()
        self._down = threading.Event()
        self._stopping = threading.Event()  # set by stop(): ends sleeps, refuses new handlers
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._requests: list[_Record] = []
        self._chat_count = 0
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Self:
        """Listen and serve on a daemon thread; after stop(), listen again on the same port."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer(self, self._port)
        self._port = httpd.server_address[1]
        self._stopping.clear()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_until_woken,
            name=f"fake-llm-server:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket (new connections are refused) and every open one."""
        with self._lock:  # two threads stopping at once: one does the work
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
            self._stopping.set()
        if httpd is None or thread is None:
            return
        httpd.wake()
        thread.join()
        httpd.server_close()
        # Handler threads sit in a keep-alive read until their client hangs up; shutting
        # their sockets ends that read now, so no thread outlives the server.
        with self._lock:
            for connection in self._connections:
                _shut(connection)
            self._drained.wait_for(lambda: not self._connections, timeout=_DRAIN_SECONDS)

    @property
    def running(self) -> bool:
        """Between start() and stop()."""
        return self._httpd is not None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ollama_host(self) -> str:
        return self.url

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    # Faults ---------------------------------------------------------------------------

    def inject(self, kind: FaultKind, times: int = 1) -> None:
        """Make the next ``times`` chat requests fail with ``kind``, after any queued before."""
        self._faults.inject(kind, times)

    def fault_rate(
        self,
        rate: float,
        kinds: Sequence[FaultKind] = RANDOM_FAULT_KINDS,
        seed: int | None = None,
    ) -> None:
        """Fail a random ``rate`` share of chat requests, each with a kind drawn from ``kinds``."""
        self._faults.set_rate(rate, kinds, seed)

    def down(self) -> None:
        """Answer every request, on every endpoint, with 503 until up()."""
        self._down.set()

    def up(self) -> None:
        """Undo down(); queued faults and the fault rate still apply."""
        self._down.clear()

    def clear_faults(self) -> None:
        """Forget queued faults and the fault rate, and come back up."""
        self._faults.clear()
        self._down.clear()

    # Counters -------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the log of requests received, oldest first."""
        with self._lock:
            return [record.as_dict() for record in self._requests]

    @property
    def chat_count(self) -> int:
        """Chat requests received on either API, failed ones included."""
        with self._lock:
            return self._chat_count

    # For the handler ------------------------------------------------------------------

    def _record(self, record: _Record) -> None:
        with self._lock:
            self._requests.append(record)

    def _next_chat_number(self) -> int:
        with self._lock:
            self._chat_count += 1
            return self._chat_count

    def _track(self, connection: socket.socket) -> None:
        with self._lock:
            if self._stopping.is_set():
                _shut(connection)  # accepted just before stop(): don't let it linger
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)
            self._drained.notify_all()

    def _pause(self, seconds: float) -> bool:
        """Sleep, unless the server stops first; True when it slept the whole time."""
        return seconds <= 0 or not self._stopping.wait(seconds)


def _shut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed or reset: nothing left to wake
        connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connections when a benchmark opens many at once,
    # and a dropped SYN costs the client a one-second retransmit.
    request_queue_size = 128

    def __init__(self, fake: FakeLLMServer, port: int) -> None:
        self.fake = fake
        super().__init__((HOST, port), _Handler)
        self._wake_reader, self._wake_writer = socket.socketpair()

    def serve_until_woken(self) -> None:
        """Accept connections until wake(). Not serve_forever(): that polls for its stop
        flag every poll interval, and each of hundreds of tests would wait for it."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                ready = [key.fileobj for key, _ in selector.select()]
                if self._wake_reader in ready:
                    return
                self.handle_request()

    def wake(self) -> None:
        self._wake_writer.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on DNS; the
        # name only feeds CGI variables, so skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or hang up mid-reply are what this server is for; a
        # traceback for each would bury the test output. Anything else is a bug: show it.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the httpx-based clients expect
    disable_nagle_algorithm = True
    # A buffered writer sends headers and body in one segment; streams flush per chunk.
    wbufsize = 1 << 16
    server_version = "FakeLLM/1.0"
    fake: FakeLLMServer
    record: _Record

    def setup(self) -> None:
        super().setup()
        self.fake = cast(_HTTPServer, self.server).fake
        self.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Say nothing: benchmarks send thousands of requests, tests read their own output."""

    # Routing --------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self._begin()
        dialect = _dialect_for(path)
        if not self._admitted(dialect):
            return
        if path == "/":
            self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif path == "/api/version":
            self._send_json(200, {"version": OLLAMA_VERSION})
        elif path == "/api/tags":
            self._send_json(
                200, {"models": [self._ollama_model(name) for name in self.fake.models]}
            )
        elif path == "/v1/models":
            self._send_json(
                200,
                {"object": "list", "data": [self._openai_model(name) for name in self.fake.models]},
            )
        else:
            self._send_error(dialect, _ApiError(404, f"no such endpoint: GET {path}"))

    def do_POST(self) -> None:
        path = self._begin()
        # Read the body before anything else so the next request on this keep-alive
        # connection starts where it should, whatever the answer to this one.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        dialect = _CHAT_PATHS.get(path)
        if dialect is not None:
            number = self.fake._next_chat_number()
            if self._admitted(dialect):
                self._chat(dialect, body, number)
            return
        dialect = _dialect_for(path)
        if self._admitted(dialect):
            self._send_error(dialect, _ApiError(404, f"no such endpoint: POST {path}"))

    def _begin(self) -> str:
        path = self.path.split("?", 1)[0]
        self.record = _Record(path)
        self.fake._record(self.record)
        return path

    def _admitted(self, dialect: _Dialect) -> bool:
        """Turn the request away, and say so, when the server is down or the key is wrong."""
        if self.fake._down.is_set():
            self.record.fault = "down"
            self._send_error(
                dialect, _ApiError(503, "the server is down", "server_error", "service_unavailable")
            )
            return False
        key = self.fake.api_key
        if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
            self._send_error(
                dialect, _ApiError(401, "Incorrect API key provided", code="invalid_api_key")
            )
            return False
        return True

    # Chat -----------------------------------------------------------------------------

    def _chat(self, dialect: _Dialect, body: bytes, number: int) -> None:
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise _BadRequestError("the body must be a JSON object")
            request = dialect.parse(payload)
        except (ValueError, _BadRequestError) as exc:  # JSONDecodeError is a ValueError
            self._send_error(dialect, _ApiError(400, str(exc)))
            return
        self.record.model, self.record.stream = request.model, request.stream
        fault = self.fake._faults.next()
        self.record.fault = fault
        if fault in ("rate_limit", "unavailable", "reset"):
            self._fail(dialect, fault)
            return
        if fault == "slow" and not self.fake._pause(self.fake.slow_seconds):
            self.close_connection = True  # stopped mid-sleep: nobody to answer
            return
        if self.fake.strict_models and request.model not in self.fake.models:
            self._send_error(dialect, self._unknown_model(dialect, request.model))
            return
        if not self.fake._pause(self.fake.latency):
            self.close_connection = True
            return
        self._answer(dialect, request, number, truncated=fault == "truncated")

    def _fail(self, dialect: _Dialect, fault: FaultKind) -> None:
        if fault == "rate_limit":
            error = _ApiError(
                429, "Rate limit reached; retry later", "rate_limit_exceeded", "rate_limit_exceeded"
            )
            self._send_error(dialect, error, {"Retry-After": self.fake.retry_after})
        elif fault == "unavailable":
            self._send_error(
                dialect,
                _ApiError(503, "the server is overloaded", "server_error", "service_unavailable"),
            )
        else:
            self._reset_connection()

    def _answer(
        self, dialect: _Dialect, request: _ChatRequest, number: int, *, truncated: bool
    ) -> None:
        try:
            text = self.fake.answer(request.model, request.messages)
        except Exception as exc:  # a test's answer callable failed: say so rather than hang up
            self._send_error(dialect, _ApiError(500, f"answer() raised {exc!r}", "server_error"))
            return
        done = _complete(text, request)
        if not request.stream:
            reply = _dumps(dialect.reply(request, done, number))
            # A body cut mid-JSON with a matching Content-Length: the HTTP exchange is
            # whole, so the client fails on parsing, not on the connection.
            self._send(200, reply[: len(reply) // 2] if truncated else reply, JSON_TYPE)
            return
        frames = list(dialect.stream(request, done, number))
        if truncated:
            self._stream_cut(dialect, frames)
        else:
            self._stream(dialect, frames)

    @staticmethod
    def _unknown_model(dialect: _Dialect, model: str) -> _ApiError:
        if dialect is _OPENAI:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return _ApiError(404, message, code="model_not_found")
        return _ApiError(404, f'model "{model}" not found, try pulling it first')

    def _ollama_model(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": datetime.fromtimestamp(self.fake.created, UTC).isoformat(),
            "size": 1_321_098_329,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "1.2B",
                "quantization_level": "Q8_0",
            },
        }

    def _openai_model(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.fake.created, "owned_by": "fake"}

    # Writing --------------------------------------------------------------------------

    def _send_json(
        self, status: int, payload: object, headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, _dumps(payload), JSON_TYPE, headers)

    def _send_error(
        self, dialect: _Dialect, error: _ApiError, headers: dict[str, str] | None = None
    ) -> None:
        self._send_json(error.status, dialect.error_body(error), headers)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        # Noted before the reply goes out: a client holding its answer finds it logged.
        self.record.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, dialect: _Dialect, frames: list[bytes]) -> None:
        self._start_stream(dialect)
        for frame in frames:
            self._write_chunk(frame)
        self._write_chunk(b"")  # the zero-length chunk ends the body; the connection lives on

    def _stream_cut(self, dialect: _Dialect, frames: list[bytes]) -> None:
        """Send half the stream, then half a frame, then hang up: a server dying mid-answer."""
        keep = len(frames) // 2
        self._start_stream(dialect)
        for frame in frames[:keep]:
            self._write_chunk(frame)
        self._write_chunk(frames[keep][: len(frames[keep]) // 2])
        self.close_connection = True  # no final chunk: the client sees the body end early

    def _start_stream(self, dialect: _Dialect) -> None:
        # Chunked encoding rather than Connection: close keeps the connection reusable, so
        # a benchmark of streamed requests doesn't measure TCP handshakes.
        self.record.status = 200
        self.send_response(200)
        self.send_header("Content-Type", dialect.stream_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _reset_connection(self) -> None:
        """Drop the connection with a TCP reset, as a crashed server or a proxy does."""
        self.close_connection = True
        # SO_LINGER (on, 0 s) turns close() into an RST instead of a FIN. The socket must
        # really close here: socket.close() waits for rfile and wfile to close, and the
        # socketserver would shutdown() first, which sends the FIN we want to avoid.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        os.close(self.connection.detach())


def main(argv: Sequence[str] | None = None) -> None:
    """Run the server by hand, e.g. to point a real client or the orchestrator at it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=11434, help="0 picks a free port")
    parser.add_argument(
        "--model", action="append", dest="models", help="repeat for several; default any"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added to each chat reply"
    )
    parser.add_argument("--api-key", help="demand Authorization: Bearer KEY")
    args = parser.parse_args(argv)
    with FakeLLMServer(
        args.models, latency=args.latency, port=args.port, api_key=args.api_key
    ) as server:
        sys.stdout.write(
            f"fake LLM server on {server.url} (OpenAI base URL {server.openai_base_url})\n"
        )
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the way to stop it
            threading.Event().wait()


if __name__ == "__main__":
    main()
