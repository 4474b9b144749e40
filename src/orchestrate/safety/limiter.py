"""How many tasks may run at once, from the share of today's budget that is left.

Above the first threshold (50%) the configured maximum (8) runs; above the second (20%)
4; above the third (10%) 2; below it 1. Going down is immediate; going back up (when a
settled call cost less than its reservation, or a new day starts) needs the share to
clear the threshold by the hysteresis, so the limit does not flap around a boundary.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

STEP_WORKERS = (4, 2, 1)  # the limits below the first, second and third thresholds


@dataclass(frozen=True)
class LimiterConfig:
    max_workers: int = 8
    thresholds: tuple[float, float, float] = (0.5, 0.2, 0.1)
    hysteresis: float = 0.02

    def level_for(self, share: float, current: int | None = None) -> int:
        """The level (0 = max_workers, 3 = one worker) for a remaining share."""
        level = sum(share <= threshold for threshold in self.thresholds)
        if current is not None and level < current:
            # Rising: each threshold passed must be cleared by the hysteresis.
            level = sum(share < threshold + self.hysteresis for threshold in self.thresholds)
            level = min(level, current)
        return level

    def workers_at(self, level: int) -> int:
        return self.max_workers if level == 0 else min(self.max_workers, STEP_WORKERS[level - 1])


class WorkerLimiter:
    """Asked by the scheduler before each start: how many tasks may run now."""

    def __init__(self, remaining_share: Callable[[], float], config: LimiterConfig) -> None:
        self._remaining_share = remaining_share
        self.config = config
        self._level: int | None = None
        self._lock = threading.Lock()

    def limit(self) -> int:
        share = self._remaining_share()
        with self._lock:
            self._level = self.config.level_for(share, self._level)
            return self.config.workers_at(self._level)
