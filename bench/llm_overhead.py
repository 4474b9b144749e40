"""What our call path adds to one remote model call, against the client alone.

Both sides talk to the same local server (orchestrate.testing.llm_server), in the same
run, interleaved call by call so the machine's noise hits both alike. The baseline is
the official client called directly: one streamed chat completion, read to the end.
Ours is the whole path a task's call takes: the CrewAI adapter (OrchestrateLLM.call),
the fallback chain, a response-cache lookup (a miss: every prompt is new) and the
write of the answer, the spend guard (reserve and settle in the budget ledger; the
OpenAI model is a paid one), the retry layer and circuit breaker, the backend with its
streaming watch, and the run's per-call record (the event written to events.jsonl).

Usage: python bench/llm_overhead.py [--calls 400]
Target: median overhead per call under 2 ms, for each backend.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ollama
import openai

from orchestrate.llm.adapter import CallRecord, OrchestrateLLM
from orchestrate.llm.cache import ResponseCache
from orchestrate.llm.models import LinkFactory
from orchestrate.safety.guards import build_guards
from orchestrate.settings import load_settings
from orchestrate.store.events import EventLog, EventType
from orchestrate.testing.llm_server import FakeLLMServer

TARGET_MS = 2.0
MODEL = "llama3.2:1b"
MAX_TOKENS = 64
PRICES = """currency: USD
models:
  "ollama:*": {input: 0, output: 0}
  "openai:*": {input: 0.15, output: 0.60}
"""


def prompt(number: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are the architect of a small web service."},
        {"role": "user", "content": f"Design request number {number}: a notes API."},
    ]


def direct_openai(server: FakeLLMServer) -> Callable[[int], str]:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0)

    def call(number: int) -> str:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=prompt(number),  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    return call


def direct_ollama(server: FakeLLMServer) -> Callable[[int], str]:
    client = ollama.Client(host=server.ollama_host)

    def call(number: int) -> str:
        options = {"num_predict": MAX_TOKENS, "temperature": 0.0}
        chunks = client.chat(MODEL, prompt(number), options=options, stream=True)
        return "".join(chunk.message.content or "" for chunk in chunks)

    return call


def ours(model: str, server: FakeLLMServer, state: Path) -> Callable[[int], str]:
    settings = load_settings(
        home=state,
        model=model,
        ollama_host=server.ollama_host,
        openai_base_url=server.openai_base_url,
        openai_api_key="k",
        pricing_file=_pricing(state),
        daily_budget=1e6,
    )
    guards = build_guards(settings, [model])
    cache = ResponseCache(settings.cache_path, max_bytes=256 * 2**20)
    links = LinkFactory(settings, spend_guard=guards.spend_guard, cache=cache)
    chain = links.chain([model])
    chain.prepare()
    events = EventLog(state / f"events-{model.replace(':', '_')}.jsonl")

    def record(call: CallRecord) -> None:
        events.emit(EventType.LLM_CALL, task=call.task, model=call.model, cost=call.cost)

    def call(number: int) -> str:
        llm = OrchestrateLLM(
            backend=chain,
            task="design",
            agent="architect",
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            cancel=threading.Event(),
            on_call=record,
            on_progress=lambda tokens: None,
        )
        return llm.call(prompt(number))

    return call


def _pricing(state: Path) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    path = state / "pricing.yaml"
    path.write_text(PRICES)
    return path


def interleaved_medians(
    baseline: Callable[[int], str], candidate: Callable[[int], str], calls: int
) -> tuple[float, float]:
    """Median milliseconds of each, alternating which goes first to cancel drift."""
    base_samples, our_samples = [], []
    for number in range(calls):
        pair = [(baseline, base_samples), (candidate, our_samples)]
        for action, samples in pair if number % 2 else reversed(pair):
            began = time.perf_counter()
            action(number)
            samples.append(time.perf_counter() - began)
    return statistics.median(base_samples) * 1000, statistics.median(our_samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    calls = parser.parse_args().calls
    print(f"median of {calls} streamed calls each, to a local fake server; target < 2 ms")
    with FakeLLMServer(models=(MODEL,)) as server, tempfile.TemporaryDirectory() as base:
        for name, direct in (("openai", direct_openai), ("ollama", direct_ollama)):
            ours_call = ours(f"{name}:{MODEL}", server, Path(base) / name)
            direct_call = direct(server)
            for warm in range(20):  # connections, imports, SQLite pages
                direct_call(10**6 + warm), ours_call(10**6 + warm)
            client_ms, our_ms = interleaved_medians(direct_call, ours_call, calls)
            overhead = our_ms - client_ms
            verdict = "met" if overhead < TARGET_MS else "MISSED"
            print(
                f"{name:7} client {client_ms:6.2f} ms  ours {our_ms:6.2f} ms  "
                f"ratio {our_ms / client_ms:5.2f}x  overhead {overhead:+.2f} ms ({verdict})"
            )


if __name__ == "__main__":
    main()
