"""Long-term memory: retrieval latency per task with 1,000 stored memories.

Stores ``--memories`` task answers (synthetic, ~400 characters each, spread over six
agents and many specs) in a fresh memory folder, then times what a task pays before it
starts: ``RunMemory.context_for`` embeds the spec and task, queries Chroma filtered by
agent (and leaving out the run and spec), ranks approved work first and formats the
section. Two baselines are measured in the same run on the same vectors: embedding the
query alone (the floor any semantic recall pays), and that embedding plus a brute-force
NumPy cosine search over all stored vectors. Also reports how often Chroma's top-k equals
the brute-force top-k for the same filter.

Usage: python bench/memory.py [--memories 1000] [--queries 50] [--top-k 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from orchestrate.memory.embedding import shared_embedder
from orchestrate.memory.recall import RunMemory
from orchestrate.memory.store import LongTermMemory, MemoryRecord

AGENTS = {
    "architect": "design",
    "fullstack": "implement",
    "devops": "deploy",
    "qa": "test",
    "docs": "document",
    "critic": "review",
}
SUBJECTS = [
    "notes API",
    "todo CLI",
    "weather dashboard",
    "URL shortener",
    "chat server",
    "invoice generator",
    "image resizer",
    "blog engine",
    "inventory tracker",
    "quiz app",
    "expense splitter",
    "markdown wiki",
    "job queue",
    "rate limiter",
    "file sync tool",
]
STACKS = [
    "FastAPI and SQLite",
    "Flask and Postgres",
    "Go and Redis",
    "Node and MongoDB",
    "Python standard library",
    "Django and Celery",
    "Rust and axum",
]
DETAILS = [
    "pagination",
    "authentication with tokens",
    "a JSON file store",
    "Docker images",
    "unit tests with pytest",
    "a CI workflow",
    "structured logging",
    "rate limits",
    "a CLI with argparse",
    "background jobs",
    "input validation",
    "metrics",
]


def synthetic_answer(rng: random.Random, agent: str, subject: str, stack: str) -> str:
    picked = rng.sample(DETAILS, 4)
    return (
        f"FILE: {agent.upper()}.md\n```markdown\n# {subject.title()} ({agent})\n"
        f"Built with {stack}. It covers {picked[0]} and {picked[1]}.\n"
        f"- Modules: api, storage, cli, with {picked[2]}.\n"
        f"- Risks: {picked[3]}; keep the {subject} small and testable.\n```\n"
    )


def fill(memory: LongTermMemory, count: int, rng: random.Random) -> tuple[float, int]:
    """Store ``count`` memories in batches of one run (six answers); return seconds, runs."""
    records = []
    for index in range(count):
        agent = list(AGENTS)[index % len(AGENTS)]
        run = index // len(AGENTS)
        subject, stack = SUBJECTS[run % len(SUBJECTS)], rng.choice(STACKS)
        records.append(
            MemoryRecord(
                f"run-{run:04d}",
                AGENTS[agent],
                agent,
                agent.title(),
                f"{subject.title()} with {stack}",
                synthetic_answer(rng, agent, subject, stack),
                spec_hash=f"spec-{run}",
            )
        )
    started = time.perf_counter()
    for start in range(0, len(records), len(AGENTS)):
        memory.remember(records[start : start + len(AGENTS)])
    for run in range(0, count // len(AGENTS), 3):  # a third of the runs were approved
        memory.set_verdict(f"run-{run:04d}", "approve")
    return time.perf_counter() - started, count // len(AGENTS)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(7)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "memory"
        memory = LongTermMemory(folder)
        started = time.perf_counter()
        shared_embedder().embed(["warm up"])
        load_seconds = time.perf_counter() - started
        fill_seconds, runs = fill(memory, args.memories, rng)
        print(
            f"model load {load_seconds:.2f} s; stored {args.memories} memories of {runs} runs "
            f"in {fill_seconds:.1f} s ({fill_seconds / args.memories * 1000:.1f} ms each)"
        )

        stored = memory._open().get(include=["embeddings", "metadatas"])
        vectors = np.asarray(stored["embeddings"], dtype=np.float32)
        agents = np.array([meta["agent"] for meta in stored["metadatas"]])
        ids = list(stored["ids"])

        recall_ms, embed_ms, brute_ms, agree = [], [], [], 0
        for number in range(args.queries):
            agent = list(AGENTS)[number % len(AGENTS)]
            subject, stack = rng.choice(SUBJECTS), rng.choice(STACKS)
            spec = f"A {subject} built with {stack}, with {rng.choice(DETAILS)}."
            query = f"{subject.title()}\n{AGENTS[agent]}\n\n{spec}"
            run_memory = RunMemory(
                folder,
                run_id=f"new-{number}",
                spec_title=subject.title(),
                spec_text=spec,
                token_budget=1024,
                top_k=args.top_k,
            )

            started = time.perf_counter()
            run_memory.context_for(AGENTS[agent], agent)
            recall_ms.append((time.perf_counter() - started) * 1000)

            started = time.perf_counter()
            embedded = shared_embedder().embed([query])[0]
            embed_ms.append((time.perf_counter() - started) * 1000)

            started = time.perf_counter()
            embedded = shared_embedder().embed([query])[0]
            scores = np.where(agents == agent, vectors @ embedded, -np.inf)
            nearest = np.argsort(-scores)[: args.top_k]
            brute_ms.append((time.perf_counter() - started) * 1000)

            chroma = [m.id for m in memory.search(query, agent=agent, limit=args.top_k)]
            agree += chroma == [ids[i] for i in nearest]

    def line(name: str, values: list[float]) -> str:
        median, p95 = statistics.median(values), percentile(values, 0.95)
        return f"  {name:<38} median {median:7.2f} ms  p95 {p95:7.2f} ms"

    print(f"retrieval per task, {args.queries} tasks, top {args.top_k} of {args.memories}:")
    print(line("recall (Chroma, filter, rank, format)", recall_ms))
    print(line("baseline: embed the query alone", embed_ms))
    print(line("baseline: embed + NumPy brute force", brute_ms))
    median_recall = statistics.median(recall_ms)
    print(
        f"  ratio recall / embed only:        {median_recall / statistics.median(embed_ms):.2f}x "
        f"(p95 {percentile(recall_ms, 0.95) / percentile(embed_ms, 0.95):.2f}x)"
    )
    print(
        f"  ratio recall / embed+brute force: {median_recall / statistics.median(brute_ms):.2f}x "
        f"(p95 {percentile(recall_ms, 0.95) / percentile(brute_ms, 0.95):.2f}x)"
    )
    print(f"  Chroma top-{args.top_k} equals brute-force top-{args.top_k}: {agree}/{args.queries}")


if __name__ == "__main__":
    main()
