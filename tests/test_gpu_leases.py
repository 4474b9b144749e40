"""Tests for orchestrate.safety.gpu: capacity, first come first served, reclaim, caps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orchestrate.errors import GpuLeaseError, LeaseTimeoutError, LeaseTooLargeError
from orchestrate.safety.gpu import (
    MIB,
    DeviceCapacity,
    GpuLeaseManager,
    cap_process_memory,
    measure_capacity,
    normalise_device,
)

SRC = Path(__file__).resolve().parents[1] / "src"
TIMEOUT = 30.0


def fixed(capacity_mib: int):
    def capacity(device: str) -> DeviceCapacity:
        return DeviceCapacity(device, capacity_mib + 10, capacity_mib, "test")

    return capacity


@pytest.fixture
def manager(tmp_path):
    return GpuLeaseManager(tmp_path / "state", capacity=fixed(100), timeout=TIMEOUT)


def held(manager, device="cpu"):
    return [(entry.holder, entry.mib) for entry in manager.snapshot(device).held]


def waiting(manager, device="cpu"):
    return [entry.holder for entry in manager.snapshot(device).waiting]


def wait_until(condition, what):
    event = threading.Event()
    for _ in range(6000):  # polls another thread's progress; fails loudly after ~30 s
        if condition():
            return
        event.wait(0.005)
    raise AssertionError(f"timed out waiting for {what}")


# --- capacity ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "device"), [("cpu", "cpu"), ("cuda", "cuda:0"), ("cuda:3", "cuda:3"), ("mps", "mps")]
)
def test_device_names_are_normalised(raw, device):
    assert normalise_device(raw) == device


@pytest.mark.parametrize("raw", ["tpu", "cpu:1", "cuda:x", ""])
def test_unknown_devices_are_refused(raw):
    with pytest.raises((GpuLeaseError, ValueError)):
        normalise_device(raw)


def test_cpu_capacity_from_the_setting_minus_the_margin():
    capacity = measure_capacity("cpu", margin_mib=512, cpu_capacity_mib=4096, cpu_ram_share=0.5)
    assert (capacity.total_mib, capacity.capacity_mib) == (4096, 3584)


def test_cpu_capacity_defaults_to_a_share_of_ram(monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"total": 16 * 1024**3}))
    capacity = measure_capacity("cpu", margin_mib=1024, cpu_capacity_mib=None, cpu_ram_share=0.25)
    assert (capacity.total_mib, capacity.capacity_mib) == (4096, 3072)


def test_cuda_capacity_from_mem_get_info(monkeypatch):
    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(
        torch.cuda, "mem_get_info", lambda index: asked.append(index) or (2 * MIB, 8192 * MIB)
    )
    capacity = measure_capacity("cuda:1", margin_mib=512, cpu_capacity_mib=None, cpu_ram_share=1)
    assert (capacity.total_mib, capacity.capacity_mib, asked) == (8192, 7680, [1])
    with pytest.raises(GpuLeaseError, match="no CUDA device cuda:2"):
        measure_capacity("cuda:2", margin_mib=0, cpu_capacity_mib=None, cpu_ram_share=1)


def test_mps_capacity_from_recommended_max_memory(monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 12288 * MIB)
    capacity = measure_capacity("mps", margin_mib=2048, cpu_capacity_mib=None, cpu_ram_share=1)
    assert (capacity.total_mib, capacity.capacity_mib) == (12288, 10240)


def test_no_cuda_here_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GpuLeaseError, match="no CUDA device cuda:0 on this machine"):
        measure_capacity("cuda", margin_mib=0, cpu_capacity_mib=None, cpu_ram_share=1)


def test_the_process_is_capped_to_its_leases(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, i: calls.append(("cuda", f, i))
    )
    monkeypatch.setattr(
        torch.mps, "set_per_process_memory_fraction", lambda f: calls.append(("mps", f))
    )
    cap_process_memory("cuda:1", 2048, 8192)
    cap_process_memory("mps", 3000, 1000)
    cap_process_memory("cuda:0", 0, 8192)  # nothing held: leave the allocator alone
    assert calls == [("cuda", 0.25, 1), ("mps", 1.0)]


def test_a_cuda_lease_caps_the_process(tmp_path, monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, i: calls.append((f, i))
    )
    manager = GpuLeaseManager(tmp_path, capacity=fixed(1000))
    with manager.lease("a", "cuda:0", 505), manager.lease("b", "cuda:0", 300):
        pass
    assert calls == [(0.5, 0), (805 / 1010, 0)]  # what this process holds, of the total


# --- granting -----------------------------------------------------------------------------


def test_a_lease_is_released_on_any_exit(manager):
    with pytest.raises(RuntimeError), manager.lease("model", "cpu", 60):
        assert held(manager) == [("model", 60)]
        raise RuntimeError("generation failed")
    assert held(manager) == []


def test_a_request_over_capacity_fails_at_once_with_both_numbers(manager):
    with pytest.raises(LeaseTooLargeError) as info:
        manager.lease("finetune", "cpu", 101)
    assert "finetune asks for 101 MiB on cpu but its capacity is 100 MiB" in str(info.value)
    assert "110 MiB from test" in str(info.value)
    assert waiting(manager) == []


def test_a_timeout_names_the_holders(manager):
    with manager.lease("finetune", "cpu", 90):
        with pytest.raises(LeaseTimeoutError) as info:
            manager.lease("embedded for dev", "cpu", 20, timeout=0.05)
        message = str(info.value)
        assert message.startswith("embedded for dev waited 0.05 s for 20 MiB on cpu")
        assert f"held by: finetune (pid {os.getpid()}, 90 MiB)" in message
        assert waiting(manager) == []


def test_a_large_request_is_not_overtaken_by_small_ones(manager):
    order: list[str] = []
    small_granted = threading.Event()

    def take(name: str, mib: int, granted: threading.Event | None = None) -> None:
        with manager.lease(name, "cpu", mib):
            order.append(name)
            if granted is not None:
                granted.set()

    first = manager.lease("first", "cpu", 60)
    large = threading.Thread(target=take, args=("large", 50))
    large.start()
    wait_until(lambda: waiting(manager) == ["large"], "the large request to queue")
    small = threading.Thread(target=take, args=("small", 10, small_granted))
    small.start()
    wait_until(lambda: waiting(manager) == ["large", "small"], "the small request to queue")

    # 40 MiB are free, enough for "small", but "large" is ahead of it. Sound in one
    # direction: a correct queue keeps "small" waiting however long we look.
    assert not small_granted.wait(timeout=0.2)
    first.release()
    large.join(TIMEOUT)
    small.join(TIMEOUT)
    assert order[0] == "large"
    assert sorted(order) == ["large", "small"]


def test_priority_goes_ahead_of_the_queue(manager):
    order: list[str] = []

    def take(name: str, priority: int) -> None:
        with manager.lease(name, "cpu", 80, priority=priority):
            order.append(name)

    first = manager.lease("first", "cpu", 80)
    normal = threading.Thread(target=take, args=("normal", 0))
    normal.start()
    wait_until(lambda: waiting(manager) == ["normal"], "the normal request")
    urgent = threading.Thread(target=take, args=("urgent", 5))
    urgent.start()
    wait_until(lambda: len(waiting(manager)) == 2, "the urgent request")
    first.release()
    normal.join(TIMEOUT)
    urgent.join(TIMEOUT)
    assert order == ["urgent", "normal"]


HOLDER = """
import sys
from pathlib import Path
from orchestrate.safety.gpu import DeviceCapacity, GpuLeaseManager
manager = GpuLeaseManager(
    Path(sys.argv[1]), capacity=lambda device: DeviceCapacity(device, 110, 100, "test")
)
lease = manager.lease("doomed finetune", "cpu", 80)
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_holder_killed_by_sigkill_is_reclaimed_and_the_waiter_proceeds(tmp_path):
    manager = GpuLeaseManager(tmp_path, capacity=fixed(100), timeout=TIMEOUT)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    assert held(manager) == [("doomed finetune", 80)]
    granted = []
    waiter = threading.Thread(target=lambda: granted.append(manager.lease("next", "cpu", 50)))
    waiter.start()
    wait_until(lambda: waiting(manager) == ["next"], "the waiter to queue")

    holder.send_signal(signal.SIGKILL)
    holder.wait(TIMEOUT)
    waiter.join(TIMEOUT)

    assert [lease.entry.holder for lease in granted] == ["next"]
    assert held(manager) == [("next", 50)]
    granted[0].release()


