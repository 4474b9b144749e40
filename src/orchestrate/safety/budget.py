"""The spend ledger: one SQLite file (WAL) in the state directory, shared by all processes.

Every paid call first reserves its worst case (prompt tokens plus max tokens at the
model's price) and afterwards settles to what it really cost. Admission happens inside
``BEGIN IMMEDIATE``, which takes SQLite's single write lock, so two processes can never
both fit into the same remaining money: spend plus reservations never exceed the budget.

Money is kept as integer millionths of the currency; the day is the UTC date. A
reservation whose process died (its pid gone, or reused by a process started later) is
settled at its worst case, since the provider may have charged for the call.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from orchestrate.errors import BudgetExceeded
from orchestrate.safety.pricing import MICROS
from orchestrate.store.sqlite import connect_shared

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    id INTEGER PRIMARY KEY,
    day TEXT NOT NULL,                 -- UTC date, YYYY-MM-DD
    currency TEXT NOT NULL,
    model TEXT NOT NULL,
    task TEXT,
    state TEXT NOT NULL,               -- open, settled, released, abandoned
    reserved INTEGER NOT NULL,         -- worst case, millionths of the currency
    cost INTEGER,                      -- what it really cost; NULL while open
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    pid INTEGER NOT NULL,
    pid_started REAL NOT NULL,         -- the process's start time, to detect pid reuse
    created_at TEXT NOT NULL,
    settled_at TEXT
);
CREATE INDEX IF NOT EXISTS spend_day ON spend (day, currency, state);
"""


@dataclass(frozen=True)
class Reservation:
    """Money held for one call until it settles."""

    id: int
    model: str
    reserved_micros: int


@dataclass(frozen=True)
class DaySpend:
    """Today's totals, kept in millionths and shown in the currency's units."""

    day: str
    currency: str
    budget_micros: int
    spent_micros: int  # settled and abandoned calls
    reserved_micros: int  # calls in flight, at their worst case
    calls: int

    @property
    def remaining_micros(self) -> int:
        return max(0, self.budget_micros - self.spent_micros - self.reserved_micros)

    @property
    def budget(self) -> float:
        return self.budget_micros / MICROS

    @property
    def spent(self) -> float:
        return self.spent_micros / MICROS

    @property
    def reserved(self) -> float:
        return self.reserved_micros / MICROS

    @property
    def remaining(self) -> float:
        return self.remaining_micros / MICROS

    @property
    def remaining_share(self) -> float:
        return self.remaining_micros / self.budget_micros if self.budget_micros > 0 else 0.0


def utc_day() -> str:
    return datetime.now(UTC).date().isoformat()


