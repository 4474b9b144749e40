"""The event log: one JSON object per line in ``events.jsonl``, appended as things happen.

Every event has ``seq`` (its position), ``ts`` (UTC, ISO 8601) and ``type``; the other
fields depend on the type. Readers may follow the file while a run writes it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any


class EventType(StrEnum):
    RUN_STARTED = "run_started"  # spec title, crew, model, workers
    RUN_RESUMED = "run_resumed"  # like run_started, plus the tasks already finished
    TASK_STATE = "task_state"  # task, agent, state, and a reason when it failed or was skipped
    TASK_ATTEMPT = "task_attempt"  # task, attempt number, max attempts: an attempt starts
    ATTEMPT_FAILED = "attempt_failed"  # task, attempt, reason, retry_in_seconds (None: final)
    LLM_CALL = "llm_call"  # task, model, seconds, prompt/completion tokens, cached
    LLM_RETRY = "llm_retry"  # task, model, attempt, reason, retry_in_seconds: a call retried
    CIRCUIT_CHANGED = "circuit_changed"  # task, model, state (open/half_open/closed), reason
    MODEL_FALLBACK = "model_fallback"  # task, from_model, to_model, reason
    FILE_WRITTEN = "file_written"  # task, path, bytes, replaced
    FILE_REFUSED = "file_refused"  # task, path, reason: a generated path we would not write
    FILE_CONFLICT = "file_conflict"  # path, winner, loser: two tasks wrote it, the later won
    SECRET_FOUND = "secret_found"  # task, path, action (redacted/refused), findings: kind+line
    BLOCK_PROBLEM = "block_problem"  # task, line, reason: a file block we could not read
    CHECKS_RAN = "checks_ran"  # task, round, kind, status, passed/failed/errors, limits_hit
    REPAIR_FINISHED = "repair_finished"  # task, round, agent, files, error: a repair round
    MEMORY_RECALLED = "memory_recalled"  # task, ids, runs, approved, tokens: earlier work given
    ERROR = "error"  # task (if any), message
    RUN_FINISHED = "run_finished"  # status, seconds, files, tokens


Event = dict[str, Any]


def utc_now() -> datetime:
    return datetime.now(UTC)


class EventLog:
    """Append-only, thread-safe writer of ``events.jsonl``; listeners see each event too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seq = _last_seq(path)  # a resumed run continues its log
        self._listeners: list[Callable[[Event], None]] = []
        self._stream = path.open("a", encoding="utf-8")

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def emit(self, event_type: EventType, **fields: Any) -> Event:
        with self._lock:
            self._seq += 1
            event: Event = {
                "seq": self._seq,
                "ts": utc_now().isoformat(),
                "type": event_type.value,
                **fields,
            }
            self._stream.write(json.dumps(event, default=str) + "\n")
            self._stream.flush()
            for listener in self._listeners:
                listener(event)
        return event

    def close(self) -> None:
        with self._lock:
            self._stream.close()


def _last_seq(path: Path) -> int:
    if not path.exists():
        return 0
    last = 0
    for event in read_events(path):
        last = max(last, int(event.get("seq", 0)))
    return last


def read_events(path: Path) -> Iterator[Event]:
    """Yield the events written so far, skipping a last line still being written."""
    with path.open(encoding="utf-8") as stream:
        yield from _complete_events(stream.readlines())


def follow_events(
    path: Path, *, poll_seconds: float = 0.2, still_running: Callable[[], bool]
) -> Iterator[Event]:
    """Yield events as they are appended until the run ends (``run_finished``)."""
    with path.open(encoding="utf-8") as stream:
        pending = ""
        while True:
            chunk = stream.readline()
            if chunk:
                pending += chunk
                if not pending.endswith("\n"):
                    continue
                for event in _complete_events([pending]):
                    yield event
                    if event["type"] == EventType.RUN_FINISHED:
                        return
                pending = ""
                continue
            if not still_running():
                # The run may have written its last events between our last read and
                # this check (its status is saved before run_finished is logged).
                yield from _complete_events((pending + stream.read()).splitlines(keepends=True))
                return
            time.sleep(poll_seconds)


def _complete_events(lines: list[str]) -> Iterator[Event]:
    for line in lines:
        if not line.endswith("\n"):
            return
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            yield event
