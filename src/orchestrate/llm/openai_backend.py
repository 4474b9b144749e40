"""``openai:MODEL``: any OpenAI-compatible chat endpoint, through the official client.

OpenAI itself, vLLM, a llama.cpp server, LM Studio and Hugging Face endpoints all speak
``/v1/chat/completions``. The base URL and key come from settings or the environment,
never from a flag, so a key never lands in shell history or a process listing. The
client's own retries are off: retries, backoff and the circuit breaker are the engine's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai

from orchestrate.errors import BackendError
from orchestrate.llm.backend import ChatMessage, Completion, CompletionRequest
from orchestrate.llm.remote import (
    Connections,
    StreamWatch,
    cut_short_error,
    error_for_status,
    garbled_error,
    timeout_error,
    unreachable_error,
)
from orchestrate.llm.tokens import TokenCounter

# Sent when no key is configured: local servers ignore it, and the client requires one.
PLACEHOLDER_KEY = "not-needed"


class OpenAIBackend:
    """Chat completions from one model of an OpenAI-compatible server."""

    def __init__(self, model: str, connections: Connections) -> None:
        self.model = model
        self._connections = connections
        self._client = openai.OpenAI(
            base_url=connections.openai_base_url,
            api_key=connections.openai_api_key or PLACEHOLDER_KEY,
            timeout=httpx.Timeout(
                connections.timeout_seconds, connect=connections.connect_timeout_seconds
            ),
            max_retries=0,
        )
        self.base_url = str(self._client.base_url).rstrip("/")
        self._tokens = TokenCounter(model, connections.tokenizer_file)

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    @property
    def identity(self) -> str:
        return f"{self.name}@{self.base_url}"

    @property
    def context_window(self) -> int:
        return self._connections.context_window

    def prepare(self) -> None:
        """Check the endpoint answers. A model missing from its list is not an error:
        some servers list only what is loaded, and the first call will say."""
        try:
            self.list_models()
        except BackendError as exc:
            if "HTTP 404" not in str(exc):  # a server without /models still serves chats
                raise

    def list_models(self) -> list[str]:
        """The endpoint's models (``GET /models``)."""
        return [model.id for model in self._call(lambda: list(self._client.models.list()))]

    def complete(self, request: CompletionRequest) -> Completion:
        watch = StreamWatch(request, self._connections.timeout_seconds, self.name)
        usage = self._call(lambda: self._chat(request, watch))
        return Completion(
            text=watch.text,
            prompt_tokens=(usage and usage.prompt_tokens) or self.count_tokens(request.messages),
            completion_tokens=(usage and usage.completion_tokens)
            or self._tokens.count_text(watch.text),
        )

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        return self._tokens.count_messages(messages)

    def _chat(self, request: CompletionRequest, watch: StreamWatch) -> Any:
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.stop:
            arguments["stop"] = list(request.stop)
        if not self._connections.stream:
            reply = self._client.chat.completions.create(**arguments)
            watch.add(reply.choices[0].message.content or "" if reply.choices else "")
            return reply.usage
        usage = None
        stream = self._client.chat.completions.create(
            **arguments, stream=True, stream_options={"include_usage": True}
        )
        try:
            for chunk in stream:
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    watch.add(choice.delta.content or "")
        finally:
            stream.close()  # a cancelled or timed-out task drops the connection now
        return usage

    def _call(self, work: Any) -> Any:
        """Run one request, turning the client's failures into the engine's errors."""
        try:
            return work()
        except BackendError:
            raise
        except openai.APIStatusError as exc:
            retry_after = exc.response.headers.get("retry-after")
            raise error_for_status(self.name, exc.status_code, _message(exc), retry_after) from None
        except openai.APITimeoutError:
            raise timeout_error(self.name, self._connections.timeout_seconds) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            if isinstance(cause, httpx.TimeoutException):
                raise timeout_error(self.name, self._connections.timeout_seconds) from None
            raise unreachable_error(self.name, self.base_url, cause) from None
        except httpx.RemoteProtocolError as exc:  # a reply that ended mid-message
            raise cut_short_error(self.name, exc) from None
        except httpx.TransportError as exc:  # a stream cut off after it began
            raise unreachable_error(self.name, self.base_url, exc) from None
        except (json.JSONDecodeError, openai.APIResponseValidationError, ValueError) as exc:
            raise garbled_error(self.name, exc) from None


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return error.message
