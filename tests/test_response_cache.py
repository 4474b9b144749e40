"""Tests for orchestrate.llm.cache: keys, corruption, eviction and the caching backend."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrate.llm.backend import Completion, CompletionRequest
from orchestrate.llm.cache import CachingBackend, ResponseCache, request_key

REQUEST = CompletionRequest(
    messages=[{"role": "user", "content": "Design a todo app."}], agent="architect", max_tokens=64
)


class CountingBackend:
    """A deterministic backend that counts the calls that reach it."""

    name = "counting:model"
    identity = "counting:model:v1"
    context_window = 1000

    def __init__(self, text: str = "An answer.") -> None:
        self.calls = 0
        self.text = text

    def prepare(self) -> None:
        """Nothing to load."""

    def complete(self, request: CompletionRequest) -> Completion:
        self.calls += 1
        return Completion(self.text, 5, 2)

    def count_tokens(self, messages) -> int:
        return 5


@pytest.fixture
def cache(tmp_path: Path) -> ResponseCache:
    return ResponseCache(tmp_path / "cache" / "responses.sqlite3", max_bytes=1_000_000)


def test_key_covers_backend_sampling_and_every_message():
    base = request_key("m:1", REQUEST)
    assert request_key("m:1", REQUEST) == base
    variants = [
        request_key("m:2", REQUEST),
        request_key("m:1", replace(REQUEST, max_tokens=65)),
        request_key("m:1", replace(REQUEST, temperature=0.5)),
        request_key("m:1", replace(REQUEST, stop=("END",))),
        request_key("m:1", replace(REQUEST, messages=[{"role": "user", "content": "Other."}])),
        request_key(
            "m:1",
            replace(REQUEST, messages=[*REQUEST.messages, {"role": "assistant", "content": ""}]),
        ),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # Progress callbacks and cancel events are not part of the question.
    assert request_key("m:1", replace(REQUEST, on_progress=print)) == base


def test_put_then_get_round_trips(cache):
    cache.put("k", Completion("text ✓", 3, 4))
    assert cache.get("k") == Completion("text ✓", 3, 4)
    assert cache.get("missing") is None
    assert cache.stats().entries == 1


def test_a_corrupt_entry_is_ignored_and_replaced(cache):
    cache.put("k", Completion("good", 1, 1))
    with sqlite3.connect(cache.path) as db:
        db.execute("UPDATE responses SET payload = ? WHERE key = 'k'", (b'{"text": "evil"',))
    assert cache.get("k") is None
    assert cache.stats().entries == 0
    cache.put("k", Completion("fresh", 1, 1))
    assert cache.get("k") == Completion("fresh", 1, 1)


def test_a_database_that_is_not_sqlite_is_moved_aside(tmp_path):
    path = tmp_path / "responses.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    cache = ResponseCache(path, max_bytes=1_000_000)

    assert cache.get("k") is None
    cache.put("k", Completion("works", 1, 1))
    assert cache.get("k") == Completion("works", 1, 1)
    assert list(tmp_path.glob("responses.sqlite3.corrupt-*"))


def test_the_least_recently_used_entries_are_evicted_beyond_the_limit(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite3", max_bytes=2_000)
    for number in range(30):
        cache.put(f"k{number}", Completion("x" * 100, 1, 1))
        cache.get("k0")  # kept warm, so never the least recently used
    stats = cache.stats()
    assert stats.size_bytes <= 2_000
    assert cache.get("k0") is not None
    assert cache.get("k29") is not None
    assert cache.get("k1") is None


def test_caching_backend_answers_a_repeat_without_the_model(cache):
    inner = CountingBackend()
    backend = CachingBackend(inner, cache, cache_sampled=False)

    first = backend.complete(REQUEST)
    second = backend.complete(REQUEST)

    assert inner.calls == 1
    assert first.cached is False
    assert second == Completion("An answer.", 5, 2, cached=True)


def test_a_retry_skips_reading_the_cache_but_refreshes_it(cache):
    inner = CountingBackend()
    backend = CachingBackend(inner, cache, cache_sampled=False)
    backend.complete(REQUEST)
    inner.text = "A better answer."

    retried = backend.complete(replace(REQUEST, read_cache=False))

    assert inner.calls == 2
    assert retried.text == "A better answer."
    assert backend.complete(REQUEST).text == "A better answer."


def test_sampled_calls_are_cached_only_when_asked(cache):
    sampled = replace(REQUEST, temperature=0.8)
    inner = CountingBackend()
    CachingBackend(inner, cache, cache_sampled=False).complete(sampled)
    CachingBackend(inner, cache, cache_sampled=False).complete(sampled)
    assert inner.calls == 2
    opted_in = CachingBackend(inner, cache, cache_sampled=True)
    opted_in.complete(sampled)
    opted_in.complete(sampled)
    assert inner.calls == 3


def test_empty_answers_are_not_cached(cache):
    inner = CountingBackend(text="  ")
    backend = CachingBackend(inner, cache, cache_sampled=False)
    backend.complete(REQUEST)
    backend.complete(REQUEST)
    assert inner.calls == 2


def test_two_cache_objects_on_one_file_share_entries_across_threads(tmp_path):
    path = tmp_path / "shared.sqlite3"
    writers = [ResponseCache(path, max_bytes=10_000_000) for _ in range(4)]

    def fill(cache: ResponseCache, offset: int) -> None:
        for number in range(50):
            cache.put(f"{offset}-{number}", Completion(f"answer {offset}-{number}", 1, 1))

    threads = [threading.Thread(target=fill, args=(c, i)) for i, c in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader = ResponseCache(path, max_bytes=10_000_000)
    assert reader.stats().entries == 200
    assert reader.get("3-49") == Completion("answer 3-49", 1, 1)
