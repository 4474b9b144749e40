"""Checkpoints: each finished task's result, on disk the moment the task succeeds.

One SQLite file per run (``checkpoint.sqlite3`` in the run folder), written with
``synchronous=FULL`` so a committed row survives a power cut, let alone ``kill -9``.
The executor commits a task before it starts any dependent, so a checkpointed task's
inputs are always checkpointed too. ``orchestrate resume`` reads it back and runs only
what is missing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from orchestrate.errors import RunNotFoundError
from orchestrate.store.sqlite import connect_shared

_SCHEMA = """
CREATE TABLE IF NOT EXISTS finished_tasks (
    task TEXT PRIMARY KEY,
    answer TEXT NOT NULL,
    files TEXT NOT NULL,
    seconds REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    llm_calls INTEGER NOT NULL,
    cached_calls INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    finished_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class FinishedTask:
    """What a succeeded task produced and what it cost."""

    task: str
    answer: str
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0
    cached_calls: int = 0
    attempts: int = 1
    finished_at: str = ""


class Checkpoint:
    """The finished tasks of one run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = connect_shared(
                path, synchronous="FULL", autocommit=True, check_same_thread=False
            )
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise RunNotFoundError(f"the checkpoint {path} is unreadable: {exc}") from exc

    def record(self, finished: FinishedTask) -> None:
        """Store a finished task; durable when this returns."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO finished_tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    finished.task,
                    finished.answer,
                    json.dumps(finished.files),
                    finished.seconds,
                    finished.prompt_tokens,
                    finished.completion_tokens,
                    finished.llm_calls,
                    finished.cached_calls,
                    finished.attempts,
                    finished.finished_at,
                ),
            )

    def finished(self) -> dict[str, FinishedTask]:
        """Every task recorded so far, by name."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM finished_tasks").fetchall()
        return {
            row[0]: FinishedTask(
                task=row[0],
                answer=row[1],
                files=list(json.loads(row[2])),
                seconds=row[3],
                prompt_tokens=row[4],
                completion_tokens=row[5],
                llm_calls=row[6],
                cached_calls=row[7],
                attempts=row[8],
                finished_at=row[9],
            )
            for row in rows
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
