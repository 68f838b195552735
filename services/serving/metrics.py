"""Prometheus metrics of online serving, per feature view version.

Reads: calls, keys by status, store round-trip seconds, and the age of every served value
(now minus its event time: how fresh the features were that callers got). Writes: calls,
rows written or stale, seconds. Label children are looked up once per view, and value ages
are counted in bulk (one sort per view and read instead of one `observe` per value), so a
100-key read adds microseconds, not the ~2 us per value of `Histogram.observe`.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from services.serving.features import Status, ViewRead
from shared.feature_views import ViewSchema
from shared.online_store import WriteResult

LABELS = ("project", "view", "version")
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
AGE_BUCKETS = (1, 10, 60, 300, 900, 3600, 6 * 3600, 86_400, 7 * 86_400, 30 * 86_400)
_STATUS_LABELS = {Status.PRESENT: "present", Status.NOT_FOUND: "not_found",
                  Status.OUTSIDE_TTL: "outside_ttl"}  # fmt: skip


class AgeHistogram(Collector):
    """A labelled histogram of ages in seconds that takes a batch of observations at once."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds: tuple[float | str, ...] = tuple(buckets)
        self._bounds_us = tuple(round(bound * 1_000_000) for bound in buckets)
        self._series: dict[tuple[str, ...], list[float]] = {}
        self._lock = threading.Lock()

    def observe_micros(self, labels: tuple[str, ...], ages_us: list[int]) -> None:
        if not ages_us:
            return
        # Per-bucket (not yet cumulative) counts: a bisect per value for a few values, one
        # per bound over the sorted values for many.
        bounds = self._bounds_us
        counts = [0] * (len(bounds) + 1)
        if len(ages_us) < len(bounds):
            for age in ages_us:
                counts[bisect_left(bounds, age)] += 1
        else:
            ages_us.sort()
            below = 0
            for index, bound in enumerate(bounds):
                upto = bisect_right(ages_us, bound)
                counts[index], below = upto - below, upto
            counts[-1] = len(ages_us) - below
        total = sum(ages_us) / 1_000_000
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [0] * (len(counts) + 1)
            for index, amount in enumerate(counts):
                series[index] += amount
            series[-1] += total

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=LABELS)
        with self._lock:
            snapshot = {labels: list(series) for labels, series in self._series.items()}
        for labels, series in snapshot.items():
            *counts, total = series
            cumulative = list(accumulate(counts))
            buckets = [
                (str(bound), value)
                for bound, value in zip([*self._bounds, "+Inf"], cumulative, strict=True)
            ]
            family.add_metric(list(labels), buckets, sum_value=total)
        yield family


@dataclass(frozen=True)
class _ViewSeries:
    labels: tuple[str, str, str]
    reads: Counter
    keys: dict[Status, Counter]
    read_seconds: Histogram
    writes: Counter
    written: Counter
    stale: Counter
    write_seconds: Histogram


class ServingMetrics:
    """The `Observer` of `FeatureServer` that feeds Prometheus."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def counter(name: str, documentation: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, documentation, [*LABELS, *extra], registry=registry)

        def histogram(name: str, documentation: str) -> Histogram:
            return Histogram(name, documentation, LABELS, buckets=LATENCY_BUCKETS,
                             registry=registry)  # fmt: skip

        self._reads = counter("recstack_online_reads", "Reads that included the feature view.")
        self._keys = counter(
            "recstack_online_read_keys", "Entity keys read, by served status.", ("status",)
        )
        self._read_seconds = histogram(
            "recstack_online_read_seconds", "Online-store round trip of reads of the view."
        )
        self._writes = counter("recstack_online_writes", "Write batches into the view.")
        self._rows = counter(
            "recstack_online_write_rows", "Rows written, or stale (a newer event was stored).",
            ("outcome",),
        )  # fmt: skip
        self._write_seconds = histogram(
            "recstack_online_write_seconds", "Online-store time of write batches into the view."
        )
        self._ages = AgeHistogram(
            "recstack_online_served_value_age_seconds",
            "Age (now minus event time) of each served value that the store had.",
            AGE_BUCKETS,
        )
        registry.register(self._ages)
        self._series: dict[str, _ViewSeries] = {}
        self._lock = threading.Lock()

    def read(self, views: Sequence[ViewRead], seconds: float, now_micros: int) -> None:
        for read in views:
            series = self._view(read.view)
            series.reads.inc()
            series.read_seconds.observe(seconds)
            statuses = read.statuses
            for status, counter in series.keys.items():
                found = statuses.count(status)
                if found:
                    counter.inc(found)
            ages = [now_micros - m for m in read.event_micros if m is not None]
            self._ages.observe_micros(series.labels, ages)

    def write(self, view: ViewSchema, result: WriteResult, seconds: float) -> None:
        series = self._view(view)
        series.writes.inc()
        series.written.inc(result.written)
        series.stale.inc(result.stale)
        series.write_seconds.observe(seconds)

    def _view(self, view: ViewSchema) -> _ViewSeries:
        series = self._series.get(view.table_name)
        if series is None:
            series = self._children(view)
            with self._lock:
                self._series[view.table_name] = series
        return series

    def _children(self, view: ViewSchema) -> _ViewSeries:
        labels = (view.project, view.name, str(view.version))
        return _ViewSeries(
            labels=labels,
            reads=self._reads.labels(*labels),
            keys={s: self._keys.labels(*labels, name) for s, name in _STATUS_LABELS.items()},
            read_seconds=self._read_seconds.labels(*labels),
            writes=self._writes.labels(*labels),
            written=self._rows.labels(*labels, "written"),
            stale=self._rows.labels(*labels, "stale"),
            write_seconds=self._write_seconds.labels(*labels),
        )


_default: ServingMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> ServingMetrics:
    """The process-wide instance on the default registry (a registry refuses duplicates, and
    tests start several servers in one process)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ServingMetrics()
        return _default
