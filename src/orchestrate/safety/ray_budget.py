"""One budget ledger for a whole Ray cluster: an actor on the driver's node owns it.

Paid model calls on Ray workers reserve and settle through ``RemoteLedger``, which asks
the ``LedgerKeeper`` actor. The actor wraps the driver machine's ``BudgetLedger`` (the
SQLite file every ``orchestrate`` process of that machine shares), so reservations from
every node, and from local runs on the driver's machine, are admitted by the same
``BEGIN IMMEDIATE`` transaction and can never overspend together.

The actor is owned by the driver, not detached: it dies with the driver, and its open
reservations are then settled at their worst case like those of any dead process.
Importing this module does not import ray; ``start_ledger_keeper`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrate.errors import BudgetExceeded
from orchestrate.safety.budget import BudgetLedger, Reservation
from orchestrate.safety.pricing import MICROS


@dataclass(frozen=True)
class _Refused:
    """A reservation that did not fit, sent back as data: the proxy re-raises it."""

    message: str


class LedgerKeeper:
    """The actor's body: a ``BudgetLedger`` serving reservations from every node."""

    def __init__(self, path: Path, daily_budget: float, currency: str) -> None:
        self._ledger = BudgetLedger(path, daily_budget=daily_budget, currency=currency)

    def reserve(
        self, model: str, worst_case_micros: int, task: str | None
    ) -> Reservation | _Refused:
        try:
            return self._ledger.reserve(model, worst_case_micros, task=task)
        except BudgetExceeded as exc:
            return _Refused(str(exc))

    def settle(
        self, reservation: Reservation, cost_micros: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self._ledger.settle(reservation, cost_micros, prompt_tokens, completion_tokens)

    def release(self, reservation: Reservation) -> None:
        self._ledger.release(reservation)

    def remaining_share(self) -> float:
        return self._ledger.remaining_share()


class RemoteLedger:
    """What a worker's spend guard holds: the ledger's calls, answered by the actor.

    Picklable (it holds only the actor handle), so it travels with each task.
    """

    def __init__(self, keeper: Any) -> None:
        self._keeper = keeper

    def reserve(
        self, model: str, worst_case_micros: int, *, task: str | None = None
    ) -> Reservation:
        import ray

        answer = ray.get(self._keeper.reserve.remote(model, worst_case_micros, task))
        if isinstance(answer, _Refused):
            raise BudgetExceeded(answer.message)
        if not isinstance(answer, Reservation):
            raise TypeError(f"the ledger actor answered {answer!r}, not a reservation")
        return answer

    def settle(
        self, reservation: Reservation, cost_micros: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
        import ray

        ray.get(
            self._keeper.settle.remote(reservation, cost_micros, prompt_tokens, completion_tokens)
        )

    def release(self, reservation: Reservation) -> None:
        import ray

        ray.get(self._keeper.release.remote(reservation))

    def remaining_share(self) -> float:
        import ray

        return float(ray.get(self._keeper.remaining_share.remote()))


def start_ledger_keeper(ledger: BudgetLedger) -> RemoteLedger:
    """Start the actor on this (the driver's) node, over the same ledger file."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(LedgerKeeper).options(
        num_cpus=0,  # it waits on SQLite, and must not take a slot a task could use
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    )
    keeper = actor.remote(ledger.path, ledger.budget_micros / MICROS, ledger.currency)
    return RemoteLedger(keeper)