WORKER = """
import json, random, sys, time
from pathlib import Path
from orchestrate.safety.gpu import DeviceCapacity, GpuLeaseManager
state, seed, count, go = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
manager = GpuLeaseManager(state, capacity=lambda d: DeviceCapacity(d, 100, 100, "test"))
rng = random.Random(seed)
log = []
while not go.exists():
    pass
for _ in range(count):
    mib = rng.randint(10, 70)
    with manager.lease(f"worker {seed}", "cpu", mib):
        acquired = time.monotonic()
        time.sleep(rng.random() * 0.005)  # the work done under the lease
        log.append([acquired, time.monotonic(), mib])
print(json.dumps(log))
"""


def test_processes_never_hold_more_than_the_capacity(tmp_path):
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), str(seed), "12", str(go)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in range(4)
    ]
    go.touch()
    logs = [json.loads(worker.communicate(timeout=120)[0]) for worker in workers]

    assert peak_held(interval for log in logs for interval in log) <= 100
    assert sum(len(log) for log in logs) == 48


def peak_held(intervals) -> int:
    """The most MiB held at once, from (acquired, released, mib) intervals."""
    changes = []
    for acquired, released, mib in intervals:
        changes += [(acquired, mib), (released, -mib)]
    peak = now = 0
    for _, change in sorted(changes, key=lambda item: (item[0], item[1])):  # releases first
        now += change
        peak = max(peak, now)
    return peak


def test_embedded_model_lease_size_and_device(tmp_path):
    import torch

    from conftest import tiny_llama
    from orchestrate.llm.decoder import LlamaDecoder
    from orchestrate.llm.embedded import LoadedModel, estimate_lease_mib

    model = torch.nn.Linear(1024, 1024)  # 4 MiB of fp32 weights
    assert estimate_lease_mib(model) == 5
    loaded = LoadedModel(
        LlamaDecoder(tiny_llama(), "fp32", max_rows=1),
        tokenizer=None,
        context_window=2048,
        eos=frozenset(),
        lease_mib=estimate_lease_mib(model),
    )
    manager = GpuLeaseManager(tmp_path, capacity=fixed(100))
    with loaded._lease(manager, "embedded:test for dev"):
        assert held(manager) == [("embedded:test for dev", 5)]
    assert held(manager) == []


def test_the_embedded_lease_covers_a_full_kv_cache_for_every_row() -> None:
    from conftest import tiny_llama
    from orchestrate.llm.embedded import estimate_lease_mib

    model = tiny_llama()  # 2 layers x 2 key/value heads x 16 dims: 512 bytes a position
    weights_only = estimate_lease_mib(model)  # under 1 MiB of weights
    full = estimate_lease_mib(model, rows=4, positions=8192)  # and 16 MiB of cache

    assert (weights_only, full) == (1, 20)  # a quarter more for activations
