"""Tests for orchestrate.llm.compute: the one thread that runs the embedded model's torch work."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from orchestrate.llm.compute import ComputeThread


@pytest.fixture
def compute() -> Iterator[ComputeThread]:
    thread = ComputeThread("test-compute")
    yield thread
    thread.stop()


def test_work_runs_on_one_thread_and_returns_its_result(compute: ComputeThread) -> None:
    names = [compute.call(lambda: threading.current_thread().name) for _ in range(3)]

    assert names == ["test-compute"] * 3
    assert compute.call(lambda: 6 * 7) == 42


def test_an_error_reaches_the_caller_and_the_thread_goes_on(compute: ComputeThread) -> None:
    def fail() -> None:
        raise ValueError("bad weights")

    with pytest.raises(ValueError, match="bad weights"):
        compute.call(fail)
    assert compute.call(lambda: "still serving") == "still serving"


def test_a_call_from_the_compute_thread_runs_in_place(compute: ComputeThread) -> None:
    # Waiting on a queue that only this thread serves would deadlock.
    assert compute.call(lambda: compute.call(lambda: "nested")) == "nested"


def test_work_runs_in_order_and_long_work_can_see_others_waiting(compute: ComputeThread) -> None:
    release = threading.Event()
    order: list[str] = []
    seen_waiting: list[bool] = []

    def long_work() -> None:
        release.wait(5)
        seen_waiting.append(compute.others_waiting())
        order.append("long")

    first = compute.submit(long_work)
    second = compute.submit(lambda: order.append("short"))
    release.set()
    first.result(5), second.result(5)

    assert order == ["long", "short"]
    assert seen_waiting == [True]
    assert not compute.others_waiting()


def test_stop_ends_the_thread_and_new_work_starts_another(compute: ComputeThread) -> None:
    first = compute.call(threading.current_thread)
    compute.stop()

    assert not first.is_alive()
    assert compute.call(lambda: "again") == "again"
