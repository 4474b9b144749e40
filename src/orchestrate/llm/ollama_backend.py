"""``ollama:MODEL``: a model served by Ollama, through the official ``ollama`` client.

Answers are streamed, so the live table shows tokens as they come and a cancelled task
stops reading at once. The weights' digest from ``/api/tags`` goes into the backend's
identity, so re-pulling a model under the same tag does not serve stale cached answers.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import ollama

from orchestrate.errors import BackendError, BackendRefusedError
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


class OllamaBackend:
    """Chat completions from one model of an Ollama server."""

    def __init__(self, tag: str, connections: Connections) -> None:
        self.tag = tag
        self.host = connections.ollama_host
        self._connections = connections
        self._retry_after = threading.local()  # the last response's hint, per calling thread
        self._client = ollama.Client(
            host=self.host,
            timeout=httpx.Timeout(
                connections.timeout_seconds, connect=connections.connect_timeout_seconds
            ),
            event_hooks={"response": [self._remember_retry_after]},
        )
        self._tokens = TokenCounter(tag, connections.tokenizer_file)
        self._digest = ""

    @property
    def name(self) -> str:
        return f"ollama:{self.tag}"

    @property
    def identity(self) -> str:
        return f"{self.name}@{self._digest or self.host}"

    @property
    def context_window(self) -> int:
        return self._connections.context_window

    def prepare(self) -> None:
        """Check the server answers and has the model; learn the weights' digest."""
        installed = {model.model: model.digest or "" for model in self.list_models()}
        found = installed.get(self.tag, installed.get(f"{self.tag}:latest"))
        if found is None:
            raise BackendRefusedError(
                f"{self.name}: {self.host} has no model '{self.tag}'; "
                f"run `ollama pull {self.tag}` (it has: {', '.join(installed) or 'none'})"
            )
        self._digest = found

    def list_models(self) -> list[Any]:
        """The server's installed models (``/api/tags``)."""
        return list(self._call(lambda: self._client.list()).models)

    def complete(self, request: CompletionRequest) -> Completion:
        watch = StreamWatch(request, self._connections.timeout_seconds, self.name)
        final = self._call(lambda: self._chat(request, watch))
        prompt_tokens = final.prompt_eval_count if final else None
        completion_tokens = final.eval_count if final else None
        return Completion(
            text=watch.text,
            prompt_tokens=prompt_tokens or self.count_tokens(request.messages),
            completion_tokens=completion_tokens or self._tokens.count_text(watch.text),
        )

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        return self._tokens.count_messages(messages)

    def _chat(self, request: CompletionRequest, watch: StreamWatch) -> Any:
        options: dict[str, Any] = {
            "num_predict": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.stop:
            options["stop"] = list(request.stop)
        if not self._connections.stream:
            reply = self._client.chat(self.tag, request.messages, options=options)
            watch.add(reply.message.content or "")
            return reply
        final = None
        stream: Any = self._client.chat(self.tag, request.messages, options=options, stream=True)
        try:
            for chunk in stream:
                watch.add(chunk.message.content or "")
                if chunk.done:
                    final = chunk
        finally:
            stream.close()  # a cancelled or timed-out task drops the connection now
        return final

    def _call(self, work: Any) -> Any:
        """Run one request, turning the client's failures into the engine's errors."""
        self._retry_after.value = None
        try:
            return work()
        except BackendError:
            raise
        except ollama.ResponseError as exc:
            # An error reported inside a stream has no status: the server failed mid-answer.
            status = exc.status_code if exc.status_code > 0 else 500
            raise error_for_status(
                self.name, status, str(exc.error), self._retry_after.value
            ) from None
        except httpx.TimeoutException:
            raise timeout_error(self.name, self._connections.timeout_seconds) from None
        except ConnectionError:  # the client's own, with a long advert for its download page
            raise unreachable_error(
                self.name,
                f"Ollama at {self.host}",
                ConnectionRefusedError("is `ollama serve` running?"),
            ) from None
        except httpx.RemoteProtocolError as exc:  # a reply that ended mid-message
            raise cut_short_error(self.name, exc) from None
        except httpx.TransportError as exc:
            raise unreachable_error(self.name, f"Ollama at {self.host}", exc) from None
        except (json.JSONDecodeError, ValueError) as exc:  # truncated or malformed replies
            raise garbled_error(self.name, exc) from None

    def _remember_retry_after(self, response: httpx.Response) -> None:
        self._retry_after.value = response.headers.get("retry-after")
