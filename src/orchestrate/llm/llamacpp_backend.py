"""The embedded model on llama.cpp, when the optional ``llama-cpp-python`` is installed.

llama.cpp runs a GGUF file as it is (no conversion, quantised kernels) and is about
three times faster than transformers on a CPU, but ``pip install llama-cpp-python``
compiles it (~10 minutes on two cores), so it is the ``llama`` extra, never a default
dependency. ``embedded.choose_engine`` picks it for GGUF models when the package can
be imported; this module imports it only when a model is loaded.

A ``Llama`` object is not safe to use from two threads, so one lock serialises its
generations; progress and cancellation are checked between streamed tokens.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from orchestrate.errors import BackendError, ModelNotFoundError, TaskCancelledError
from orchestrate.llm.backend import ChatMessage, Completion, CompletionRequest
from orchestrate.llm.fitting import fit_messages

if TYPE_CHECKING:
    from orchestrate.safety.gpu import GpuLeaseManager

REPETITION_PENALTY = 1.1  # the same as the transformers engine


class LlamaCppModel:
    """One GGUF model loaded by llama.cpp, shared by every task of the process."""

    _instances: ClassVar[dict[Path, LlamaCppModel]] = {}
    _instances_lock = threading.Lock()

    def __init__(self, llama: Any, context_window: int, lease_mib: int) -> None:
        self._llama = llama
        self._context_window = context_window
        self.lease_mib = lease_mib
        self.device = "cpu"
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, path: Path, context_window: int) -> LlamaCppModel:
        with cls._instances_lock:
            key = path.resolve()
            if key not in cls._instances:
                cls._instances[key] = cls.load(key, context_window)
            return cls._instances[key]

    @classmethod
    def load(cls, path: Path, context_window: int) -> LlamaCppModel:
        try:
            from llama_cpp import Llama  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:  # choose_engine checked, but be clear if it vanished
            raise ModelNotFoundError(
                "llama-cpp-python is not installed: pip install 'unified-orchestrator[llama]'"
            ) from exc
        started = time.perf_counter()
        try:
            llama = Llama(model_path=str(path), n_ctx=context_window, verbose=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelNotFoundError(f"llama.cpp cannot load {path}: {exc}") from exc
        window = min(context_window, int(llama.n_ctx()))
        lease = max(1, int(path.stat().st_size * 1.25) // 1024**2)
        model = cls(llama, window, lease)
        model.load_seconds = time.perf_counter() - started
        return model

    load_seconds = 0.0

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        with self._lock:
            return len(self._llama.tokenize(text.encode(), add_bos=True, special=True))

    def generate(
        self,
        request: CompletionRequest,
        *,
        leases: GpuLeaseManager | None = None,
        holder: str = "embedded",
    ) -> Completion:
        if request.cancel.is_set():
            raise TaskCancelledError("cancelled before generation started")
        max_new = min(request.max_tokens, self._context_window // 2)
        messages = fit_messages(request.messages, self.count_tokens, self._context_window - max_new)
        lease = (
            leases.lease(f"{holder} for {request.agent}", self.device, self.lease_mib)
            if leases is not None
            else contextlib.nullcontext()
        )
        pieces: list[str] = []
        usage: dict[str, int] = {}
        with lease, self._lock:
            try:
                stream = self._llama.create_chat_completion(
                    messages=messages,
                    max_tokens=max_new,
                    temperature=request.temperature,
                    stop=list(request.stop) or None,
                    repeat_penalty=REPETITION_PENALTY,
                    stream=True,
                )
                for count, chunk in enumerate(stream, start=1):
                    delta = chunk["choices"][0].get("delta", {})
                    pieces.append(delta.get("content") or "")
                    usage = chunk.get("usage") or usage
                    if request.on_progress is not None:
                        request.on_progress(count)
                    if request.cancel.is_set():
                        break
            except (RuntimeError, ValueError) as exc:
                raise BackendError(f"llama.cpp failed to generate: {exc}") from exc
        if request.cancel.is_set():
            raise TaskCancelledError("cancelled during generation")
        text = "".join(pieces)
        prompt_tokens = usage.get("prompt_tokens") or self.count_tokens(messages)
        completion_tokens = usage.get("completion_tokens") or max(0, len(pieces) - 1)
        return Completion(text, int(prompt_tokens), int(completion_tokens))
