"""How long each agent's tasks took in earlier runs, to estimate the next run's.

The scheduler starts the ready task with the longest remaining critical path first;
with real durations instead of equal weights, "longest" means longest in time. The
history is one SQLite file in the state directory, shared by every run. Only real
model work is recorded: a task answered from the cache says nothing about the model.
"""

from __future__ import annotations

import logging
import sqlite3
import statistics
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from orchestrate.store.sqlite import connect_shared

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS task_durations (
    agent TEXT NOT NULL,
    model TEXT NOT NULL,
    seconds REAL NOT NULL,
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS durations_by_agent ON task_durations (agent, model, recorded_at);
"""
RECENT_RUNS = 20  # estimates follow the model's recent speed, not its whole past


class DurationHistory:
    """Per-agent task durations, per model."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, agent: str, model: str, seconds: float) -> None:
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO task_durations VALUES (?, ?, ?, ?)",
                    (agent, model, seconds, time.time()),
                )
        except sqlite3.Error as exc:  # estimates are a nicety; never fail a run for them
            logger.warning("cannot record a task duration in %s: %s", self.path, exc)

    def estimates(self, agents: list[str], model: str) -> dict[str, float]:
        """Median recent duration per agent that has one on this model."""
        if not self.path.exists():
            return {}
        found: dict[str, float] = {}
        try:
            with self._connect() as db:
                for agent in agents:
                    rows = db.execute(
                        "SELECT seconds FROM task_durations WHERE agent = ? AND model = ? "
                        "ORDER BY recorded_at DESC LIMIT ?",
                        (agent, model, RECENT_RUNS),
                    ).fetchall()
                    if rows:
                        found[agent] = statistics.median(row[0] for row in rows)
        except sqlite3.Error as exc:
            logger.warning("cannot read task durations from %s: %s", self.path, exc)
        return found

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection for one transaction, closed afterwards."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = connect_shared(self.path)
        try:
            db.executescript(_SCHEMA)
            with db:
                yield db
        finally:
            db.close()


def task_weights(
    task_agents: Mapping[str, str], agent_seconds: Mapping[str, float]
) -> dict[str, float]:
    """Each task's expected duration: its agent's history, else the typical known agent.

    With no history at all every task weighs 1.0, which ranks tasks by chain length.
    """
    if not agent_seconds:
        return dict.fromkeys(task_agents, 1.0)
    typical = statistics.median(agent_seconds.values())
    return {task: agent_seconds.get(agent, typical) for task, agent in task_agents.items()}
