"""What the Ollama and OpenAI-compatible backends share: connection settings, streaming
bookkeeping, and the translation of HTTP failures into the engine's error kinds.

The engine retries ``TransientError`` and nothing else, so the mapping matters: a 429,
a 5xx, a timeout, a dropped connection or a garbled reply is transient; a 4xx (no such
model, a refused key, a malformed request) is the user's to fix and fails at once.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrate.errors import (
    BackendError,
    BackendRefusedError,
    BackendTimeoutError,
    BackendUnavailableError,
    MalformedReplyError,
    RateLimitedError,
    ServerError,
    TaskCancelledError,
)
from orchestrate.llm.backend import CompletionRequest

DEFAULT_CONTEXT_WINDOW = 8192


@dataclass(frozen=True)
class Connections:
    """Where the remote backends are and how long a call may take."""

    ollama_host: str = "http://127.0.0.1:11434"
    openai_base_url: str | None = None  # None: the client's default (OpenAI itself)
    openai_api_key: str | None = None
    timeout_seconds: float = 120.0  # one call, first byte to last
    connect_timeout_seconds: float = 5.0
    stream: bool = True
    tokenizer_file: Path | None = None
    context_window: int = DEFAULT_CONTEXT_WINDOW


class StreamWatch:
    """Follows one streamed answer: progress, cancellation and the call's deadline."""

    def __init__(self, request: CompletionRequest, timeout_seconds: float, model: str) -> None:
        self.request = request
        self.model = model
        self.pieces: list[str] = []
        self._timeout = timeout_seconds
        self._deadline = time.monotonic() + timeout_seconds

    def add(self, piece: str) -> None:
        """Take one streamed piece; raise if the task stopped or the call ran too long."""
        if self.request.cancel.is_set():
            raise TaskCancelledError("the task was told to stop")
        if time.monotonic() > self._deadline:
            raise BackendTimeoutError(
                f"{self.model} took longer than {self._timeout:g} s to answer"
            )
        if piece:
            self.pieces.append(piece)
            if self.request.on_progress is not None:
                self.request.on_progress(len(self.pieces))

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def error_for_status(
    model: str, status: int, message: str, retry_after: str | None = None
) -> BackendError:
    """The engine's error for an HTTP error status from a model server."""
    detail = f"{model}: {message.strip() or 'no detail'} (HTTP {status})"
    if status == 429:
        return RateLimitedError(detail, retry_after=parse_retry_after(retry_after))
    if status == 408 or status >= 500:
        return ServerError(detail, retry_after=parse_retry_after(retry_after))
    return BackendRefusedError(detail)


def timeout_error(model: str, seconds: float) -> BackendTimeoutError:
    return BackendTimeoutError(f"{model} did not answer within {seconds:g} s")


def unreachable_error(model: str, where: str, cause: BaseException) -> BackendUnavailableError:
    reason = str(cause) or type(cause).__name__
    return BackendUnavailableError(f"{model}: cannot reach {where} ({reason})")


def cut_short_error(model: str, cause: BaseException) -> MalformedReplyError:
    return MalformedReplyError(f"{model}: the server cut its reply short ({cause})")


def garbled_error(model: str, cause: BaseException) -> MalformedReplyError:
    return MalformedReplyError(f"{model}: the server sent a reply that is not valid JSON ({cause})")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
