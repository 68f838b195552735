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
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from services.serving.features import Status, ViewRead
from shared.feature_views import ViewSchema
from shared.online_store import WriteResult

LABELS = ("project", "view", "version")
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
AGE_BUCKETS = (1, 10, 60, 300, 900, 3600, 6 * 3600, 86_400, 7 * 86_400, 30 * 86_400)
AGE_BOUNDS_US = tuple(bound * 1_000_000 for bound in AGE_BUCKETS)
_STATUS_LABELS = {Status.PRESENT: "present", Status.NOT_FOUND: "not_found",
                  Status.OUTSIDE_TTL: "outside_ttl"}  # fmt: skip


def observe_many_micros(child: Histogram, bounds_us: Sequence[int], ages_us: list[int]) -> None:
    """`child.observe(age)` for every age (in microseconds), in one pass and one increment per
    bucket: the same counts, for a fraction of the cost of thousands of `observe` calls.

    It adds to the child's own bucket values (non-cumulative, +Inf last, as `observe` does),
    so it works in prometheus_client's multiprocess mode too, where each value is a slot in
    the process's file that the metrics endpoint of the supervisor sums (shared/workers.py).
    """
    if not ages_us:
        return
    # Per-bucket counts: a bisect per value for a few values, one per bound over the sorted
    # values for many.
    counts = [0] * (len(bounds_us) + 1)
    if len(ages_us) < len(bounds_us):
        for age in ages_us:
            counts[bisect_left(bounds_us, age)] += 1
    else:
        ages_us.sort()
        below = 0
        for index, bound in enumerate(bounds_us):
            upto = bisect_right(ages_us, bound)
            counts[index], below = upto - below, upto
        counts[-1] = len(ages_us) - below
    buckets = child._buckets
    for index, amount in enumerate(counts):
        if amount:
            buckets[index].inc(amount)
    child._sum.inc(sum(ages_us) / 1_000_000)


@dataclass(frozen=True)
class _ViewSeries:
    reads: Counter
    keys: dict[Status, Counter]
    read_seconds: Histogram
    writes: Counter
    written: Counter
    stale: Counter
    write_seconds: Histogram
    ages: Histogram


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
        self._ages = Histogram(
            "recstack_online_served_value_age_seconds",
            "Age (now minus event time) of each served value that the store had.",
            LABELS,
            buckets=AGE_BUCKETS,
            registry=registry,
        )
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
            observe_many_micros(series.ages, AGE_BOUNDS_US, ages)

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
            reads=self._reads.labels(*labels),
            keys={s: self._keys.labels(*labels, name) for s, name in _STATUS_LABELS.items()},
            read_seconds=self._read_seconds.labels(*labels),
            writes=self._writes.labels(*labels),
            written=self._rows.labels(*labels, "written"),
            stale=self._rows.labels(*labels, "stale"),
            write_seconds=self._write_seconds.labels(*labels),
            ages=self._ages.labels(*labels),
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
