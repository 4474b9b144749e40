"""The budget step of a model call: reserve the worst case, call, settle to the real cost.

A call to a free (local) model skips the ledger. A paid call that does not fit in what
is left of today's budget goes to the fallback model when one is configured, and fails
with ``BudgetExceeded`` otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from orchestrate.errors import (
    BackendRefusedError,
    BudgetExceeded,
    CircuitOpenError,
    MalformedReplyError,
    RateLimitedError,
    ServerError,
)
from orchestrate.llm.backend import Backend, BackendLayer, Completion, CompletionRequest
from orchestrate.safety.pricing import MICROS, Pricing

if TYPE_CHECKING:
    from orchestrate.safety.budget import Reservation

logger = logging.getLogger(__name__)


def may_have_been_billed(error: BaseException) -> bool:
    """False for failures that show the provider generated nothing: a rate limit, a
    refusal (4xx), a server error status, a connection that never opened, or our own
    open circuit that never sent the request. A timeout, a reply cut short or garbled,
    a cancelled call: the tokens may have been generated, and billed."""
    if isinstance(error, MalformedReplyError):
        return True
    not_billed = (RateLimitedError, BackendRefusedError, CircuitOpenError, ServerError)
    return not isinstance(error, not_billed)


class Ledger(Protocol):
    """Where reservations are made: the machine's ``BudgetLedger``, or on a Ray worker
    the ``RemoteLedger`` that asks the driver's (see ray_budget.py)."""

    def reserve(
        self, model: str, worst_case_micros: int, *, task: str | None = None
    ) -> Reservation: ...

    def settle(
        self, reservation: Reservation, cost_micros: int, prompt_tokens: int, completion_tokens: int
    ) -> None: ...


@dataclass(frozen=True)
class SpentCall:
    """A finished call: its answer, the model that gave it and what it cost."""

    completion: Completion
    model: str
    cost: float  # in the ledger's currency


class SpendGuard:
    """Puts every paid call of a run through the shared ledger."""

    def __init__(
        self,
        ledger: Ledger,
        pricing: Pricing,
        *,
        fallback: Callable[[], Backend] | None = None,
    ) -> None:
        self.ledger = ledger
        self.pricing = pricing
        self._fallback = fallback
        self._fallback_backend: Backend | None = None
        self._lock = threading.Lock()

    def complete(self, backend: Backend, request: CompletionRequest, *, task: str) -> SpentCall:
        """Answer ``request`` within the budget; raise BudgetExceeded when it cannot."""
        price = self.pricing.price_of(backend.name)
        if price.is_free:
            return SpentCall(backend.complete(request), backend.name, 0.0)
        prompt_tokens = backend.count_tokens(request.messages)
        worst_case = price.cost_micros(prompt_tokens, request.max_tokens)
        try:
            reservation = self.ledger.reserve(backend.name, worst_case, task=task)
        except BudgetExceeded as exc:
            if self._fallback is None:
                raise
            fallback = self._fallback_model(self._fallback)
            logger.warning("%s; answering with %s instead", exc, fallback.name)
            return SpentCall(fallback.complete(request), fallback.name, 0.0)
        try:
            completion = backend.complete(request)
        except BaseException as exc:
            if not may_have_been_billed(exc):
                self.ledger.settle(reservation, 0, 0, 0)
                raise
            # The call may have reached the provider before failing: count the worst case.
            self.ledger.settle(reservation, worst_case, prompt_tokens, 0)
            raise
        cost = price.cost_micros(completion.prompt_tokens, completion.completion_tokens)
        if cost > worst_case:  # recorded as reported: the ledger must not understate spend
            logger.warning("a call to %s cost more than its reservation", backend.name)
        used = (completion.prompt_tokens, completion.completion_tokens)
        self.ledger.settle(reservation, cost, *used)
        return SpentCall(completion, backend.name, cost / MICROS)

    def _fallback_model(self, make: Callable[[], Backend]) -> Backend:
        with self._lock:
            if self._fallback_backend is None:
                self._fallback_backend = make()
                self._fallback_backend.prepare()
            return self._fallback_backend


class BudgetedBackend(BackendLayer):
    """A backend whose every call goes through the spend guard.

    It sits under the response cache, so a call the cache answers never touches the
    ledger: a cached answer costs nothing and needs no budget.
    """

    def __init__(self, inner: Backend, guard: SpendGuard) -> None:
        super().__init__(inner)
        self._guard = guard

    def complete(self, request: CompletionRequest) -> Completion:
        spent = self._guard.complete(self.inner, request, task=request.task)
        return replace(spent.completion, model=spent.model, cost=spent.cost)
