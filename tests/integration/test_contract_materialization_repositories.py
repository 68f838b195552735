"""The contract of materialization's repositories (jobs, data intervals, settings in one unit
of work), run against PostgreSQL and against the in-memory fake the unit tests use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest

from services.materialization.adapters.repository import postgres_unit_of_work
from services.materialization.intervals import Status, Timeline
from services.materialization.jobs import (
    Frequency,
    Job,
    JobState,
    Progress,
    Publish,
    PublishMode,
    Recurrence,
    Settings,
    Store,
    Trigger,
    Window,
)
from services.materialization.server import MIGRATIONS, SCHEMA
from tests.fakes.materialization import InMemoryMaterialization
from tests.plugins.postgres import migrated_engine

T0 = datetime(2026, 4, 1, tzinfo=UTC)
UnitOfWork = Callable[[], AbstractContextManager[Any]]


@pytest.fixture(scope="module")
def engine(postgres_server_url: str) -> Iterator[Any]:
    # A database of its own: the session's materialization service would claim queued jobs.
    with migrated_engine(postgres_server_url, SCHEMA, MIGRATIONS, prefix="contract") as engine:
        yield engine


@pytest.fixture(params=["postgres", "memory"])
def uow(request: pytest.FixtureRequest) -> Iterator[UnitOfWork]:
    if request.param == "memory":
        yield InMemoryMaterialization().unit_of_work
        return
    engine = request.getfixturevalue("engine")
    yield partial(postgres_unit_of_work, engine)
    with engine.begin() as connection:
        for table in ("jobs", "data_intervals", "settings"):
            connection.exec_driver_sql(f"DELETE FROM {SCHEMA}.{table}")


def _job(
    job_id: str,
    minutes: int = 0,
    view: str = "clicks",
    state: JobState = JobState.QUEUED,
    **extra: Any,
) -> Job:
    return Job(
        job_id=job_id,
        project="p",
        feature_view=view,
        feature_view_version=2,
        window=Window(T0, T0 + timedelta(days=1)),
        stores=(Store.OFFLINE, Store.ONLINE),
        state=state,
        trigger=Trigger.BACKFILL,
        create_time=T0 + timedelta(minutes=minutes),
        **extra,
    )


def test_a_job_round_trips_with_every_field(uow):
    job = _job(
        "a",
        progress=Progress(5, 4, 3, 2, 1, 1, 1, 0),
        error_message="boom",
        retry_of="z",
        publish=Publish("2026-04-01", PublishMode.INCREMENTAL, True),
        cancel_requested=True,
    )
    with uow() as work:
        work.jobs.insert(job)
    with uow() as work:
        assert work.jobs.get("p", "clicks", "a") == job
        assert work.jobs.get("p", "other", "a") is None
        assert work.jobs.get("q", "clicks", "a") is None
        assert work.jobs.get("p", "clicks", "nope") is None
        work.jobs.save(replace(job, state=JobState.FAILED, end_time=T0))
        # Saving a job never inserted changes nothing.
        work.jobs.save(_job("ghost"))
    with uow() as work:
        assert work.jobs.get("p", "clicks", "a").state is JobState.FAILED
        assert work.jobs.get("p", "clicks", "a").end_time == T0
        assert work.jobs.get("p", "clicks", "ghost") is None


def test_jobs_list_newest_first_per_view_with_offset_and_limit(uow):
    with uow() as work:
        for job in (_job("b", 1), _job("a", 1), _job("c", 2), _job("d", 3, view="other")):
            work.jobs.insert(job)
    with uow() as work:
        assert [j.job_id for j in work.jobs.list("p", "clicks", 0, 10)] == ["c", "a", "b"]
        assert [j.job_id for j in work.jobs.list("p", "clicks", 1, 1)] == ["a"]
        assert work.jobs.list("p", "clicks", 3, 10) == []


def test_claim_takes_the_oldest_queued_job_once(uow):
    with uow() as work:
        work.jobs.insert(_job("late", 5))
        work.jobs.insert(_job("early", 1))
        work.jobs.insert(_job("done", 0, state=JobState.SUCCEEDED))
    now = T0 + timedelta(hours=1)
    with uow() as work:
        claimed = work.jobs.claim("runner-1", now)
    assert claimed.job_id == "early"
    assert (claimed.state, claimed.runner_id, claimed.start_time, claimed.heartbeat_time) == (
        JobState.RUNNING,
        "runner-1",
        now,
        now,
    )
    with uow() as work:
        assert work.jobs.get("p", "clicks", "early").state is JobState.RUNNING
        assert work.jobs.claim("runner-2", now).job_id == "late"
    with uow() as work:
        assert work.jobs.claim("runner-3", now) is None


def test_stale_lists_running_jobs_whose_heartbeat_is_older(uow):
    with uow() as work:
        work.jobs.insert(_job("old", state=JobState.RUNNING, heartbeat_time=T0))
        work.jobs.insert(_job("fresh", state=JobState.RUNNING, heartbeat_time=T0 + timedelta(1)))
        work.jobs.insert(_job("queued"))
    with uow() as work:
        assert [j.job_id for j in work.jobs.stale(T0 + timedelta(hours=1))] == ["old"]


def test_a_failed_unit_of_work_leaves_nothing(uow):
    with pytest.raises(RuntimeError), uow() as work:
        work.jobs.insert(_job("a"))
        work.intervals.save("p", "clicks", 2, Store.OFFLINE, _timeline())
        work.settings.save(Settings("p", "clicks"))
        raise RuntimeError("a fault before the commit")
    with uow() as work:
        assert work.jobs.get("p", "clicks", "a") is None
        assert work.intervals.load("p", "clicks", 2, Store.OFFLINE) == Timeline()
        assert work.settings.get("p", "clicks") is None


def _timeline() -> Timeline:
    day = timedelta(days=1)
    return (
        Timeline()
        .set(Window(T0, T0 + day), Status.COMPLETE, "j1")
        .set(Window(T0 + 2 * day, T0 + 3 * day), Status.PENDING, "j2")
    )


def test_timelines_round_trip_per_version_and_store(uow):
    with uow() as work:
        work.intervals.lock("p", "clicks", 2)
        work.intervals.save("p", "clicks", 2, Store.OFFLINE, _timeline())
    with uow() as work:
        assert work.intervals.load("p", "clicks", 2, Store.OFFLINE) == _timeline()
        assert work.intervals.load("p", "clicks", 2, Store.ONLINE) == Timeline()
        assert work.intervals.load("p", "clicks", 1, Store.OFFLINE) == Timeline()
        work.intervals.save("p", "clicks", 2, Store.OFFLINE, Timeline())
    with uow() as work:
        assert work.intervals.load("p", "clicks", 2, Store.OFFLINE) == Timeline()


def test_settings_round_trip_upsert_and_which_are_due(uow):
    daily = Recurrence(Frequency.DAY, 1, T0)
    scheduled = Settings(
        "p",
        "clicks",
        offline_enabled=True,
        online_enabled=True,
        recurrence=daily,
        source_delay=timedelta(hours=2),
        last_trigger_time=T0,
        etag="e1",
    )
    with uow() as work:
        assert work.settings.get("p", "clicks") is None
        work.settings.save(scheduled)
        work.settings.save(Settings("p", "plain", offline_enabled=True))
        work.settings.save(
            replace(
                scheduled,
                feature_view="later",
                recurrence=replace(daily, start_time=T0 + timedelta(days=30)),
            )
        )
        work.settings.save(
            replace(scheduled, feature_view="failed", schedule_error="bad", schedule_error_time=T0)
        )
    with uow() as work:
        assert work.settings.get("p", "clicks") == scheduled
        assert [s.feature_view for s in work.settings.due(T0 + timedelta(days=1))] == ["clicks"]
        work.settings.save(replace(scheduled, etag="e2", online_enabled=False))
    with uow() as work:
        assert work.settings.get("p", "clicks") == replace(
            scheduled, etag="e2", online_enabled=False
        )
