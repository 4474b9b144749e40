"""The embedded model on llama.cpp, when the optional ``llama-cpp-python`` is installed.

llama.cpp runs a GGUF file as it is (no conversion, quantised kernels) and answers a
single request about twice as fast as our decoder on a CPU (it does not batch), but
``pip install llama-cpp-python`` compiles it (5-10 minutes on two cores), so it is the
``llama`` extra, never a default dependency. ``embedded.choose_engine`` picks it for
GGUF models when the package can be imported; this module imports it only when a
model is loaded.

Prompts are written with the GGUF's own chat template, so that a file task's answer
can be started for the model (``embedded.answer_prefill``) as on the transformers
engine: without it, 2 of 6 test builds yielded a file instead of all of them.

A ``Llama`` object is not safe to use from two threads, so one lock serialises its
use; progress and cancellation are checked between streamed tokens. Loading and
generating run on the compute thread (``compute.py``): llama.cpp's CPU kernels use an
OpenMP team per calling thread, like torch's, and a second team on two cores made each
answer ~1.8x slower (61 against 107 tokens/s).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from orchestrate.errors import BackendError, ModelNotFoundError, TaskCancelledError
from orchestrate.llm.backend import ChatMessage, Completion, CompletionRequest
from orchestrate.llm.compute import compute_thread
from orchestrate.llm.embedded import answer_prefill, kv_cache_bytes
from orchestrate.llm.fitting import fit_messages

if TYPE_CHECKING:
    from orchestrate.safety.gpu import GpuLeaseManager

REPETITION_PENALTY = 1.1  # the same as the transformers engine
# For a GGUF without a chat template: ChatML, which SmolLM2 and many small models use.
_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class LlamaCppModel:
    """One GGUF model loaded by llama.cpp, shared by every task of the process."""

    _instances: ClassVar[dict[Path, LlamaCppModel]] = {}
    _instances_lock = threading.Lock()

    def __init__(self, llama: Any, context_window: int, lease_mib: int) -> None:
        from llama_cpp.llama_chat_format import (  # type: ignore[import-not-found,unused-ignore]
            Jinja2ChatFormatter,
        )

        self._llama = llama
        self._format = Jinja2ChatFormatter(
            template=llama.metadata.get("tokenizer.chat_template") or _CHATML,
            eos_token=_token_text(llama, llama.token_eos()),
            bos_token=_token_text(llama, llama.token_bos()),
        )
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
            threads = decoding_threads()
            llama = compute_thread.call(
                lambda: Llama(
                    model_path=str(path),
                    n_ctx=context_window,
                    n_threads=threads,
                    n_threads_batch=threads,
                    verbose=False,
                )
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelNotFoundError(f"llama.cpp cannot load {path}: {exc}") from exc
        window = min(context_window, int(llama.n_ctx()))
        model = cls(llama, window, _lease_mib(path, llama.metadata, window))
        model.load_seconds = time.perf_counter() - started
        return model

    load_seconds = 0.0

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        prompt, _ = self._prompt(messages)
        with self._lock:
            return len(self._llama.tokenize(prompt.encode(), add_bos=False, special=True))

    def _prompt(self, messages: list[ChatMessage]) -> tuple[str, list[str]]:
        """The chat as the model's template writes it, and the template's stop strings."""
        formatted = self._format(messages=messages)  # type: ignore[arg-type,unused-ignore]
        stops = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop]
        return formatted.prompt, [stop for stop in stops if stop]

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
        prompt, template_stops = self._prompt(messages)
        prefill = answer_prefill(messages)
        with self._lock:
            prompt_tokens = len(
                self._llama.tokenize((prompt + prefill).encode(), add_bos=False, special=True)
            )
        lease = (
            leases.lease(f"{holder} for {request.agent}", self.device, self.lease_mib)
            if leases is not None
            else contextlib.nullcontext()
        )
        stops = [*request.stop, *template_stops]
        with lease:
            text, tokens = compute_thread.call(
                lambda: self._stream(request, prompt + prefill, stops, max_new)
            )
        if request.cancel.is_set():
            raise TaskCancelledError("cancelled during generation")
        return Completion(prefill + text, prompt_tokens, tokens)

    def _stream(
        self, request: CompletionRequest, prompt: str, stops: list[str], max_new: int
    ) -> tuple[str, int]:
        """Generate on this thread: the answer's text and how many tokens it took."""
        pieces: list[str] = []
        tokens = 0
        with self._lock:
            try:
                stream = self._llama.create_completion(
                    prompt=prompt,
                    max_tokens=max_new,
                    temperature=request.temperature,
                    stop=stops or None,
                    repeat_penalty=REPETITION_PENALTY,
                    stream=True,
                )
                for chunk in stream:
                    choice = chunk["choices"][0]
                    pieces.append(choice["text"] or "")
                    if choice["finish_reason"] is not None:  # the closing chunk: no token
                        break
                    tokens += 1
                    if request.on_progress is not None:
                        request.on_progress(tokens)
                    if request.cancel.is_set():
                        break
            except (RuntimeError, ValueError) as exc:
                raise BackendError(f"llama.cpp failed to generate: {exc}") from exc
        return "".join(pieces), tokens


def decoding_threads() -> int:
    """One thread per physical core this process may run on.

    llama-cpp-python's default, half the logical CPUs, assumes two hyperthreads a core:
    on a 2-core machine without them it uses one core (71 tokens/s against 98 with two).
    """
    import psutil

    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
    return max(1, min(physical, allowed))


def _token_text(llama: Any, token: int) -> str:
    return "" if token < 0 else llama.detokenize([token], special=True).decode(errors="ignore")


def _lease_mib(path: Path, metadata: dict[str, str], window: int) -> int:
    """The file's weights and an f16 KV cache (llama.cpp's default) full to the window,
    plus a quarter for the compute buffers."""
    architecture = metadata.get("general.architecture", "llama")

    def number(key: str, default: int) -> int:
        return int(metadata.get(f"{architecture}.{key}", default))

    heads = number("attention.head_count", 1)
    cache = kv_cache_bytes(
        layers=number("block_count", 0),
        kv_heads=number("attention.head_count_kv", heads),
        head_dim=number("embedding_length", 0) // max(heads, 1),
        positions=window,
        value_bytes=2,
    )
    return max(1, int((path.stat().st_size + cache) * 1.25) // 1024**2)
