"""Ctrl-C and SIGTERM for long commands: the first asks to stop cleanly, the second quits."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from orchestrate.cli.common import err_console


@contextmanager
def stop_on_signals(stop: threading.Event, *, stopping: str, quitting: str) -> Iterator[None]:
    """Set ``stop`` on the first signal and say ``stopping``; on the second, say
    ``quitting`` and leave at once with 130 (threads may be stuck in a model call)."""

    def handle(number: int, frame: FrameType | None) -> None:
        if stop.is_set():
            err_console.print(quitting, highlight=False)
            os._exit(130)
        stop.set()
        err_console.print(f"{stopping} (press Ctrl-C again to quit now)", highlight=False)

    previous = {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
