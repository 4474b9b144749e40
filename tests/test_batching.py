"""Tests for orchestrate.llm.batching: concurrent requests decoded together.

A tiny random Llama (two layers, 64 wide) keeps these fast; its greedy answers are
arbitrary but deterministic, which is all batching must preserve. Every engine test
runs on both decoders: our Llama forward pass and transformers'. One test at the end
runs the real embedded model (marker ``embedded``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for
from orchestrate.errors import TaskCancelledError
from orchestrate.llm.batching import BatchingEngine, GenerationJob
from orchestrate.llm.compute import compute_thread
from orchestrate.llm.decoder import Decoder, LlamaDecoder, TransformersDecoder

torch = pytest.importorskip("torch")
EOS = 1000  # outside the vocabulary: answers run to max_new unless a test says


class CharTokenizer:
    """Token n decodes to the n-th letter of a small alphabet."""

    eos_token_id = EOS

    def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(ord("a") + token % 26) for token in tokens if token != EOS)


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


def make_decoder(kind: str, model: Any) -> Decoder:
    if kind == "llama":
        return LlamaDecoder(model, "fp32", max_rows=4)
    return TransformersDecoder(model)


def make_engine(decoder: Decoder, penalty: float = 1.1) -> BatchingEngine:
    return BatchingEngine(
        decoder,
        CharTokenizer(),
        eos=frozenset({EOS}),
        tokenizer_lock=threading.Lock(),
        repetition_penalty=penalty,
    )


@pytest.fixture(params=["llama", "transformers"])
def engine(request: pytest.FixtureRequest, tiny_model: Any) -> BatchingEngine:
    return make_engine(make_decoder(request.param, tiny_model))


PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22, 23, 24, 25, 26, 27, 28]]


def together(engine: BatchingEngine, jobs: list[GenerationJob]) -> list[Any]:
    """Run the jobs from one thread each, started at once; results or errors in order."""
    results: list[Any] = [None] * len(jobs)
    gate = threading.Barrier(len(jobs))

    def work(index: int) -> None:
        gate.wait()
        try:
            results[index] = engine.run(jobs[index])
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def alone(engine: BatchingEngine, prompt: list[int], max_new: int) -> list[int]:
    return engine.run(GenerationJob(list(prompt), max_new))


def slow_start(engine: BatchingEngine) -> Callable[[int], None]:
    """A progress callback that holds the batch a moment, so the others can join it."""

    def wait(count: int) -> None:
        if count == 1:
            threading.Event().wait(0.2)

    return wait


def test_batched_greedy_answers_equal_unbatched(engine: BatchingEngine) -> None:
    expected = [alone(engine, prompt, 12) for prompt in PROMPTS]
    engine.widest = 0

    jobs = [GenerationJob(list(p), 12, on_progress=slow_start(engine)) for p in PROMPTS]
    got = together(engine, jobs)

    assert got == expected
    assert engine.widest >= 2  # they really shared steps


def test_each_request_keeps_its_own_max_tokens(engine: BatchingEngine) -> None:
    limits = [3, 9, 16]
    expected = [alone(engine, p, n) for p, n in zip(PROMPTS, limits, strict=True)]

    jobs = [
        GenerationJob(list(p), n, on_progress=slow_start(engine))
        for p, n in zip(PROMPTS, limits, strict=True)
    ]
    got = together(engine, jobs)

    assert [len(tokens) for tokens in got] == limits
    assert got == expected


def test_a_stop_string_ends_only_its_request(engine: BatchingEngine) -> None:
    full = alone(engine, PROMPTS[0], 12)
    text = CharTokenizer().decode(full)
    stop = text[4:6]  # met after the fifth or sixth token
    others = [alone(engine, p, 12) for p in PROMPTS[1:]]

    jobs = [GenerationJob(list(PROMPTS[0]), 12, stop=(stop,), on_progress=slow_start(engine))]
    jobs += [GenerationJob(list(p), 12) for p in PROMPTS[1:]]
    got = together(engine, jobs)

    assert stop in CharTokenizer().decode(got[0])
    assert len(got[0]) < 12 and got[0] == full[: len(got[0])]
    assert got[1:] == others


def test_cancelling_one_request_does_not_disturb_the_others(engine: BatchingEngine) -> None:
    expected = [alone(engine, p, 12) for p in PROMPTS]
    cancel = threading.Event()

    def cancel_at_three(count: int) -> None:
        slow_start(engine)(count)
        if count == 3:
            cancel.set()

    jobs = [
        GenerationJob(list(PROMPTS[0]), 12, on_progress=slow_start(engine)),
        GenerationJob(list(PROMPTS[1]), 12, cancel=cancel, on_progress=cancel_at_three),
        GenerationJob(list(PROMPTS[2]), 12),
    ]
    got = together(engine, jobs)

    assert isinstance(got[1], TaskCancelledError)
    assert len(jobs[1].generated) < 12
    assert got[0] == expected[0] and got[2] == expected[2]


def test_progress_counts_up_to_the_answer_length(engine: BatchingEngine) -> None:
    seen: list[int] = []

    tokens = engine.run(GenerationJob(list(PROMPTS[0]), 7, on_progress=seen.append))

    assert seen == list(range(1, len(tokens) + 1))


def test_a_request_cancelled_before_it_starts_raises(engine: BatchingEngine) -> None:
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(TaskCancelledError):
        engine.run(GenerationJob(list(PROMPTS[0]), 5, cancel=cancel))


def test_the_end_token_finishes_a_request(tiny_model: Any) -> None:
    engine = make_engine(LlamaDecoder(tiny_model, "fp32", max_rows=4), penalty=1.0)
    first = alone(engine, PROMPTS[0], 1)[0]
    engine._eos = frozenset({first})  # the first answer token now ends the answer

    assert alone(engine, PROMPTS[0], 8) == []


@pytest.mark.parametrize("kind", ["llama", "transformers"])
def test_a_model_failure_fails_the_request_not_the_engine(tiny_model: Any, kind: str) -> None:
    engine = make_engine(make_decoder(kind, tiny_model))

    with pytest.raises(IndexError):
        alone(engine, [500], 3)  # a token id outside the vocabulary
    assert len(alone(engine, PROMPTS[0], 3)) == 3


def test_two_models_take_turns_on_the_compute_thread(tiny_model: Any) -> None:
    # Two engines (two models) share one compute thread; a long answer on one must not
    # hold a short one on the other until it ends.
    long_engine = make_engine(make_decoder("llama", tiny_model))
    short_engine = make_engine(make_decoder("llama", tiny_model))
    started, finished = threading.Event(), []

    def note_start(count: int) -> None:
        if count == 1:  # hold the long batch until the short one is queued behind it
            started.set()
            wait_for(compute_thread.others_waiting, "the short request to be queued")

    def run(engine: BatchingEngine, job: GenerationJob, name: str) -> None:
        engine.run(job)
        finished.append(name)

    long_job = GenerationJob(list(PROMPTS[0]), 60, on_progress=note_start)
    long_thread = threading.Thread(target=run, args=(long_engine, long_job, "long"))
    long_thread.start()
    started.wait(30)
    run(short_engine, GenerationJob(list(PROMPTS[1]), 3), "short")
    long_thread.join(60)

    assert finished == ["short", "long"]
    assert len(long_job.generated) == 60


@pytest.mark.embedded
def test_the_real_model_batched_equals_unbatched_in_fp32(tmp_path: Path) -> None:
    from orchestrate.llm.embedded import EngineOptions, LoadedModel, locate_embedded_model

    source = locate_embedded_model("smollm2-135m", override=None)
    model = LoadedModel._load(source, tmp_path / "models", None, EngineOptions(precision="fp32"))
    texts = ["Name a color.", "Write a haiku about rain.", "What is 2 + 2?"]
    prompts = [
        [int(t) for t in model._encode([{"role": "user", "content": text}])["input_ids"][0]]
        for text in texts
    ]
    engine = model.batcher()
    expected = [alone(engine, p, 16) for p in prompts]

    got = together(engine, [GenerationJob(p, 16, on_progress=slow_start(engine)) for p in prompts])

    assert got == expected
    assert engine.widest >= 2
