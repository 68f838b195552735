"""The data-interval algebra: merge, split, clip, defaults, the 2,000 limit, the issue's example."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.materialization.intervals import (
    MAX_INTERVALS,
    Interval,
    Status,
    Timeline,
    backfill_windows,
    check_capacity,
)
from services.materialization.jobs import Window
from shared.errors import FailedPrecondition, InvalidArgument

C, INC, N, P = Status.COMPLETE, Status.INCOMPLETE, Status.NONE, Status.PENDING


def day(d, hour=4):
    return datetime(2026, 4, d, hour, tzinfo=UTC)


def statuses(timeline, window=None):
    return [(i.start, i.end, i.status) for i in timeline.covering(window)]


@pytest.fixture
def example():
    """04-01 NONE, 04-02 INCOMPLETE, 04-03 NONE, 04-04 COMPLETE, 04-05 NONE (04:00 to 04:00)."""
    return Timeline().set(Window(day(2), day(3)), INC).set(Window(day(4), day(5)), C)


def test_the_issue_example_with_a_window(example):
    windows = backfill_windows(example, [C, INC], day(2, 12), day(4, 12))
    assert windows == [Window(day(2, 12), day(3)), Window(day(4), day(4, 12))]
    after = example
    for window in windows:
        after = after.set(window, C)
    assert statuses(after, Window(day(1), day(6))) == [
        (day(1), day(2), N),
        (day(2), day(2, 12), INC),
        (day(2, 12), day(3), C),
        (day(3), day(4), N),
        (day(4), day(5), C),
        (day(5), day(6), N),
    ]


def test_the_issue_example_without_a_window(example):
    assert backfill_windows(example, [C, INC], None, None) == [
        Window(day(2), day(3)),
        Window(day(4), day(5)),
    ]


def test_missing_edges_default_to_the_materialized_span(example):
    assert backfill_windows(example, [N], None, None) == [Window(day(3), day(4))]
    assert backfill_windows(example, [C], day(4, 6), None) == [Window(day(4, 6), day(5))]
    assert backfill_windows(example, [INC], None, day(2, 6)) == [Window(day(2), day(2, 6))]


def test_never_materialized_view_needs_both_edges():
    with pytest.raises(InvalidArgument) as caught:
        backfill_windows(Timeline(), [N], day(1), None)
    assert caught.value.field == "window"
    assert backfill_windows(Timeline(), [], day(1), day(2)) == [Window(day(1), day(2))]


def test_pending_intervals_never_get_a_job(example):
    running = example.set(Window(day(3), day(4)), P)
    assert backfill_windows(running, [N, P, INC], day(1), day(6)) == [
        Window(day(1), day(2)),
        Window(day(2), day(3)),
        Window(day(5), day(6)),
    ]


def test_adjacent_equal_statuses_merge_and_a_different_status_splits():
    timeline = Timeline().set(Window(day(1), day(2)), C).set(Window(day(2), day(3)), C)
    assert timeline.intervals == (Interval(day(1), day(3), C),)
    split = timeline.set(Window(day(1, 12), day(2, 12)), INC, "job2")
    assert [(i.start, i.end, i.status) for i in split.intervals] == [
        (day(1), day(1, 12), C),
        (day(1, 12), day(2, 12), INC),
        (day(2, 12), day(3), C),
    ]
    assert split.set(Window(day(1, 12), day(2, 12)), C).intervals == (
        Interval(day(1), day(3), C, ""),
    )


def test_setting_none_erases():
    timeline = Timeline().set(Window(day(1), day(3)), C).set(Window(day(2), day(3)), N)
    assert timeline.intervals == (Interval(day(1), day(2), C),)


def test_covering_clips_and_fills_gaps(example):
    assert statuses(example, Window(day(2, 6), day(3, 6))) == [
        (day(2, 6), day(3), INC),
        (day(3), day(3, 6), N),
    ]
    assert statuses(Timeline(), Window(day(1), day(2))) == [(day(1), day(2), N)]


def test_status_everywhere_names_the_parts_that_differ(example):
    assert example.status_everywhere(Window(day(2), day(3)), INC) == []
    [other] = example.status_everywhere(Window(day(2, 12), day(3, 12)), INC)
    assert (other.start, other.end, other.status) == (day(3), day(3, 12), N)


def test_the_interval_limit_refuses_fragmenting_work():
    base = datetime(2026, 1, 1, tzinfo=UTC)
    timeline = Timeline()
    for index in range(0, 2 * MAX_INTERVALS - 2, 2):
        timeline = timeline.set(
            Window(base + timedelta(hours=index), base + timedelta(hours=index + 1)), C
        )
    assert len(timeline.intervals) == MAX_INTERVALS - 1
    far = base + timedelta(days=1000)
    check_capacity(timeline, [Window(far, far + timedelta(hours=1))])
    with pytest.raises(FailedPrecondition, match="backfill the gaps"):
        check_capacity(
            timeline,
            [
                Window(far, far + timedelta(hours=1)),
                Window(far + timedelta(hours=2), far + timedelta(hours=3)),
            ],
        )
    full = timeline.set(Window(far, far + timedelta(hours=1)), C)
    assert len(full.intervals) == MAX_INTERVALS
    # Filling a gap merges its neighbours, so it stays allowed at the limit.
    check_capacity(full, [Window(base + timedelta(hours=1), base + timedelta(hours=2))])
