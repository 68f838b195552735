"""What the materialization page draws: data intervals and jobs over a chosen window.

Pure functions over the materialization API's messages (no gRPC here): the window a page
shows, the chart's Vega-Lite specification, and the jobs that overlap the window.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from recstack.materialization.v1 import data_interval_pb2, job_pb2

Status = data_interval_pb2.DataInterval.Status
Job = job_pb2.Job

# The seed's colours: COMPLETE green, INCOMPLETE red, PENDING blue, NONE grey.
STATUS_COLOURS = {
    "COMPLETE": "#2e9e44",
    "INCOMPLETE": "#d62728",
    "PENDING": "#1f6fd1",
    "NONE": "#9e9e9e",
}
STORES = {job_pb2.STORE_OFFLINE: "offline", job_pb2.STORE_ONLINE: "online"}
ACTIVE_STATES = {Job.STATE_QUEUED, Job.STATE_RUNNING}
RETRYABLE_STATES = {Job.STATE_FAILED, Job.STATE_CANCELLED}
# With nothing materialized yet, the page opens on the last week.
DEFAULT_SPAN = timedelta(days=7)
# The chart pads the materialized range so its edges are visible.
PAD_FRACTION = 0.05


@dataclass(frozen=True)
class Window:
    """A half-open time range [start, end), in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError("the window's end must be after its start")

    @property
    def span(self) -> timedelta:
        return self.end - self.start

    def zoomed(self, factor: float) -> Window:
        """The window scaled by `factor` around its centre (below 1 zooms in)."""
        centre = self.start + self.span / 2
        half = self.span * factor / 2
        return Window(centre - half, centre + half)

    def panned(self, fraction: float) -> Window:
        """The window moved by `fraction` of its span (negative: earlier)."""
        shift = self.span * fraction
        return Window(self.start + shift, self.end + shift)

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return start < self.end and self.start < end


@dataclass(frozen=True)
class Interval:
    store: str
    start: datetime
    end: datetime
    status: str
    job: str

    @property
    def colour(self) -> str:
        return STATUS_COLOURS[self.status]


def to_utc(timestamp: object) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return timestamp.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined]


def iso(moment: datetime) -> str:
    """Exact UTC bounds as the page shows them: `2023-04-02T12:00:00Z` (microseconds if any)."""
    text = moment.astimezone(UTC).replace(tzinfo=None).isoformat()
    return f"{text}Z"


def status_name(status: int) -> str:
    return Status.Name(status).removeprefix("STATUS_")


def intervals_of(messages: Iterable[data_interval_pb2.DataInterval]) -> list[Interval]:
    return [
        Interval(
            store=STORES.get(m.store, "unknown"),
            start=to_utc(m.window.start_time),
            end=to_utc(m.window.end_time),
            status=status_name(m.status),
            job=m.job,
        )
        for m in messages
    ]


def default_window(materialized: Sequence[Interval], now: datetime) -> Window:
    """The materialized range of both stores, padded; the last week when there is none."""
    known = [i for i in materialized if i.status != "NONE"]
    if not known:
        return Window(now - DEFAULT_SPAN, now)
    start = min(i.start for i in known)
    end = max(i.end for i in known)
    pad = (end - start) * PAD_FRACTION
    return Window(start - pad, end + pad)


def overlapping_jobs(jobs: Iterable[job_pb2.Job], window: Window) -> list[job_pb2.Job]:
    """Jobs whose window overlaps `window`, as the API lists them (newest first)."""
    return [
        job
        for job in jobs
        if window.overlaps(to_utc(job.window.start_time), to_utc(job.window.end_time))
    ]


def chart_spec(intervals: Sequence[Interval], window: Window) -> dict[str, object]:
    """A Vega-Lite bar-range chart: one row per store, each interval in its status colour,
    its exact bounds in the tooltip, and an `x` interval selection to pick a new window."""
    values = [
        {
            "store": i.store,
            "status": i.status,
            "start": iso(i.start),
            "end": iso(i.end),
            # Strings for the tooltip: the exact bounds, not Vega's parsed dates.
            "from": iso(i.start),
            "to": iso(i.end),
            "job": i.job.rsplit("/", 1)[-1] if i.job else "-",
            "label": f"{i.store} {i.status} {iso(i.start)} to {iso(i.end)}",
        }
        for i in intervals
    ]
    time_axis = {"field": "start", "type": "temporal", "title": "UTC"}
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "width": "container",
        "height": 110,
        "data": {"values": values},
        "params": [{"name": "pick", "select": {"type": "interval", "encodings": ["x"]}}],
        "mark": {"type": "bar", "stroke": "#ffffff", "strokeWidth": 1},
        "encoding": {
            "x": {
                **time_axis,
                "scale": {"domain": [_ms(window.start), _ms(window.end)], "type": "utc"},
                "axis": {"format": "%Y-%m-%d %H:%M", "labelAngle": 0, "labelOverlap": True},
            },
            "x2": {"field": "end"},
            "y": {
                "field": "store",
                "type": "nominal",
                "sort": ["offline", "online"],
                "title": None,
            },
            "color": {
                "field": "status",
                "type": "nominal",
                "scale": {
                    "domain": list(STATUS_COLOURS),
                    "range": list(STATUS_COLOURS.values()),
                },
                "legend": {"orient": "top", "title": None},
            },
            "tooltip": [
                {"field": "store"},
                {"field": "status"},
                {"field": "from", "title": "start (UTC)"},
                {"field": "to", "title": "end (UTC)"},
                {"field": "job"},
            ],
            "description": {"field": "label"},
        },
        "config": {"view": {"stroke": None}},
    }


def _ms(moment: datetime) -> int:
    """Epoch milliseconds: how Vega holds times, so the domain needs no parsing."""
    return round(moment.timestamp() * 1000)
