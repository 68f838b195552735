"""Data intervals: the materialization status of every instant of a feature view's timeline.

A timeline is a sorted list of non-overlapping intervals with a status; instants it does not
cover are NONE. Setting a status over a window splits the intervals it cuts and merges
neighbours that end up with the same status, so the list stays minimal. Pure functions only:
storage and locking live in the repository.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from services.materialization.jobs import Window
from shared.errors import FailedPrecondition, InvalidArgument

MAX_INTERVALS = 2000


class Status(enum.StrEnum):
    NONE = "NONE"
    PENDING = "PENDING"
    INCOMPLETE = "INCOMPLETE"
    COMPLETE = "COMPLETE"


@dataclass(frozen=True)
class Interval:
    start: datetime
    end: datetime
    status: Status
    job_id: str = ""

    @property
    def window(self) -> Window:
        return Window(self.start, self.end)


@dataclass(frozen=True)
class Timeline:
    """The non-NONE intervals of one feature-view version and store, in time order."""

    intervals: tuple[Interval, ...] = ()

    def set(self, window: Window, status: Status, job_id: str = "") -> Timeline:
        """The timeline with `window` set to `status` (NONE erases it)."""
        kept: list[Interval] = []
        for interval in self.intervals:
            if interval.end <= window.start or interval.start >= window.end:
                kept.append(interval)
                continue
            if interval.start < window.start:
                kept.append(replace(interval, end=window.start))
            if interval.end > window.end:
                kept.append(replace(interval, start=window.end))
        if status is not Status.NONE:
            kept.append(Interval(window.start, window.end, status, job_id))
        return Timeline(_merge(sorted(kept, key=lambda interval: interval.start)))

    def covering(self, window: Window | None = None) -> list[Interval]:
        """Intervals in order with NONE gaps filled, clipped to `window` (default: the span
        from the first to the last non-NONE interval)."""
        if window is None:
            if not self.intervals:
                return []
            window = Window(self.intervals[0].start, self.intervals[-1].end)
        result: list[Interval] = []
        cursor = window.start
        for interval in self.intervals:
            if interval.end <= window.start or interval.start >= window.end:
                continue
            if interval.start > cursor:
                result.append(Interval(cursor, interval.start, Status.NONE))
            start, end = max(interval.start, window.start), min(interval.end, window.end)
            result.append(replace(interval, start=start, end=end))
            cursor = end
        if cursor < window.end:
            result.append(Interval(cursor, window.end, Status.NONE))
        return result

    def materialized_span(self) -> Window | None:
        """From the start of the first non-NONE interval to the end of the last."""
        if not self.intervals:
            return None
        return Window(self.intervals[0].start, self.intervals[-1].end)

    def status_everywhere(self, window: Window, status: Status) -> list[Interval]:
        """The parts of `window` whose status is not `status` (empty when all of it is)."""
        return [interval for interval in self.covering(window) if interval.status is not status]


def _merge(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    merged: list[Interval] = []
    for interval in intervals:
        previous = merged[-1] if merged else None
        if previous and previous.end == interval.start and previous.status == interval.status:
            merged[-1] = replace(
                previous, end=interval.end, job_id=interval.job_id or previous.job_id
            )
        else:
            merged.append(interval)
    return tuple(merged)


def backfill_windows(
    timeline: Timeline,
    statuses: Sequence[Status],
    start: datetime | None,
    end: datetime | None,
) -> list[Window]:
    """One window per interval whose status is wanted, clipped to [start, end).

    A missing start or end defaults to the edge of the materialized span; a view never
    materialized needs both. PENDING intervals never get a job: one is already running.
    """
    span = timeline.materialized_span()
    if span is None and (start is None or end is None):
        raise InvalidArgument(
            "window", "this view has never been materialized: give both start_time and end_time"
        )
    window = Window(
        start if start is not None else span.start,  # type: ignore[union-attr]
        end if end is not None else span.end,  # type: ignore[union-attr]
    )
    if window.end <= window.start:
        raise InvalidArgument("window.end_time", "must be after window.start_time")
    wanted = set(statuses or [Status.NONE]) - {Status.PENDING}
    return [interval.window for interval in timeline.covering(window) if interval.status in wanted]


def check_capacity(timeline: Timeline, windows: Iterable[Window]) -> None:
    """Refuse work that would leave more than MAX_INTERVALS intervals once it succeeds.

    Projecting success (COMPLETE) rather than the transient PENDING state keeps gap-filling
    backfills possible at the limit: they merge neighbours and shrink the timeline.
    """
    projected = timeline
    for window in windows:
        projected = projected.set(window, Status.COMPLETE)
    if len(projected.intervals) > MAX_INTERVALS:
        raise FailedPrecondition(
            f"this would leave {len(projected.intervals)} data intervals, more than the "
            f"{MAX_INTERVALS} allowed per feature view version: backfill the gaps between "
            "existing intervals first (backfilling merges them)",
            reason="TOO_MANY_INTERVALS",
        )
