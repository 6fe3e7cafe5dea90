"""Schedules of periodic jobs: a number of seconds, or a cron expression (croniter)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter


@dataclass(frozen=True)
class Schedule:
    """When a periodic job fires.

    Parameters:
      text(str): what the user wrote: ``"300"`` (every 300 s, aligned to the epoch, so
        every scheduler agrees on the ticks) or a cron expression (UTC).
    """

    text: str
    interval: float | None = None

    def next_after(self, moment: float) -> float:
        """The first tick strictly after ``moment`` (Unix seconds)."""
        if self.interval is not None:
            return (math.floor(moment / self.interval) + 1) * self.interval
        start = datetime.fromtimestamp(moment, tz=UTC)
        return float(croniter(self.text, start).get_next(float))

    def last_at_or_before(self, moment: float) -> float:
        """The latest tick at or before ``moment``."""
        if self.interval is not None:
            return math.floor(moment / self.interval) * self.interval
        start = datetime.fromtimestamp(moment + 1e-6, tz=UTC)
        return float(croniter(self.text, start).get_prev(float))


def parse_schedule(text: str) -> Schedule:
    """Parse ``text``; raise ``ValueError`` naming the problem."""
    stripped = str(text).strip()
    try:
        seconds = float(stripped)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds) or seconds < 1:
            raise ValueError(f"schedule {text!r}: an interval must be at least 1 second")
        return Schedule(stripped, seconds)
    if not croniter.is_valid(stripped):
        raise ValueError(f"schedule {text!r} is neither a number of seconds nor a cron expression")
    return Schedule(stripped, None)
