"""The console's materialization domain: windows, intervals, the chart spec, overlapping jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from recstack.materialization.v1 import data_interval_pb2, job_pb2

from services.console import timeline
from services.console.timeline import Window

DI = data_interval_pb2.DataInterval


def day(d: int, hour: int = 0) -> datetime:
    return datetime(2023, 4, d, hour, tzinfo=UTC)


def test_zoom_keeps_the_centre_and_pan_moves_by_a_fraction_of_the_span():
    window = Window(day(2), day(4))
    assert window.zoomed(0.5) == Window(day(2, 12), day(3, 12))
    assert window.zoomed(2) == Window(day(1), day(5))
    assert window.panned(-0.5) == Window(day(1), day(3))


def test_a_window_must_end_after_it_starts():
    with pytest.raises(ValueError, match="end must be after"):
        Window(day(3), day(3))


def test_intervals_of_messages_and_the_default_window_around_what_is_materialized():
    message = DI(store=job_pb2.STORE_OFFLINE, status=DI.STATUS_COMPLETE, job="a/jobs/j1")
    message.window.start_time.FromDatetime(day(2))
    message.window.end_time.FromDatetime(day(12))
    [interval] = timeline.intervals_of([message])
    assert (interval.store, interval.status, interval.colour) == ("offline", "COMPLETE", "#2e9e44")
    assert timeline.default_window([interval], day(20)) == Window(day(1, 12), day(12, 12))
    now = day(20)
    assert timeline.default_window([], now) == Window(now - timedelta(days=7), now)


def test_jobs_overlapping_a_half_open_window():
    def job(start: datetime, end: datetime) -> job_pb2.Job:
        made = job_pb2.Job(name=f"j{start.day}-{end.day}")
        made.window.start_time.FromDatetime(start)
        made.window.end_time.FromDatetime(end)
        return made

    jobs = [job(day(1), day(2)), job(day(2), day(3)), job(day(3), day(5)), job(day(5), day(6))]
    shown = timeline.overlapping_jobs(jobs, Window(day(2), day(5)))
    assert [j.name for j in shown] == ["j2-3", "j3-5"]


def test_the_chart_colours_each_status_and_labels_exact_bounds():
    intervals = [
        timeline.Interval("offline", day(1), day(2), "NONE", ""),
        timeline.Interval("offline", day(2), day(2, 12), "INCOMPLETE", "p/jobs/x"),
    ]
    spec = timeline.chart_spec(intervals, Window(day(1), day(3)))
    colour = spec["encoding"]["color"]["scale"]
    assert dict(zip(colour["domain"], colour["range"], strict=True)) == timeline.STATUS_COLOURS
    rows = spec["data"]["values"]
    assert rows[1]["from"] == "2023-04-02T00:00:00Z"
    assert rows[1]["to"] == "2023-04-02T12:00:00Z"
    assert rows[1]["job"] == "x"
    assert spec["encoding"]["x"]["scale"]["domain"] == [
        int(day(1).timestamp() * 1000),
        int(day(3).timestamp() * 1000),
    ]
