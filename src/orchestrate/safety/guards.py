"""The guards of one build, gathered in one object that the CLI builds from settings."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrate.errors import SettingsError
from orchestrate.safety.secrets import SecretScanner

if TYPE_CHECKING:
    from orchestrate.llm.backend import Backend
    from orchestrate.safety.budget import BudgetLedger
    from orchestrate.safety.pricing import Pricing
    from orchestrate.safety.spend import SpendGuard
    from orchestrate.settings import Settings


@dataclass(frozen=True)
class SafetyGuards:
    """What every task of a build runs inside; the defaults guard writes only."""

    lock_dir: Path | None = None  # None: the writer's default lock folder
    scanner: SecretScanner = field(default_factory=SecretScanner)
    worker_limit: Callable[[], int] | None = None  # asked before each task starts
    spend_guard: SpendGuard | None = None  # reserves and settles paid model calls


def build_guards(settings: Settings, models: Iterable[str] = ()) -> SafetyGuards:
    """Every guard of a build, from settings; fails early on an unpriced model.

    ``models`` are all the models the build may call (agents' own, fallbacks); the
    main model is always among them.
    """
    from orchestrate.safety.limiter import LimiterConfig, WorkerLimiter
    from orchestrate.safety.pricing import load_pricing
    from orchestrate.safety.spend import SpendGuard

    pricing = load_pricing(settings.pricing_file, currency=settings.currency)
    prices = [pricing.price_of(model) for model in {settings.model, *models}]
    ledger = open_ledger(settings)
    limiter = None
    if not all(
        price.is_free for price in prices
    ):  # a local-only run is not throttled by money it does not spend
        config = LimiterConfig(
            settings.max_workers, settings.budget_thresholds, settings.budget_hysteresis
        )
        limiter = WorkerLimiter(ledger.remaining_share, config)
    return SafetyGuards(
        lock_dir=settings.locks_dir,
        scanner=SecretScanner(settings.secret_mode),
        worker_limit=limiter.limit if limiter is not None else None,
        spend_guard=SpendGuard(ledger, pricing, fallback=fallback_factory(settings, pricing)),
    )


def open_ledger(settings: Settings) -> BudgetLedger:
    """The machine's spend ledger, in the state directory."""
    from orchestrate.safety.budget import BudgetLedger

    return BudgetLedger(
        settings.home / "budget.sqlite3",
        daily_budget=settings.daily_budget,
        currency=settings.currency,
    )


def fallback_factory(settings: Settings, pricing: Pricing) -> Callable[[], Backend] | None:
    """What builds the free model that answers when the budget is spent; None: none."""
    fallback = settings.fallback_model
    if fallback is None:
        return None
    if not pricing.price_of(fallback).is_free:
        raise SettingsError(
            f"ORCHESTRATE_FALLBACK_MODEL={fallback} is not free in {pricing.source}; "
            f"the fallback answers when the budget is spent, so it must be a local model"
        )

    def create() -> Backend:
        from orchestrate.llm.backend import create_backend
        from orchestrate.safety.gpu import GpuLeaseManager

        return create_backend(
            fallback,
            models_dir=settings.models_dir,
            embedded_model=settings.embedded_model,
            leases=GpuLeaseManager.from_settings(settings),
        )

    return create
