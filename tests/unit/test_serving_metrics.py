"""Serving's Prometheus metrics: per view reads, keys by status, writes and value ages."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from services.serving.features import Status, ViewRead
from services.serving.metrics import ServingMetrics
from shared.feature_views import Feature, ViewSchema
from shared.online_store import WriteResult
from shared.values import VT

VIEW = ViewSchema("p", "users", 3, "user_id", VT.VALUE_TYPE_INT64, (Feature("age", 3),))
LABELS = {"project": "p", "view": "users", "version": "3"}
NOW_US = 10_000_000_000


def _read(ages_seconds):
    micros = [None if age is None else NOW_US - age * 1_000_000 for age in ages_seconds]
    statuses = [Status.NOT_FOUND if m is None else Status.PRESENT for m in micros]
    return ViewRead(VIEW, ("users:age",), (3,), [[1.0] * len(micros)], statuses, micros)


def test_reads_count_keys_by_status_and_value_ages():
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    metrics.read([_read([0.5, None, 30])], 0.002, NOW_US)
    metrics.read([_read([7200])], 0.001, NOW_US)

    def sample(name, **extra):
        return registry.get_sample_value(name, {**LABELS, **extra})

    assert sample("recstack_online_reads_total") == 2
    assert sample("recstack_online_read_keys_total", status="present") == 3
    assert sample("recstack_online_read_keys_total", status="not_found") == 1
    assert sample("recstack_online_read_seconds_count") == 2
    age = "recstack_online_served_value_age_seconds"
    assert sample(f"{age}_bucket", le="1.0") == 1
    assert sample(f"{age}_bucket", le="60.0") == 2
    assert sample(f"{age}_bucket", le="3600.0") == 2
    assert sample(f"{age}_bucket", le="+Inf") == 3
    assert sample(f"{age}_count") == 3
    assert sample(f"{age}_sum") == 7230.5
    assert b"recstack_online_served_value_age_seconds_bucket" in generate_latest(registry)


def test_writes_count_rows_written_and_stale():
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    metrics.write(VIEW, WriteResult(written=5, stale=2), 0.01)
    assert registry.get_sample_value("recstack_online_writes_total", LABELS) == 1
    written = registry.get_sample_value(
        "recstack_online_write_rows_total", {**LABELS, "outcome": "written"}
    )
    stale = registry.get_sample_value(
        "recstack_online_write_rows_total", {**LABELS, "outcome": "stale"}
    )
    assert (written, stale) == (5, 2)


def test_many_ages_at_once_land_in_the_same_buckets_as_one_by_one():
    ages = [0, 1, 1.5, 59, 60, 61, 299, 3600, 3601, 86_400 * 40, *range(5, 500, 7)]
    batched, single = CollectorRegistry(), CollectorRegistry()
    ServingMetrics(batched).read([_read(ages)], 0.001, NOW_US)
    one_by_one = ServingMetrics(single)
    for age in ages:
        one_by_one.read([_read([age])], 0.001, NOW_US)
    name = "recstack_online_served_value_age_seconds_bucket"
    # Bucket bounds as prometheus_client writes them (floats; the ages are a Histogram's).
    for bound in ["1.0", "10.0", "60.0", "300.0", "900.0", "3600.0", "21600.0", "86400.0", "+Inf"]:
        labels = {**LABELS, "le": bound}
        expected = sum(1 for age in ages if bound == "+Inf" or age <= float(bound))
        assert batched.get_sample_value(name, labels) == expected, bound
        assert single.get_sample_value(name, labels) == expected, bound
