"""Recurring schedules: when runs are due and which window each run materializes."""

from __future__ import annotations

from datetime import datetime, timedelta

from services.materialization.jobs import Recurrence, Window

MAX_CATCH_UP = 100


def due_triggers(
    recurrence: Recurrence, last_trigger: datetime | None, now: datetime, limit: int = MAX_CATCH_UP
) -> list[datetime]:
    """Trigger times after `last_trigger` up to `now`, oldest first.

    Missed triggers (after downtime) are all returned, not skipped; `limit` bounds one call so
    a long outage is caught up over several scheduler cycles.
    """
    period = recurrence.period
    if period <= timedelta(0) or recurrence.start_time > now:
        return []
    if last_trigger is None:
        first = recurrence.start_time
    else:
        elapsed = (last_trigger - recurrence.start_time) // period + 1
        first = recurrence.start_time + max(elapsed, 0) * period
    triggers = []
    moment = first
    while moment <= now and len(triggers) < limit:
        triggers.append(moment)
        moment += period
    return triggers


def run_window(trigger: datetime, recurrence: Recurrence, source_delay: timedelta) -> Window:
    """A run triggered at t materializes [t - source_delay - interval, t - source_delay)."""
    end = trigger - source_delay
    return Window(end - recurrence.period, end)
