"""Replicas polling one database each claim different jobs: every job runs exactly once."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from services.materialization.adapters.repository import postgres_unit_of_work
from services.materialization.jobs import JobState, Store, Trigger, Window
from services.materialization.materializer import new_job
from services.materialization.server import MIGRATIONS, SCHEMA
from tests.plugins.postgres import migrated_engine

NOW = datetime(2026, 4, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def unit_of_work(postgres_server_url):
    # A database of its own: the session's materialization service polls the shared one and
    # would claim these jobs too.
    with migrated_engine(
        postgres_server_url, SCHEMA, MIGRATIONS, prefix="claims", pool_size=8
    ) as engine:
        yield partial(postgres_unit_of_work, engine)


def test_concurrent_claims_take_each_queued_job_once(unit_of_work):
    view = f"claims_{uuid.uuid4().hex[:8]}"
    jobs = [
        new_job(
            "p",
            view,
            1,
            Window(NOW + timedelta(hours=h), NOW + timedelta(hours=h + 1)),
            [Store.OFFLINE],
            Trigger.BACKFILL,
            NOW + timedelta(seconds=h),
        )
        for h in range(40)
    ]
    with unit_of_work() as uow:
        for job in jobs:
            uow.jobs.insert(job)
    claimed: dict[str, list[str]] = {}
    barrier = threading.Barrier(4)

    def replica(runner: str) -> None:
        barrier.wait()
        while True:
            with unit_of_work() as uow:
                job = uow.jobs.claim(runner, NOW)
            if job is None:
                return
            claimed.setdefault(job.job_id, []).append(runner)

    threads = [threading.Thread(target=replica, args=(f"r{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(claimed) == sorted(job.job_id for job in jobs)
    assert all(len(runners) == 1 for runners in claimed.values())
    assert len({runners[0] for runners in claimed.values()}) > 1
    with unit_of_work() as uow:
        states = {uow.jobs.get("p", view, job.job_id).state for job in jobs}
    assert states == {JobState.RUNNING}