class BudgetLedger:
    """Reserve, settle and sum spending against one daily budget."""

    def __init__(self, path: Path, *, daily_budget: float, currency: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.budget_micros = round(daily_budget * MICROS)
        self.currency = currency
        self._local = threading.local()
        with self._connection() as connection:
            connection.executescript(_SCHEMA)

    def reserve(
        self, model: str, worst_case_micros: int, *, task: str | None = None
    ) -> Reservation:
        """Hold the worst case of a call; raise BudgetExceeded if it does not fit today."""
        day, now = utc_day(), datetime.now(UTC).isoformat()
        pid, started = _this_process()
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            self._abandon_dead(connection, day)
            used = self._used(connection, day)
            if used + worst_case_micros > self.budget_micros:
                left = _money(max(0, self.budget_micros - used))
                raise BudgetExceeded(
                    f"a call to {model} may cost up to {_money(worst_case_micros)} "
                    f"{self.currency} but only {left} of today's {_money(self.budget_micros)} "
                    f"{self.currency} is left (ORCHESTRATE_DAILY_BUDGET)"
                )
            cursor = connection.execute(
                "INSERT INTO spend (day, currency, model, task, state, reserved, pid, "
                "pid_started, created_at) VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?)",
                (day, self.currency, model, task, worst_case_micros, pid, started, now),
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return Reservation(int(cursor.lastrowid or 0), model, worst_case_micros)

    def settle(
        self, reservation: Reservation, cost_micros: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Replace the reservation by what the call really cost."""
        self._close(reservation, "settled", cost_micros, prompt_tokens, completion_tokens)

    def release(self, reservation: Reservation) -> None:
        """The call never reached the model (it failed before sending): it costs nothing."""
        self._close(reservation, "released", 0, 0, 0)

    def today(self) -> DaySpend:
        """Today's spend, reservations and remaining budget."""
        day = utc_day()
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            self._abandon_dead(connection, day)
            spent, reserved, calls = connection.execute(
                "SELECT COALESCE(SUM(CASE WHEN state = 'open' THEN 0 ELSE cost END), 0), "
                "COALESCE(SUM(CASE WHEN state = 'open' THEN reserved ELSE 0 END), 0), "
                "COUNT(*) FROM spend WHERE day = ? AND currency = ? AND state != 'released'",
                (day, self.currency),
            ).fetchone()
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return DaySpend(
            day, self.currency, self.budget_micros, int(spent), int(reserved), int(calls)
        )

    def remaining_share(self) -> float:
        """What is left of today's budget, from 0 to 1, without reclaiming anything."""
        if self.budget_micros <= 0:
            return 0.0
        used = self._used(self._connection(), utc_day())
        return max(0.0, (self.budget_micros - used) / self.budget_micros)

    def _close(
        self, reservation: Reservation, state: str, cost: int, prompt: int, completion: int
    ) -> None:
        connection = self._connection()
        with connection:
            connection.execute(
                "UPDATE spend SET state = ?, cost = ?, prompt_tokens = ?, completion_tokens = ?,"
                " settled_at = ? WHERE id = ? AND state = 'open'",
                (state, cost, prompt, completion, datetime.now(UTC).isoformat(), reservation.id),
            )

    def _used(self, connection: sqlite3.Connection, day: str) -> int:
        row = connection.execute(
            "SELECT COALESCE(SUM(CASE WHEN state = 'open' THEN reserved ELSE cost END), 0) "
            "FROM spend WHERE day = ? AND currency = ?",
            (day, self.currency),
        ).fetchone()
        return int(row[0])

    def _abandon_dead(self, connection: sqlite3.Connection, day: str) -> None:
        """Settle at worst case the open reservations of processes that no longer exist."""
        rows = connection.execute(
            "SELECT DISTINCT pid, pid_started FROM spend WHERE day = ? AND state = 'open'", (day,)
        ).fetchall()
        for pid, started in rows:
            if not process_alive(int(pid), float(started)):
                connection.execute(
                    "UPDATE spend SET state = 'abandoned', cost = reserved, settled_at = ? "
                    "WHERE state = 'open' AND pid = ? AND pid_started = ?",
                    (datetime.now(UTC).isoformat(), pid, started),
                )

    def _connection(self) -> sqlite3.Connection:
        """One connection per thread: sqlite3 connections must not cross threads."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None or getattr(self._local, "pid", None) != os.getpid():
            connection = connect_shared(self.path, autocommit=True)
            self._local.connection, self._local.pid = connection, os.getpid()
        return connection


def process_alive(pid: int, started: float) -> bool:
    """True while the process that recorded (pid, start time) still runs."""
    try:
        process = psutil.Process(pid)
        created = float(process.create_time())
        # A killed child its parent has not reaped yet is a zombie: dead, though listed.
        zombie = process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
    return abs(created - started) < 0.01 and not zombie


@functools.cache
def _process_identity(pid: int) -> tuple[int, float]:
    return pid, psutil.Process(pid).create_time()


def _this_process() -> tuple[int, float]:
    return _process_identity(os.getpid())  # keyed by pid, so a forked child gets its own


def _money(micros: int) -> str:
    return f"{micros / MICROS:.4f}".rstrip("0").rstrip(".") if micros else "0"
