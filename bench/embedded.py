"""The embedded model's speed and the parseability of its code answers, in one run.

Prints, from one run on this machine:

1. load time: cold (GGUF -> safetensors conversion in a fresh folder, then load) and
   warm (from the converted copy), both with our default precision;
2. single-stream tokens/s: ours (the batching engine on our Llama decoder, default
   precision: fp16 weights on an x86 CPU) against the fp32 baseline path (transformers
   ``generate``, what the backend did before), interleaved round by round so noise hits
   both alike; and whether our decoder in fp32 reproduces ``generate``'s greedy tokens;
3. the default precision's quality against fp32: teacher-forced top-1 agreement and
   perplexity on fp32's own greedy continuations (lower precision changes numerics, so
   equality is not expected);
4. aggregate tokens/s of 3 concurrent requests divided by the single-stream figure, and
   whether fp32 batched answers equal their unbatched ones;
5. llama.cpp tokens/s when llama-cpp-python is installed (else says it is not);
6. over N builds of the bundled example specs (design and implement tasks only, to
   keep it practical; sampled at temperature 0.7 with the cache off, because greedy
   builds of one spec are all the same), the share whose implement (fullstack) answer
   yields at least one file, with the repair pass and without it.

Usage: python bench/embedded.py [--quick] [--builds 20] [--tokens 128]
Targets: single >= 30 tokens/s; 3-concurrent / single >= 2.0; builds with a file >= 90%.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from orchestrate.llm.backend import CompletionRequest
from orchestrate.llm.compute import compute_thread
from orchestrate.llm.decoder import Decoder, WeightPrecision, build_decoder
from orchestrate.llm.embedded import (
    REPETITION_PENALTY,
    EngineOptions,
    LoadedModel,
    choose_engine,
    llama_cpp_installed,
    locate_embedded_model,
    model_folder,
    quiet_transformers,
    resolve_precision,
)
from orchestrate.workspace.blocks import parse_file_blocks

ROOT = Path(__file__).resolve().parent.parent
SINGLE_PROMPT = (
    "Write a Python module for a command-line todo list: add, list and remove items "
    "stored in a JSON file. Explain each function."
)
CONCURRENT_PROMPTS = [
    SINGLE_PROMPT,
    "Write a Flask API for notes with create, read, update and delete endpoints.",
    "Explain how to design a small REST service, step by step, with examples.",
]
QUALITY_PROMPTS = CONCURRENT_PROMPTS


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def load_times(home: Path, options: EngineOptions) -> tuple[float, float, LoadedModel]:
    source = locate_embedded_model("smollm2-135m", override=None)
    cold_dir = home / "cold-models"
    _, cold = timed(lambda: LoadedModel._load(source, cold_dir, None, options))
    model, warm = timed(lambda: LoadedModel._load(source, cold_dir, None, options))
    return cold, warm, model


def baseline_generate(model: Any, tokenizer: Any, text: str, tokens: int) -> list[int]:
    """The previous path: transformers generate, fp32, greedy, the same penalty.

    On the compute thread, like ours: a second thread calling torch would slow both
    (see orchestrate/llm/compute.py).
    """
    return compute_thread.call(lambda: _generate(model, tokenizer, text, tokens))


def _generate(model: Any, tokenizer: Any, text: str, tokens: int) -> list[int]:
    import torch

    inputs = tokenizer.apply_chat_template(
        messages(text), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            repetition_penalty=REPETITION_PENALTY,
            pad_token_id=tokenizer.eos_token_id,
        )
    return [int(t) for t in output[0][inputs["input_ids"].shape[1] :]]


def ours(model: LoadedModel, text: str, tokens: int) -> tuple[str, int]:
    completion = model.generate(CompletionRequest(messages(text), "bench", tokens))
    return completion.text, completion.completion_tokens


def engine_tokens(model: LoadedModel, text: str, tokens: int) -> list[int]:
    from orchestrate.llm.batching import GenerationJob

    prompt = [int(t) for t in model._encode(messages(text))["input_ids"][0]]
    return model.batcher().run(GenerationJob(prompt, tokens))


def decode_logits(decoder: Decoder, prompt: list[int], continuation: list[int]) -> Any:
    """The logits before each token of ``continuation``, decoded as generation does."""
    import torch

    with torch.inference_mode():
        rows = [decoder.prefill(prompt)]
        rows += [decoder.step([token])[0] for token in continuation[:-1]]
        decoder.keep([])
    return torch.stack(rows).float()


def quality(
    baseline: Any, precision: WeightPrecision, tokenizer: Any, continuations: list[list[int]]
) -> str:
    """Top-1 agreement and perplexity of ``precision`` on fp32's own greedy answers.

    Teacher-forced, but decoded token by token with a KV cache as generation runs
    (the prompt prefilled at once), so the numerics are those of real use.
    """
    import torch

    decoders = {
        "fp32": build_decoder(copy.deepcopy(baseline), "fp32", max_rows=1),
        precision: build_decoder(copy.deepcopy(baseline), precision, max_rows=1),
    }
    agree = total = 0
    nll = dict.fromkeys(decoders, 0.0)
    for text, continuation in zip(QUALITY_PROMPTS, continuations, strict=True):
        prompt = list(
            tokenizer.apply_chat_template(
                messages(text), add_generation_prompt=True, return_dict=True
            )["input_ids"]
        )
        target = torch.tensor(continuation)
        logits = {
            name: decode_logits(decoder, prompt, continuation) for name, decoder in decoders.items()
        }
        agree += int((logits["fp32"].argmax(-1) == logits[precision].argmax(-1)).sum())
        total += len(continuation)
        for name, values in logits.items():
            nll[name] += float(torch.nn.functional.cross_entropy(values, target, reduction="sum"))
    ppl = {name: float(torch.exp(torch.tensor(value / total))) for name, value in nll.items()}
    return (
        f"top-1 agreement with fp32 {agree / total:.1%} over {total} tokens; perplexity of "
        f"fp32's greedy answers: fp32 {ppl['fp32']:.2f}, {precision} {ppl[precision]:.2f}"
    )


def concurrent(model: LoadedModel, tokens: int) -> tuple[float, list[int]]:
    results: list[tuple[str, int]] = [("", 0)] * len(CONCURRENT_PROMPTS)

    def work(index: int) -> None:
        results[index] = ours(model, CONCURRENT_PROMPTS[index], tokens)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(CONCURRENT_PROMPTS))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    counts = [count for _, count in results]
    return sum(counts) / elapsed, counts


def batched_equals_unbatched(model: LoadedModel, tokens: int) -> bool:
    alone = [engine_tokens(model, text, tokens) for text in CONCURRENT_PROMPTS]
    together: list[list[int]] = [[] for _ in CONCURRENT_PROMPTS]

    def work(index: int) -> None:
        together[index] = engine_tokens(model, CONCURRENT_PROMPTS[index], tokens)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(CONCURRENT_PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return alone == together


def llama_figure(tokens: int) -> str:
    if not llama_cpp_installed():
        return "llama.cpp: not installed (pip install 'unified-orchestrator[llama]' compiles it)"
    from orchestrate.llm.llamacpp_backend import LlamaCppModel

    source = locate_embedded_model("smollm2-135m", override=None)
    model = LlamaCppModel.load(source.path, 8192)
    model.generate(CompletionRequest(messages("Hello"), "bench", 8))
    completion, elapsed = timed(
        lambda: model.generate(CompletionRequest(messages(SINGLE_PROMPT), "bench", tokens))
    )
    rate = completion.completion_tokens / elapsed
    counts: list[int] = []

    def work(text: str) -> None:
        counts.append(
            model.generate(CompletionRequest(messages(text), "bench", tokens)).completion_tokens
        )

    threads = [threading.Thread(target=work, args=(text,)) for text in CONCURRENT_PROMPTS]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    aggregate = sum(counts) / (time.perf_counter() - started)
    return (
        f"llama.cpp: {rate:.1f} tokens/s single-stream (load {model.load_seconds:.2f} s); "
        f"3 concurrent {aggregate:.1f} tokens/s in all (one at a time: it does not batch)"
    )


def valid_python(blocks: list[Any]) -> bool:
    """At least one .py file, and every .py file compiles: is the code code at all?"""
    import ast

    sources = [block.content for block in blocks if block.path.endswith(".py")]
    try:
        for source in sources:
            ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return bool(sources)


def builds(home: Path, count: int, max_tokens: int) -> tuple[int, int, int, int]:
    """Run design+implement builds; count implement answers with a file (repair, strict)
    and those whose Python files all compile."""
    from typer.testing import CliRunner

    from orchestrate.cli.app import app

    crew = yaml.safe_load((ROOT / "config" / "crew.yaml").read_text())
    crew["tasks"] = {name: crew["tasks"][name] for name in ("design", "implement")}
    crew_file = home / "crew-design-implement.yaml"
    crew_file.write_text(yaml.safe_dump(crew))
    specs = sorted((ROOT / "examples" / "specs").iterdir())
    runs_dir = home / "runs"
    os.environ.update(
        ORCHESTRATE_HOME=str(home),
        ORCHESTRATE_RUNS_DIR=str(runs_dir),
        ORCHESTRATE_TEMPERATURE="0.7",
        ORCHESTRATE_MEMORY="false",
    )
    repaired = strict = succeeded = compiles = 0
    for number in range(count):
        spec = specs[number % len(specs)]
        result = CliRunner().invoke(
            app,
            [
                "build",
                str(spec),
                "--crew",
                str(crew_file),
                "--max-tokens",
                str(max_tokens),
                "--no-cache",
                "--json",
            ],
        )
        try:
            payload = json.loads(result.stdout)
        except ValueError:
            print(f"  build {number + 1}: no JSON ({result.exit_code})", file=sys.stderr)
            continue
        succeeded += payload.get("status") == "succeeded"
        answers = sorted(runs_dir.glob("*/tasks/implement.md"), key=lambda p: p.stat().st_mtime)
        answer = answers[-1].read_text() if answers else ""
        blocks = parse_file_blocks(answer, repair=True).blocks
        with_repair = len(blocks)
        without = len(parse_file_blocks(answer).blocks)
        repaired += with_repair > 0
        strict += without > 0
        compiles += valid_python(blocks)
        print(
            f"  build {number + 1:2d} {spec.name}: {with_repair} file(s), {without} strict",
            flush=True,
        )
        for old in answers:
            old.unlink()
    return succeeded, repaired, strict, compiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--builds", type=int, default=None, help="builds to run (20)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per answer (128)")
    args = parser.parse_args()
    tokens = args.tokens or (48 if args.quick else 128)
    build_count = args.builds if args.builds is not None else (2 if args.quick else 20)
    rounds = 1 if args.quick else 3
    quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM

    default = EngineOptions()
    precision = resolve_precision(default.precision, "cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"embedded benchmark: SmolLM2-135M, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores, default precision {precision}, {tokens} tokens per answer"
    )
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        cold, warm, model = load_times(home, default)
        print(
            f"load: cold {cold:.1f} s (GGUF conversion + load), warm {warm:.2f} s "
            f"(converted copy, {precision})"
        )
        source = locate_embedded_model("smollm2-135m", override=None)
        folder = model_folder(source, home / "cold-models")
        baseline = compute_thread.call(
            lambda: AutoModelForCausalLM.from_pretrained(folder).eval()  # type: ignore[no-untyped-call]
        )
        exact = LoadedModel._load(
            source, home / "cold-models", None, EngineOptions(precision="fp32")
        )
        tokenizer = exact._tokenizer
        baseline_generate(baseline, tokenizer, "Hello", 4)  # warm up both
        ours(model, "Hello", 4)

        base_rates, our_rates = [], []
        for _ in range(rounds):
            base, elapsed = timed(
                lambda: baseline_generate(baseline, tokenizer, SINGLE_PROMPT, tokens)
            )
            base_rates.append(len(base) / elapsed)
            (_, count), elapsed = timed(lambda: ours(model, SINGLE_PROMPT, tokens))
            our_rates.append(count / elapsed)
        base_rate, our_rate = statistics.median(base_rates), statistics.median(our_rates)
        print(
            f"single-stream: ours {our_rate:.1f} tokens/s, fp32 baseline (generate) "
            f"{base_rate:.1f} tokens/s: {our_rate / base_rate:.2f}x (median of {rounds})"
        )
        same = all(
            baseline_generate(baseline, tokenizer, text, tokens)
            == engine_tokens(exact, text, tokens)
            for text in QUALITY_PROMPTS
        )
        print(
            f"our decoding loop in fp32 gives generate's greedy tokens: {'yes' if same else 'NO'}"
        )
        if precision != "fp32":
            continuations = [
                baseline_generate(baseline, tokenizer, t, tokens) for t in QUALITY_PROMPTS
            ]
            verdict = compute_thread.call(
                lambda: quality(baseline, precision, tokenizer, continuations)
            )
            print(f"{precision} quality vs fp32: {verdict}")

        rates = []
        for _ in range(rounds):
            rate, counts = concurrent(model, tokens)
            rates.append(rate)
        aggregate = statistics.median(rates)
        print(
            f"3 concurrent requests: {aggregate:.1f} tokens/s in all ({counts} tokens), "
            f"{aggregate / our_rate:.2f}x single-stream (widest batch "
            f"{model.batcher().widest})"
        )
        print(
            f"fp32 batched answers equal unbatched: "
            f"{'yes' if batched_equals_unbatched(exact, tokens) else 'NO'}"
        )
        print(llama_figure(tokens))
        if build_count:
            max_tokens = 160 if args.quick else 200
            engine = choose_engine(locate_embedded_model("smollm2-135m", override=None), default)
            print(
                f"builds on the {engine} engine (design + implement only, max {max_tokens} "
                "tokens, temperature 0.7):"
            )
            LoadedModel._instances.clear()
            succeeded, repaired, strict, compiles = builds(home, build_count, max_tokens)
            print(
                f"implement answers with >= 1 parseable file: {repaired}/{build_count} "
                f"({repaired / build_count:.0%}) with the repair pass, {strict}/{build_count} "
                f"({strict / build_count:.0%}) strict; {succeeded} builds succeeded"
            )
            print(
                f"implement answers whose Python files all compile (ast.parse): "
                f"{compiles}/{build_count} ({compiles / build_count:.0%})"
            )


if __name__ == "__main__":
    main()
