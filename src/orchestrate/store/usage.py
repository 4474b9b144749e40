"""Model usage totals per agent and per model, folded from a run's event log.

``run.json`` keeps tokens and calls per task. Which agent or model spent them, what the
response cache saved, which calls failed and how often a model fell back to another are
only in ``events.jsonl``, one ``llm_call`` (or ``model_fallback``) event at a time; this
module adds them up for ``orchestrate show``. It only reads events, and it accepts logs
of older versions (fields missing) and of newer ones (event types it does not know).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from orchestrate.store.events import Event, EventType, read_events

if TYPE_CHECKING:
    from collections.abc import Iterable

    from orchestrate.store.runs import RunFolder

UsageKey = Literal["agent", "model"]

UNKNOWN = "unknown"  # the group of an event that does not name its agent or model

# The field of a model_fallback event that names the group the fallback counts on.
_FALLBACK_FIELDS: dict[str, str] = {"agent": "agent", "model": "from_model"}


@dataclass
class UsageTotals:
    """What one agent or one model used during a run.

    ``calls`` counts the calls that reached the model, failed ones included (``failed``
    says how many); a cache hit counts only in ``cached`` and adds nothing else: it cost
    nothing and took no model time. Tokens and seconds are those of answered calls, so
    ``tokens_per_second`` is the model's speed; a failed call adds only its cost, since a
    failed paid call may still be billed.
    """

    calls: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    fallbacks: int = 0

    @property
    def tokens_per_second(self) -> float | None:
        """Completion tokens per second of answered calls; None when there were none."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else None

    def add_call(self, event: Event) -> None:
        """Count one ``llm_call`` event."""
        if event.get("cached"):
            self.cached += 1
            return
        self.calls += 1
        self.cost += _number(event, "cost")
        if event.get("error"):
            self.failed += 1
            return
        self.prompt_tokens += int(_number(event, "prompt_tokens"))
        self.completion_tokens += int(_number(event, "completion_tokens"))
        self.seconds += _number(event, "seconds")

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}


def usage_by(events: Iterable[Event], key: UsageKey) -> dict[str, UsageTotals]:
    """Totals per agent (``key="agent"``) or per model (``key="model"``), sorted by name.

    Fallbacks count on the model that fell back, and on an agent only when the event
    names one. Events of other types are ignored.
    """
    if key not in _FALLBACK_FIELDS:
        raise ValueError(f"usage is grouped by 'agent' or 'model', not {key!r}")
    fallback_field = _FALLBACK_FIELDS[key]
    totals: dict[str, UsageTotals] = {}
    for event in events:
        kind = event.get("type")
        if kind == EventType.LLM_CALL:
            _group(totals, event.get(key)).add_call(event)
        elif kind == EventType.MODEL_FALLBACK and fallback_field in event:
            _group(totals, event[fallback_field]).fallbacks += 1
    return dict(sorted(totals.items()))


def run_events(folder: RunFolder) -> list[Event]:
    """The events a run has logged so far; none when it has no log."""
    try:
        return list(read_events(folder.events_path))
    except FileNotFoundError:
        return []


def _group(totals: dict[str, UsageTotals], name: object) -> UsageTotals:
    return totals.setdefault(str(name) if name else UNKNOWN, UsageTotals())


def _number(event: Event, field: str) -> float:
    """A numeric field; 0 when it is missing or null (a log written before it existed)."""
    value = event.get(field)
    return float(value) if isinstance(value, int | float) else 0.0
