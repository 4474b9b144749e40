"""Open the SQLite files that several processes share: WAL, a busy timeout, and a retry.

Every piece of machine-wide state (budget ledger, device leases, response cache,
duration history) and each run's checkpoint is a SQLite file in WAL mode, so readers
never block the writer. Switching a fresh file to WAL needs a moment of exclusive access
and, unlike ordinary statements, fails at once with "database is locked" instead of
waiting when several processes open the file together; that one step is retried.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

BUSY_TIMEOUT_SECONDS = 60.0


def _is_busy(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


@retry(
    retry=retry_if_exception(_is_busy),
    wait=wait_random_exponential(multiplier=0.005, max=0.2),
    stop=stop_after_delay(BUSY_TIMEOUT_SECONDS),
    reraise=True,
)
def _use_wal(connection: sqlite3.Connection) -> None:
    (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
    if str(mode).lower() != "wal":
        connection.execute("PRAGMA journal_mode=WAL")


def connect_shared(
    path: Path,
    *,
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    autocommit: bool = False,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """A connection in WAL mode; ``autocommit`` leaves transactions to explicit BEGINs.

    ``synchronous=NORMAL`` survives a crash of the process; ``FULL`` also a power cut.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_SECONDS,
        isolation_level=None if autocommit else "DEFERRED",
        check_same_thread=check_same_thread,
    )
    try:
        _use_wal(connection)
        connection.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        connection.close()
        raise
    return connection
