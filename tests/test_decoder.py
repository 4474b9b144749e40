"""Tests for orchestrate.llm.decoder: our Llama forward pass against transformers'.

A tiny random Llama with grouped-query attention (4 query heads on 2 key/value heads)
(conftest's) stands in for SmolLM2; the real model is covered by the embedded tests.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import tiny_llama
from orchestrate.llm.decoder import (
    LlamaDecoder,
    TransformersDecoder,
    build_decoder,
    fp16_kernels_available,
    projection,
)

torch = pytest.importorskip("torch")
ATOL = 1e-4  # fp32 against fp32: only the summation order differs


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_llama()


def reference_logits(model: Any, tokens: list[int]) -> Any:
    """transformers' logits after each prefix of ``tokens`` past the first."""
    with torch.inference_mode():
        return model(input_ids=torch.tensor([tokens])).logits[0].float()


def test_prefill_and_steps_match_transformers(model: Any) -> None:
    tokens = [5, 17, 3, 42, 8, 9, 60, 2, 33, 71]
    decoder = LlamaDecoder(model, "fp32", max_rows=2)
    expected = reference_logits(model, tokens)

    with torch.inference_mode():
        got = [decoder.prefill(tokens[:4])]
        got += [decoder.step([token])[0] for token in tokens[4:]]

    assert torch.allclose(torch.stack(got), expected[3:], atol=ATOL)


def test_rows_of_different_lengths_decode_as_they_would_alone(model: Any) -> None:
    prompts = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22, 23, 24, 25, 26, 27, 28]]
    follow = [40, 41, 42]
    decoder = LlamaDecoder(model, "fp32", max_rows=4)

    with torch.inference_mode():
        for prompt in prompts:
            decoder.prefill(prompt)
        first = decoder.step(follow)
        second = decoder.step(follow)

    for row, prompt in enumerate(prompts):
        expected = reference_logits(model, [*prompt, follow[row], follow[row]])
        assert torch.allclose(first[row], expected[-2], atol=ATOL)
        assert torch.allclose(second[row], expected[-1], atol=ATOL)
    assert decoder.lengths == [len(p) + 2 for p in prompts]


def test_dropping_a_row_keeps_the_others_intact(model: Any) -> None:
    prompts = [[5, 6, 7], [11, 12, 13, 14, 15, 16], [20, 21]]
    decoder = LlamaDecoder(model, "fp32", max_rows=4)

    with torch.inference_mode():
        for prompt in prompts:
            decoder.prefill(prompt)
        decoder.keep([0, 2])  # the middle row finished: the last moves into its slot
        logits = decoder.step([50, 51])

    assert decoder.lengths == [4, 3]
    assert torch.allclose(logits[0], reference_logits(model, [5, 6, 7, 50])[-1], atol=ATOL)
    assert torch.allclose(logits[1], reference_logits(model, [20, 21, 51])[-1], atol=ATOL)


def test_the_cache_grows_past_its_first_allocation(model: Any) -> None:
    tokens = [(7 * i) % 90 + 3 for i in range(300)]  # more than one 256-position step
    decoder = LlamaDecoder(model, "fp32", max_rows=1)

    with torch.inference_mode():
        decoder.prefill(tokens[:250])
        got = [decoder.step([token])[0] for token in tokens[250:]]

    assert torch.allclose(torch.stack(got), reference_logits(model, tokens)[250:], atol=ATOL)


def test_an_emptied_batch_starts_afresh(model: Any) -> None:
    decoder = LlamaDecoder(model, "fp32", max_rows=1)

    with torch.inference_mode():
        decoder.prefill([1, 2, 3])
        decoder.keep([])
        logits = decoder.prefill([9, 8])

    assert decoder.lengths == [2]
    assert torch.allclose(logits, reference_logits(model, [9, 8])[-1], atol=ATOL)


def test_limits_are_clear_errors(model: Any) -> None:
    decoder = LlamaDecoder(model, "fp32", max_rows=1)

    with torch.inference_mode():
        with pytest.raises(ValueError, match="exceed the model's 1024"):
            decoder.prefill([1] * 1025)
        decoder.prefill([1, 2])
        with pytest.raises(RuntimeError, match="batch is full"):
            decoder.prefill([3])
        with pytest.raises(ValueError, match="2 tokens for 1 rows"):
            decoder.step([1, 2])


@pytest.mark.parametrize(
    "precision",
    [
        pytest.param(
            "fp16",
            marks=pytest.mark.skipif(not fp16_kernels_available(), reason="no fbgemm"),
        ),
        "bf16",
        pytest.param(
            "int8",
            marks=pytest.mark.skipif(not fp16_kernels_available(), reason="no fbgemm"),
        ),
    ],
)
def test_lower_precisions_stay_close_to_fp32(precision: str) -> None:
    torch.manual_seed(1)
    weight = torch.randn(256, 128)
    inputs = torch.randn(3, 128)
    exact = inputs @ weight.T

    with torch.inference_mode():
        got = projection(weight, precision)(inputs)  # type: ignore[arg-type]

    error = float((got - exact).norm() / exact.norm())
    assert got.dtype == torch.float32 and got.shape == exact.shape
    assert error < {"fp16": 1e-3, "bf16": 1e-2, "int8": 5e-2}[precision]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_cpu_only_precisions_fall_back_off_the_cpu(precision: str) -> None:
    # The meta device stands in for a GPU: shapes and dtypes, no kernels.
    weight, inputs = torch.randn(256, 128, device="meta"), torch.randn(3, 128, device="meta")

    got = projection(weight, precision)(inputs)  # type: ignore[arg-type]

    assert (got.device.type, got.dtype, tuple(got.shape)) == ("meta", torch.float32, (3, 256))


def test_other_architectures_go_through_transformers() -> None:
    with_bias = tiny_llama(attention_bias=True)
    assert isinstance(build_decoder(with_bias, "fp32", max_rows=2), TransformersDecoder)
    assert isinstance(build_decoder(tiny_llama(), "fp32", max_rows=2), LlamaDecoder)
