"""One run's use of long-term memory: recall before each task, remember after it.

Recall runs on the task's worker thread, before its agent starts, and adds the nearest
earlier answers of the same agent to the task's context within a token budget. The
run's own entries are never recalled, nor those of earlier runs of the very same spec:
a repeated build must see the same prompts, so that it is answered from the response
cache and stays reproducible; memory carries lessons across different specs.

Remembering happens on a background thread so that the scheduling thread, which commits
tasks, never waits for an embedding; the run's end waits for it and then gives the
run's entries the critic's verdict. Memory is an aid: when it fails, the run carries on
without it and a warning says why.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from orchestrate.memory.store import LongTermMemory, Memory, MemoryRecord

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # a budget estimate; the model's own tokenizer is not at hand here
_MIN_PART_TOKENS = 32  # a memory cut shorter than this is not worth its header
_QUERY_SPEC_CHARS = 2000

Recalled = Callable[[str, list[Memory], int], None]


class RunMemory:
    """Recalls into and remembers from one run; safe to call from any thread."""

    def __init__(
        self,
        folder: Path,
        *,
        run_id: str,
        spec_title: str,
        spec_text: str,
        token_budget: int,
        top_k: int,
        on_recalled: Recalled | None = None,
    ) -> None:
        self.store = LongTermMemory(folder)
        self.run_id, self.spec_title, self.spec_text = run_id, spec_title, spec_text
        self.spec_hash = hashlib.sha256(spec_text.encode("utf-8")).hexdigest()
        self.token_budget, self.top_k = token_budget, top_k
        self._on_recalled = on_recalled
        self._recalled: dict[str, str] = {}  # a retried task sees what its first try saw
        self._lock = threading.Lock()
        self._pending: queue.Queue[MemoryRecord | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        try:
            self.store.open()  # here, on the thread that creates the run: see open()
        except Exception as exc:
            logger.warning("could not open the memory in %s: %s", folder, exc)

    def context_for(self, task: str, agent: str) -> str:
        """A context section of ``agent``'s most relevant earlier answers ('' if none)."""
        with self._lock:
            if task in self._recalled:
                return self._recalled[task]
        section = ""
        if self.token_budget > 0:
            try:
                found = self.store.recall(
                    f"{self.spec_title}\n{task}\n\n{self.spec_text[:_QUERY_SPEC_CHARS]}",
                    agent=agent,
                    limit=self.top_k,
                    exclude_run=self.run_id,
                    exclude_spec=self.spec_hash,
                )
            except Exception as exc:  # memory helps a task; it must never fail one
                logger.warning("could not recall memories for %s: %s", task, exc)
                found = []
            used, section = format_memories(found, self.token_budget)
            if used and self._on_recalled is not None:
                self._on_recalled(task, used, len(section) // CHARS_PER_TOKEN)
        with self._lock:
            self._recalled[task] = section
        return section

    def remember(self, task: str, agent: str, role: str, text: str) -> None:
        """Queue a finished task's answer; it is stored in the background."""
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_pending, name="memory-writer", daemon=True
                )
                self._writer.start()
        record = MemoryRecord(
            self.run_id, task, agent, role, self.spec_title, text, spec_hash=self.spec_hash
        )
        self._pending.put(record)

    def finish(self, verdict: str | None, *, wait_seconds: float | None = None) -> None:
        """Wait for queued answers to be stored, then record the run's verdict on them.

        With ``wait_seconds`` (an interrupted run) answers not stored by then are left to
        the writer thread, which dies with the process: a resumed run re-runs nothing
        that was checkpointed, so those answers are not remembered.
        """
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is None:
            return
        self._pending.put(None)
        writer.join(wait_seconds)
        if writer.is_alive():
            logger.warning("memory: gave up waiting for answers still being stored")
            return
        if verdict:
            try:
                self.store.set_verdict(self.run_id, verdict)
            except Exception as exc:
                logger.warning("could not record the verdict in memory: %s", exc)

    def _write_pending(self) -> None:
        while True:
            record = self._pending.get()
            if record is None:
                return
            batch = [record]
            while not self._pending.empty():  # store what piled up in one write
                queued = self._pending.get()
                if queued is None:
                    self._pending.put(None)
                    break
                batch.append(queued)
            try:
                self.store.remember(batch)
            except Exception as exc:
                logger.warning("could not remember %s: %s", [r.task for r in batch], exc)


def format_memories(found: list[Memory], token_budget: int) -> tuple[list[Memory], str]:
    """The memories that fit in ``token_budget``, as one context section, and which."""
    budget = token_budget * CHARS_PER_TOKEN
    parts = ["## Relevant work from earlier runs (long-term memory)"]
    used: list[Memory] = []
    left = budget - len(parts[0])
    for memory in found:
        verdict = memory.verdict or "no verdict"
        header = f"### '{memory.task}' of run {memory.run} ({memory.spec_title}; {verdict})"
        room = left - len(header) - 4
        if room < _MIN_PART_TOKENS * CHARS_PER_TOKEN:
            break
        text = memory.text if len(memory.text) <= room else memory.text[: room - 6] + "\n[...]"
        parts.append(f"{header}\n\n{text}")
        used.append(memory)
        left -= len(header) + len(text) + 4
    if not used:
        return [], ""
    return used, "\n\n".join(parts)
