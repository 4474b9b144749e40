"""Decoders: the model's forward pass over the rows of a batch, for the batching engine.

The engine (``batching.BatchingEngine``) decides which requests run and picks their
tokens; a decoder owns the weights and the KV cache. Rows keep their order: a new row
is added at the end by ``prefill``, ``step`` decodes one token for every row, and
``keep`` drops finished rows.

``LlamaDecoder`` is our own Llama forward pass, used for every model of that family
(SmolLM2 among them). On a 2-core CPU, decoding one token of a 135M model takes tens of
milliseconds, and in transformers' forward a third of that is per-call overhead: mask
and cache bookkeeping, unfused projections. Ours fuses the q/k/v and gate/up
projections, writes into a preallocated (static) KV cache, and applies rotary
embeddings in one expression. Projections read their weights in the chosen precision
(``WeightPrecision``); the rest (norms, attention, the residual stream, the cache) stays in
fp32. Attention is fp32 because the CPU's bf16 attention is five times slower.

``TransformersDecoder`` runs any other causal LM through transformers with a growing
cache; the Llama forward is an optimisation, never a requirement.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from torch import Tensor

WeightPrecision = Literal["fp32", "fp16", "bf16", "int8"]
_CACHE_STEP = 256  # the KV cache grows in steps of this many positions


class Decoder(Protocol):
    """A model's forward pass over a batch whose rows are separate sequences."""

    vocab_size: int
    device: str

    def prefill(self, prompt_ids: list[int]) -> Tensor:
        """Add a row for the prompt; return the logits of its next token, ``[vocab]``."""
        ...

    def step(self, tokens: list[int]) -> Tensor:
        """Feed one token to every row; return the next logits, ``[rows, vocab]``."""
        ...

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (ascending), in this order; ``[]`` empties the batch."""
        ...


def build_decoder(model: Any, precision: WeightPrecision, *, max_rows: int) -> Decoder:
    """Our Llama forward pass when the model is a plain Llama, else transformers'."""
    if LlamaDecoder.supports(model):
        return LlamaDecoder(model, precision, max_rows=max_rows)
    return TransformersDecoder(with_precision(model, precision))


def fp16_kernels_available() -> bool:
    """fbgemm's fp16-weight matrix products: x86 CPUs with AVX2."""
    import torch

    return "fbgemm" in torch.backends.quantized.supported_engines


Projection = Callable[["Tensor"], "Tensor"]


def projection(weight: Tensor, precision: WeightPrecision) -> Projection:
    """``x @ weight.T`` for fp32 ``x`` of shape ``[tokens, in]``, weights in ``precision``.

    fp16 uses fbgemm's packed fp16 weights with fp32 arithmetic: half the bytes of fp32
    to read per token (decoding is bound by reading weights), and unlike bf16 matrix
    products on a CPU without native bf16, a batch of rows costs about what one does.
    int8 is dynamic quantisation (weights per channel, activations per call). Both are
    CPU kernels: on a GPU, fp16 is its native half precision and int8 falls back to bf16.
    """
    import torch
    import torch.nn.functional as functional

    weight = weight.detach().float().contiguous()
    on_cpu = weight.device.type == "cpu"
    if precision == "fp16" and on_cpu:
        packed = torch.ops.quantized.linear_prepack_fp16(weight, None)
        return lambda x: torch.ops.quantized.linear_dynamic_fp16(x, packed)
    if precision == "int8" and on_cpu:
        return _int8_linear(weight)
    if precision == "fp32":
        return lambda x: functional.linear(x, weight)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    low = weight.to(dtype)
    return lambda x: functional.linear(x.to(dtype), low).float()


def _int8_linear(weight: Tensor) -> Projection:
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    # The observers that pick the scales cannot read inference tensors.
    with torch.inference_mode(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's eager quantisation is deprecated
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        linear.weight.data = weight.clone()
        linear.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig  # type: ignore[assignment]
        quantised = DynamicLinear.from_float(linear)  # type: ignore[no-untyped-call]
    return quantised  # type: ignore[no-any-return]


class _Layer:
    """One decoder layer's weights: fused projections and fp32 norm scales."""

    def __init__(self, layer: Any, precision: WeightPrecision) -> None:
        import torch

        attention, mlp = layer.self_attn, layer.mlp
        self.input_norm = layer.input_layernorm.weight.detach().float()
        self.post_norm = layer.post_attention_layernorm.weight.detach().float()
        qkv = [attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]
        self.qkv = projection(torch.cat(qkv), precision)
        self.out = projection(attention.o_proj.weight, precision)
        self.gate_up = projection(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), precision)
        self.down = projection(mlp.down_proj.weight, precision)


