"""Schedule triggers and windows, source delay included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.materialization.jobs import Frequency, Recurrence, Window
from services.materialization.schedules import due_triggers, run_window

START = datetime(2026, 4, 1, 0, tzinfo=UTC)
HOURLY = Recurrence(Frequency.HOUR, 1, START)


def test_a_run_covers_the_interval_before_the_source_delay():
    trigger = START + timedelta(hours=5)
    assert run_window(trigger, HOURLY, timedelta(minutes=15)) == Window(
        datetime(2026, 4, 1, 3, 45, tzinfo=UTC), datetime(2026, 4, 1, 4, 45, tzinfo=UTC)
    )
    daily = Recurrence(Frequency.DAY, 2, START)
    assert run_window(START + timedelta(days=4), daily, timedelta(0)) == Window(
        START + timedelta(days=2), START + timedelta(days=4)
    )


def test_first_trigger_is_the_start_time():
    assert due_triggers(HOURLY, None, START + timedelta(minutes=30)) == [START]
    assert due_triggers(HOURLY, None, START - timedelta(seconds=1)) == []


def test_missed_triggers_are_caught_up_in_order():
    now = START + timedelta(hours=3, minutes=10)
    assert due_triggers(HOURLY, START, now) == [
        START + timedelta(hours=1),
        START + timedelta(hours=2),
        START + timedelta(hours=3),
    ]


def test_nothing_due_until_the_next_period():
    assert (
        due_triggers(HOURLY, START + timedelta(hours=3), START + timedelta(hours=3, minutes=59))
        == []
    )


def test_catch_up_is_bounded_per_call():
    every_minute = Recurrence(Frequency.MINUTE, 1, START)
    triggers = due_triggers(every_minute, None, START + timedelta(days=1), limit=10)
    assert triggers == [START + timedelta(minutes=m) for m in range(10)]
    assert due_triggers(every_minute, triggers[-1], START + timedelta(minutes=11))[0] == (
        START + timedelta(minutes=10)
    )
