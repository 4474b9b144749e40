"""One thread for all of the embedded model's tensor work: loading and decoding.

torch runs a CPU kernel's parallel part on an OpenMP team that belongs to the calling
thread, so every thread that calls into torch gets a team of its own. Once the teams
hold more threads than the machine has cores, libgomp stops letting its idle workers
spin between parallel regions, and each of the few hundred small matrix products of a
decoding step pays for waking a sleeping thread. Measured on 2 cores: one fp16
projection of SmolLM2 takes 65 us when a single thread uses torch and 160 us once a
second thread has, which makes a whole decoding step ~1.6x slower. Hence one long-lived
thread, shared by every embedded model of the process, does that work in turn.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
_Work = tuple[Callable[[], Any], "Future[Any]"]
_STOP_TIMEOUT_SECONDS = 5.0  # at exit, how long queued work may still run


class ComputeThread:
    """A daemon thread running submitted callables one at a time, in order.

    A daemon, unlike ``ThreadPoolExecutor``'s workers, because the interpreter must be
    able to exit (Ctrl-C, a failed build) while a batch is still decoding.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.Queue[_Work | None] = queue.Queue()  # None: stop
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, work: Callable[[], T]) -> Future[T]:
        """Queue ``work``; its future holds what it returns or raises."""
        future: Future[T] = Future()
        self._queue.put((work, future))
        self._ensure_started()
        return future

    def call(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the compute thread and wait for its result (here if already on it)."""
        if threading.current_thread() is self._thread:
            return work()
        return self.submit(work).result()

    def others_waiting(self) -> bool:
        """Whether work is queued behind the one running: a long job should make way."""
        return not self._queue.empty()

    def stop(self, timeout: float = _STOP_TIMEOUT_SECONDS) -> None:
        """End the thread once the work queued before now is done.

        Called at exit: a process that exits while this thread is alive, after it has
        run fbgemm's fp16 kernels, is killed by SIGABRT ("terminate called without an
        active exception", exit status 134) instead of exiting with its own status.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._queue.put(None)
        thread.join(timeout)

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            work, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = work()
            except BaseException as exc:  # the caller gets it, whatever it is
                future.set_exception(exc)
            else:
                future.set_result(result)


compute_thread = ComputeThread("embedded-compute")
atexit.register(compute_thread.stop)