@dataclass(frozen=True)
class _Placement:
    """Where this call's tokens go: cache slot (row) and position of each, and the
    rotary factors of those positions, shared by every layer."""

    slots: Tensor
    positions: Tensor
    cos: Tensor
    sin: Tensor


class LlamaDecoder:
    """The Llama forward pass with fused projections and a static, slotted KV cache.

    Row ``i`` of the batch owns slot ``i`` of the cache and its first ``lengths[i]``
    positions; positions past a row's length are hidden from it by the attention mask,
    so a row decodes exactly as it would alone (up to the matrix kernels' summation
    order, which can differ with the number of rows).
    """

    @staticmethod
    def supports(model: Any) -> bool:
        config = model.config
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
        return (
            config.model_type == "llama"
            and config.hidden_act == "silu"
            and not getattr(config, "attention_bias", False)
            and not getattr(config, "mlp_bias", False)
            and getattr(config, "pretraining_tp", 1) == 1
            and (rope or {}).get("rope_type", "default") == "default"
            and all(type(m).__name__ in _PLAIN_MODULES for m in model.modules())
        )

    def __init__(self, model: Any, precision: WeightPrecision, *, max_rows: int) -> None:
        import torch

        config = model.config
        self.device = str(model.device)
        self.vocab_size = int(config.vocab_size)
        self.max_rows = max_rows
        self._heads = int(config.num_attention_heads)
        self._kv_heads = int(config.num_key_value_heads)
        self._head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self._heads)
        self._eps = float(config.rms_norm_eps)
        self._window = int(config.max_position_embeddings)
        inner = model.model
        with torch.inference_mode():
            self._layers = [_Layer(layer, precision) for layer in inner.layers]
            self._final_norm = inner.norm.weight.detach().float()
            self._embeddings = self._embedding_table(inner.embed_tokens.weight, precision)
            self._head = projection(model.lm_head.weight, precision)
            self._cos, self._sin = self._rotary_tables(config)
        self._keys: list[Tensor] = []
        self._values: list[Tensor] = []
        self._capacity = 0
        self.lengths: list[int] = []

    def prefill(self, prompt_ids: list[int]) -> Tensor:
        import torch

        if len(self.lengths) >= self.max_rows:
            raise RuntimeError(f"the batch is full ({self.max_rows} rows)")
        if not prompt_ids:
            raise ValueError("an empty prompt")
        self._reserve(len(prompt_ids))
        row, count = len(self.lengths), len(prompt_ids)
        ids = torch.tensor(prompt_ids, dtype=torch.long, device=self.device)
        slots = torch.full((count,), row, dtype=torch.long, device=self.device)
        where = self._placement(slots, torch.arange(count, device=self.device))
        hidden = self._embed(ids)
        for index, layer in enumerate(self._layers):
            queries = self._attention_inputs(hidden, layer, index, where)
            keys = self._keys[index][row : row + 1, :, :count]
            values = self._values[index][row : row + 1, :, :count]
            attended = self._attend(queries.transpose(0, 1).unsqueeze(0), keys, values, None)
            hidden = self._finish_layer(hidden, attended[0].transpose(0, 1), layer)
        self.lengths.append(count)
        return self._logits(hidden[-1:])[0]

    def step(self, tokens: list[int]) -> Tensor:
        import torch

        if len(tokens) != len(self.lengths):
            raise ValueError(f"{len(tokens)} tokens for {len(self.lengths)} rows")
        self._reserve(max(self.lengths) + 1)
        rows = len(tokens)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        positions = torch.tensor(self.lengths, dtype=torch.long, device=self.device)
        width = max(self.lengths) + 1
        mask = None
        if min(self.lengths) != max(self.lengths):
            visible = torch.arange(width, device=self.device).unsqueeze(0) <= positions[:, None]
            mask = visible[:, None, None, :]
        slots = torch.arange(rows, device=self.device)
        where = self._placement(slots, positions)
        hidden = self._embed(ids)
        for index, layer in enumerate(self._layers):
            queries = self._attention_inputs(hidden, layer, index, where)
            keys = self._keys[index][:rows, :, :width]
            values = self._values[index][:rows, :, :width]
            attended = self._attend(queries.unsqueeze(2), keys, values, mask)
            hidden = self._finish_layer(hidden, attended[:, :, 0], layer)
        self.lengths = [length + 1 for length in self.lengths]
        return self._logits(hidden)

    def keep(self, rows: list[int]) -> None:
        if not rows:
            self._keys, self._values, self._capacity = [], [], 0  # memory back until needed
            self.lengths = []
            return
        for target, source in enumerate(rows):
            if source != target:  # rows ascend, so a slot is read before it is overwritten
                length = self.lengths[source]
                for cache in (*self._keys, *self._values):
                    cache[target, :, :length] = cache[source, :, :length]
        self.lengths = [self.lengths[row] for row in rows]

    # The forward pass, in pieces shared by prefill (one row, many tokens) and step
    # (many rows, one token each). ``hidden`` is [tokens, hidden_size], fp32.

    def _embed(self, ids: Tensor) -> Tensor:
        import torch.nn.functional as functional

        return functional.embedding(ids, self._embeddings).float()

    def _placement(self, slots: Tensor, positions: Tensor) -> _Placement:
        cos, sin = self._cos[positions].unsqueeze(1), self._sin[positions].unsqueeze(1)
        return _Placement(slots, positions, cos, sin)

    def _attention_inputs(
        self, hidden: Tensor, layer: _Layer, index: int, where: _Placement
    ) -> Tensor:
        """Project, rotate, and store this layer's keys and values; return the queries
        ``[tokens, heads, head_dim]``."""
        import torch

        tokens, heads, kv_heads, dim = hidden.shape[0], self._heads, self._kv_heads, self._head_dim
        qkv = layer.qkv(self._norm(hidden, layer.input_norm))
        rotated = qkv[:, : (heads + kv_heads) * dim].view(tokens, heads + kv_heads, dim)
        rotated = torch.addcmul(rotated * where.cos, rotated.roll(dim // 2, -1), where.sin)
        values = qkv[:, (heads + kv_heads) * dim :].view(tokens, kv_heads, dim)
        self._keys[index][where.slots, :, where.positions] = rotated[:, heads:]
        self._values[index][where.slots, :, where.positions] = values
        return rotated[:, :heads]

    def _attend(self, queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        import torch.nn.functional as functional

        return functional.scaled_dot_product_attention(
            queries,
            keys,
            values,
            attn_mask=mask,
            is_causal=mask is None and queries.shape[2] > 1,
            enable_gqa=True,
        )

    def _finish_layer(self, hidden: Tensor, attended: Tensor, layer: _Layer) -> Tensor:
        """The output projection, the MLP and both residual additions."""
        import torch.nn.functional as functional

        hidden = hidden + layer.out(attended.reshape(hidden.shape[0], -1))
        gate, up = layer.gate_up(self._norm(hidden, layer.post_norm)).chunk(2, dim=-1)
        return hidden + layer.down(functional.silu(gate) * up)

    def _logits(self, hidden: Tensor) -> Tensor:
        return self._head(self._norm(hidden, self._final_norm))

    def _norm(self, hidden: Tensor, scale: Tensor) -> Tensor:
        import torch.nn.functional as functional

        return functional.rms_norm(hidden, (hidden.shape[-1],), scale, self._eps)

    def _reserve(self, positions: int) -> None:
        """Grow every layer's cache to hold ``positions``, keeping what it holds."""
        import torch

        if positions <= self._capacity:
            return
        if positions > self._window:
            raise ValueError(f"{positions} positions exceed the model's {self._window}")
        wanted = min(self._window, max(positions, 2 * self._capacity))
        capacity = -(-wanted // _CACHE_STEP) * _CACHE_STEP
        shape = (self.max_rows, self._kv_heads, capacity, self._head_dim)
        grown = []
        for old in (*self._keys, *self._values) or [None] * (2 * len(self._layers)):
            new = torch.zeros(shape, dtype=torch.float32, device=self.device)
            if old is not None:
                new[:, :, : self._capacity] = old
            grown.append(new)
        half = len(self._layers)
        self._keys, self._values, self._capacity = grown[:half], grown[half:], capacity

    def _embedding_table(self, weight: Tensor, precision: WeightPrecision) -> Tensor:
        """The token embeddings: fp32 at fp32, else half precision (it is read a few rows
        at a time, so only its memory matters)."""
        import torch

        if precision == "fp32":
            return weight.detach().float()
        return weight.detach().to(torch.float16 if self.device == "cpu" else torch.bfloat16)

    def _rotary_tables(self, config: Any) -> tuple[Tensor, Tensor]:
        """cos and signed sin per position, so that rotation is ``x*cos + roll(x)*sin``."""
        import torch

        parameters = getattr(config, "rope_parameters", None) or {}
        theta = float(parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        dim = self._head_dim
        inverse = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        angles = torch.outer(torch.arange(self._window, dtype=torch.float32), inverse)
        cos = torch.cat([angles, angles], dim=-1).cos()
        sin = torch.cat([-angles.sin(), angles.sin()], dim=-1)
        return cos.to(self.device), sin.to(self.device)


_PLAIN_MODULES = frozenset(
    {
        "LlamaForCausalLM",
        "LlamaModel",
        "LlamaDecoderLayer",
        "LlamaAttention",
        "LlamaMLP",
        "LlamaRMSNorm",
        "LlamaRotaryEmbedding",
        "Linear",
        "Embedding",
        "ModuleList",
        "SiLU",
        "SiLUActivation",
    }
)


class TransformersDecoder:
    """Any causal LM through transformers: rows left-padded to a common cache length."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.vocab_size = int(model.config.vocab_size)
        self.device = str(getattr(model, "device", "cpu"))
        self._cache: Any = None
        self.lengths: list[int] = []

    def prefill(self, prompt_ids: list[int]) -> Tensor:
        import torch
        from transformers import DynamicCache

        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        cache = DynamicCache()
        output = self._model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=torch.arange(ids.shape[1], device=self.device).unsqueeze(0),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._merge(cache)
        self.lengths.append(len(prompt_ids))
        logits: Tensor = output.logits[0, -1].float()
        return logits

    def step(self, tokens: list[int]) -> Tensor:
        import torch

        width = self._cache.get_seq_length()
        mask = torch.zeros((len(tokens), width + 1), dtype=torch.long, device=self.device)
        for index, length in enumerate(self.lengths):
            mask[index, width - length :] = 1
        output = self._model(
            input_ids=self._column(tokens),
            attention_mask=mask,
            position_ids=self._column(self.lengths),
            cache=self._cache,  # grown in place by one column
            use_cache=True,
        )
        self.lengths = [length + 1 for length in self.lengths]
        logits: Tensor = output.logits[:, -1, :].float()
        return logits

    def keep(self, rows: list[int]) -> None:
        import torch

        self.lengths = [self.lengths[row] for row in rows]
        if not rows:
            self._cache = None
            return
        selected = torch.tensor(rows, dtype=torch.long, device=self.device)
        trim = self._cache.get_seq_length() - max(self.lengths)
        for layer in self._cache.layers:
            layer.keys = layer.keys[selected, :, trim:, :]
            layer.values = layer.values[selected, :, trim:, :]

    def _merge(self, cache: Any) -> None:
        """Stack a new row's cache onto the batch's, left-padding the shorter one."""
        import torch
        import torch.nn.functional as functional

        if self._cache is None:
            self._cache = cache
            return
        width, mine = self._cache.get_seq_length(), cache.get_seq_length()
        for batch_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            for name in ("keys", "values"):
                old, new = getattr(batch_layer, name), getattr(new_layer, name)
                if mine < width:
                    new = functional.pad(new, (0, 0, width - mine, 0))
                elif width < mine:
                    old = functional.pad(old, (0, 0, mine - width, 0))
                setattr(batch_layer, name, torch.cat([old, new], dim=0))

    def _column(self, values: list[int]) -> Tensor:
        import torch

        return torch.tensor(values, dtype=torch.long, device=self.device).unsqueeze(1)


def with_precision(model: Any, precision: WeightPrecision) -> Any:
    """A transformers model with its Linear weights in ``precision`` (on its device).

    On a CPU fp16 and int8 are fbgemm's dynamic quantisation; on a GPU fp16 is native
    half precision and int8 falls back to bf16, as in ``projection``.
    """
    import torch

    device = str(model.device)
    if precision in ("fp16", "int8") and device == "cpu":
        qconfig = (
            torch.ao.quantization.float16_dynamic_qconfig
            if precision == "fp16"
            else torch.ao.quantization.per_channel_dynamic_qconfig
        )
        with warnings.catch_warnings():  # torch.ao's eager quantisation is deprecated
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                model, {torch.nn.Linear: qconfig}, inplace=False
            )
    dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(precision, torch.bfloat16)
    return model.to(dtype=dtype)
