"""The response cache: answers to identical model calls, shared by every run on the machine.

A call is identified by a SHA-256 over the backend's identity (which names the model and
fingerprints its weights or script), the sampling parameters and the full messages. The
answers live in one SQLite file in WAL mode, so several ``orchestrate`` processes share
it safely. Each row carries a digest of its payload: a row that does not match (a torn
write, a hand edit) is dropped and answered afresh. A database that cannot be opened at
all is moved aside and recreated. The cache never fails a run; at worst it misses.

When the stored answers outgrow ``max_bytes``, the least recently used are evicted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrate.llm.backend import Backend, BackendLayer, Completion, CompletionRequest
from orchestrate.store.sqlite import connect_shared

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_use ON responses (last_used);
"""
_FORMAT = 1  # bump when the key or payload layout changes, so old rows stop matching


@dataclass(frozen=True)
class CacheStats:
    entries: int
    size_bytes: int
    max_bytes: int
    path: Path


def request_key(identity: str, request: CompletionRequest) -> str:
    """The cache key of a request to the backend whose identity is ``identity``."""
    material = {
        "format": _FORMAT,
        "backend": identity,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "stop": list(request.stop),
        "messages": request.messages,
    }
    canonical = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """A bounded, process-safe map from request keys to completions."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def get(self, key: str) -> Completion | None:
        """The stored answer for ``key``, or None (also when the entry is unreadable)."""
        row = self._run("SELECT payload, digest FROM responses WHERE key = ?", (key,))
        if not row:
            return None
        payload, digest = row[0]
        completion = _decode(payload, digest)
        if completion is None:
            logger.warning("dropping a corrupt response-cache entry %s", key[:12])
            self._run("DELETE FROM responses WHERE key = ?", (key,), commit=True)
            return None
        self._run(
            "UPDATE responses SET last_used = ? WHERE key = ?", (time.time(), key), commit=True
        )
        return completion

    def put(self, key: str, completion: Completion) -> None:
        """Store an answer, then evict the least recently used beyond the size limit."""
        payload = json.dumps(
            {
                "text": completion.text,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
            },
            ensure_ascii=False,
        ).encode("utf-8")
        now = time.time()
        self._run(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
            (key, payload, _digest(payload), len(payload), now, now),
            commit=True,
        )
        self._evict()

    def stats(self) -> CacheStats:
        row = self._run("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM responses")
        entries, size = row[0] if row else (0, 0)
        return CacheStats(int(entries), int(size), self.max_bytes, self.path)

    def clear(self) -> int:
        """Remove every entry; return how many there were."""
        entries = self.stats().entries
        self._run("DELETE FROM responses", commit=True)
        return entries

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _evict(self) -> None:
        row = self._run("SELECT COALESCE(SUM(size), 0) FROM responses")
        total = int(row[0][0]) if row else 0
        if total <= self.max_bytes:
            return
        # Evict down to 90% so that a cache at its limit does not evict on every put.
        excess = total - int(self.max_bytes * 0.9)
        # Oldest first, each row while what is freed before it still falls short.
        self._run(
            """DELETE FROM responses WHERE key IN (
                   SELECT key FROM (
                       SELECT key, size, SUM(size) OVER (ORDER BY last_used, key) AS freed
                       FROM responses)
                   WHERE freed - size < ?)""",
            (excess,),
            commit=True,
        )

    def _run(self, sql: str, parameters: tuple[Any, ...] = (), *, commit: bool = False) -> Any:
        """Execute one statement; on any database error, recover once and carry on."""
        with self._lock:
            for recovering in (False, True):
                try:
                    db = self._connection()
                    rows = db.execute(sql, parameters).fetchall()
                    if commit:
                        db.commit()
                    return rows
                except sqlite3.DatabaseError as exc:
                    if recovering:
                        logger.warning("response cache unavailable (%s); not caching", exc)
                        return []
                    self._move_aside(exc)
            return []

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = connect_shared(self.path, check_same_thread=False)
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def _move_aside(self, error: sqlite3.DatabaseError) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            return  # busy, not broken: the retry may get through
        logger.warning(
            "the response cache at %s is unreadable (%s); starting a new one", self.path, error
        )
        for suffix in ("", "-wal", "-shm"):
            broken = Path(f"{self.path}{suffix}")
            if broken.exists():
                broken.replace(f"{broken}.corrupt-{int(time.time())}")


class CachingBackend(BackendLayer):
    """A backend that answers from the cache when it can and fills it when it cannot."""

    def __init__(self, inner: Backend, cache: ResponseCache, *, cache_sampled: bool) -> None:
        super().__init__(inner)
        self._cache = cache
        self._cache_sampled = cache_sampled

    def complete(self, request: CompletionRequest) -> Completion:
        if request.temperature > 0 and not self._cache_sampled:
            return self.inner.complete(request)
        key = request_key(self.inner.identity, request)
        if request.read_cache:
            cached = self._cache.get(key)
            if cached is not None:
                return Completion(
                    cached.text, cached.prompt_tokens, cached.completion_tokens, cached=True
                )
        completion = self.inner.complete(request)
        # An empty answer is a failure, and a fallback model's answer is not this model's.
        if completion.text.strip() and completion.model in (None, self.inner.name):
            self._cache.put(key, completion)
        return completion


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _decode(payload: Any, digest: Any) -> Completion | None:
    if not isinstance(payload, bytes) or _digest(payload) != digest:
        return None
    try:
        data = json.loads(payload)
        return Completion(
            str(data["text"]), int(data["prompt_tokens"]), int(data["completion_tokens"])
        )
    except (ValueError, KeyError, TypeError):
        return None
