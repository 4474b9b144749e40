"""Counting tokens for a remote model when its server does not report usage.

Servers usually report what a call used, and that count is the one recorded. When one
does not (an Ollama prompt served from its cache, an OpenAI-compatible server that
ignores ``stream_options``), the count comes from the model's own tokenizer: a
``tokenizer.json`` named in settings, or the one in the local Hugging Face cache for a
model named like a Hub repository (``Qwen/Qwen2.5-7B-Instruct`` on vLLM). With neither,
the count is estimated at four characters a token, the usual rate for English and code.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4  # role markers and separators each chat template adds per message


class TokenCounter:
    """Counts the tokens of text with one model's tokenizer, loaded on first use."""

    def __init__(self, model: str, tokenizer_file: Path | None = None) -> None:
        self.model = model
        self._tokenizer_file = tokenizer_file
        self._tokenizer: Any = None
        self._resolved = False
        self._lock = threading.Lock()

    @property
    def exact(self) -> bool:
        """False when counts are estimates from the text's length."""
        return self._load() is not None

    def count_text(self, text: str) -> int:
        tokenizer = self._load()
        if tokenizer is None:
            return math.ceil(len(text) / CHARS_PER_TOKEN)
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    def count_messages(self, messages: list[dict[str, str]]) -> int:
        return sum(self.count_text(m["content"]) + MESSAGE_OVERHEAD for m in messages)

    def _load(self) -> Any:
        with self._lock:
            if not self._resolved:
                self._resolved = True
                path = self._tokenizer_file or _cached_hub_tokenizer(self.model)
                self._tokenizer = _read_tokenizer(path) if path else None
            return self._tokenizer


def _cached_hub_tokenizer(model: str) -> Path | None:
    """The tokenizer of a Hub repository named ``model``, if it is already downloaded."""
    if model.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id=model, filename="tokenizer.json")
    return Path(found) if isinstance(found, str) else None


def _read_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # a wrong path must not stop a run: estimates still work
        logger.warning("cannot read the tokenizer %s (%s); estimating token counts", path, exc)
        return None
