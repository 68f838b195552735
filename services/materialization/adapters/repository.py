"""Materialization state in PostgreSQL: jobs, data intervals and settings, one transaction
per unit of work."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from services.materialization.intervals import Interval, Status, Timeline
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
from shared.db import transaction

# Progress counters of produced (embedding) fields, stored under the same names.
EMBEDDING_COUNTERS = (
    "texts_embedded",
    "embedding_cache_hits",
    "embedding_calls",
    "embedding_truncations",
)
metadata = sa.MetaData(schema="materialization")
jobs = sa.Table(
    "jobs",
    metadata,
    *(
        sa.Column(name, kind, primary_key=name == "job_id")
        for name, kind in {
            "job_id": sa.Text,
            "project": sa.Text,
            "feature_view": sa.Text,
            "feature_view_version": sa.Integer,
            "window_start": sa.DateTime(timezone=True),
            "window_end": sa.DateTime(timezone=True),
            "stores": postgresql.ARRAY(sa.Text),
            "state": sa.Text,
            "trigger": sa.Text,
            "rows_read": sa.BigInteger,
            "rows_written_offline": sa.BigInteger,
            "rows_written_online": sa.BigInteger,
            "chunks_done": sa.BigInteger,
            "error_message": sa.Text,
            "retry_of": sa.Text,
            "create_time": sa.DateTime(timezone=True),
            "start_time": sa.DateTime(timezone=True),
            "end_time": sa.DateTime(timezone=True),
            "cancel_requested": sa.Boolean,
            "runner_id": sa.Text,
            "heartbeat_time": sa.DateTime(timezone=True),
            "publish_partition": sa.Text,
            "publish_mode": sa.Text,
            "publish_transform": sa.Boolean,
            **dict.fromkeys(EMBEDDING_COUNTERS, sa.BigInteger),
        }.items()
    ),
)
intervals = sa.Table(
    "data_intervals",
    metadata,
    sa.Column("project", sa.Text),
    sa.Column("feature_view", sa.Text),
    sa.Column("version", sa.Integer),
    sa.Column("store", sa.Text),
    sa.Column("start_time", sa.DateTime(timezone=True)),
    sa.Column("end_time", sa.DateTime(timezone=True)),
    sa.Column("status", sa.Text),
    sa.Column("job_id", sa.Text),
)
settings_table = sa.Table(
    "settings",
    metadata,
    sa.Column("project", sa.Text),
    sa.Column("feature_view", sa.Text),
    sa.Column("offline_enabled", sa.Boolean),
    sa.Column("online_enabled", sa.Boolean),
    sa.Column("frequency", sa.Text),
    sa.Column("interval", sa.Integer),
    sa.Column("recurrence_start", sa.DateTime(timezone=True)),
    sa.Column("source_delay_seconds", sa.Float),
    sa.Column("last_trigger_time", sa.DateTime(timezone=True)),
    sa.Column("etag", sa.Text),
    sa.Column("schedule_error", sa.Text),
    sa.Column("schedule_error_time", sa.DateTime(timezone=True)),
)


class PostgresJobs:
    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def insert(self, job: Job) -> None:
        self._connection.execute(jobs.insert().values(**_job_row(job)))

    def save(self, job: Job) -> None:
        self._connection.execute(
            jobs.update().where(jobs.c.job_id == job.job_id).values(**_job_row(job))
        )

    def get(self, project: str, feature_view: str, job_id: str) -> Job | None:
        query = sa.select(jobs).where(
            jobs.c.job_id == job_id, jobs.c.project == project, jobs.c.feature_view == feature_view
        )
        row = self._connection.execute(query).one_or_none()
        return None if row is None else _job(row)

    def list(self, project: str, feature_view: str, offset: int, limit: int) -> list[Job]:
        query = (
            sa.select(jobs)
            .where(jobs.c.project == project, jobs.c.feature_view == feature_view)
            .order_by(jobs.c.create_time.desc(), jobs.c.job_id)
            .offset(offset)
            .limit(limit)
        )
        return [_job(row) for row in self._connection.execute(query)]

    def claim(self, runner_id: str, now: datetime) -> Job | None:
        # SKIP LOCKED: replicas polling at once each take a different job, none waits.
        query = (
            sa.select(jobs)
            .where(jobs.c.state == JobState.QUEUED.value)
            .order_by(jobs.c.create_time, jobs.c.job_id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        row = self._connection.execute(query).one_or_none()
        if row is None:
            return None
        job = _job(row)
        job.state, job.runner_id, job.start_time, job.heartbeat_time = (
            JobState.RUNNING,
            runner_id,
            now,
            now,
        )
        self.save(job)
        return job

    def stale(self, heartbeat_before: datetime) -> list[Job]:
        query = (
            sa.select(jobs)
            .where(jobs.c.state == JobState.RUNNING.value, jobs.c.heartbeat_time < heartbeat_before)
            .with_for_update(skip_locked=True)
        )
        return [_job(row) for row in self._connection.execute(query)]


class PostgresIntervals:
    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def lock(self, project: str, feature_view: str, version: int) -> None:
        digest = hashlib.sha256(f"intervals:{project}/{feature_view}/{version}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        self._connection.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))

    def load(self, project: str, feature_view: str, version: int, store: Store) -> Timeline:
        query = (
            sa.select(intervals)
            .where(*self._key(project, feature_view, version, store))
            .order_by(intervals.c.start_time)
        )
        return Timeline(
            tuple(
                Interval(row.start_time, row.end_time, Status(row.status), row.job_id)
                for row in self._connection.execute(query)
            )
        )

    def save(
        self, project: str, feature_view: str, version: int, store: Store, timeline: Timeline
    ) -> None:
        # At most 2,000 rows: rewriting the timeline is simpler than diffing it, and cheap.
        self._connection.execute(
            intervals.delete().where(*self._key(project, feature_view, version, store))
        )
        if timeline.intervals:
            self._connection.execute(
                intervals.insert(),
                [
                    {
                        "project": project,
                        "feature_view": feature_view,
                        "version": version,
                        "store": store.value,
                        "start_time": interval.start,
                        "end_time": interval.end,
                        "status": interval.status.value,
                        "job_id": interval.job_id,
                    }
                    for interval in timeline.intervals
                ],
            )

    def _key(
        self, project: str, feature_view: str, version: int, store: Store
    ) -> list[sa.ColumnElement[bool]]:
        return [
            intervals.c.project == project,
            intervals.c.feature_view == feature_view,
            intervals.c.version == version,
            intervals.c.store == store.value,
        ]


class PostgresSettings:
    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def get(self, project: str, feature_view: str) -> Settings | None:
        query = sa.select(settings_table).where(
            settings_table.c.project == project, settings_table.c.feature_view == feature_view
        )
        row = self._connection.execute(query).one_or_none()
        return None if row is None else _settings(row)

    def save(self, settings: Settings) -> None:
        row = _settings_row(settings)
        statement = postgresql.insert(settings_table).values(**row)
        statement = statement.on_conflict_do_update(
            index_elements=["project", "feature_view"], set_=row
        )
        self._connection.execute(statement)

    def due(self, now: datetime) -> Sequence[Settings]:
        query = (
            sa.select(settings_table)
            .where(
                settings_table.c.frequency.is_not(None),
                settings_table.c.recurrence_start <= now,
                settings_table.c.schedule_error == "",
            )
            .with_for_update(skip_locked=True)
        )
        return [_settings(row) for row in self._connection.execute(query)]


@dataclass
class PostgresUnitOfWork:
    jobs: PostgresJobs
    intervals: PostgresIntervals
    settings: PostgresSettings


@contextmanager
def postgres_unit_of_work(engine: sa.Engine) -> Iterator[PostgresUnitOfWork]:
    """Repositories sharing one transaction: committed when the block succeeds."""
    with transaction(engine) as connection:
        yield PostgresUnitOfWork(
            PostgresJobs(connection), PostgresIntervals(connection), PostgresSettings(connection)
        )


def _job_row(job: Job) -> dict[str, object]:
    return {
        "job_id": job.job_id,
        "project": job.project,
        "feature_view": job.feature_view,
        "feature_view_version": job.feature_view_version,
        "window_start": job.window.start,
        "window_end": job.window.end,
        "stores": [store.value for store in job.stores],
        "state": job.state.value,
        "trigger": job.trigger.value,
        "rows_read": job.progress.rows_read,
        "rows_written_offline": job.progress.rows_written_offline,
        "rows_written_online": job.progress.rows_written_online,
        "chunks_done": job.progress.chunks_done,
        **{name: getattr(job.progress, name) for name in EMBEDDING_COUNTERS},
        "error_message": job.error_message,
        "retry_of": job.retry_of,
        "create_time": job.create_time,
        "start_time": job.start_time,
        "end_time": job.end_time,
        "cancel_requested": job.cancel_requested,
        "runner_id": job.runner_id,
        "heartbeat_time": job.heartbeat_time,
        "publish_partition": job.publish.partition if job.publish else None,
        "publish_mode": job.publish.mode.value if job.publish else None,
        "publish_transform": job.publish.transform if job.publish else None,
    }


def _job(row: sa.Row) -> Job:
    publish = (
        Publish(row.publish_partition, PublishMode(row.publish_mode), row.publish_transform)
        if row.publish_partition is not None
        else None
    )
    return Job(
        job_id=row.job_id,
        project=row.project,
        feature_view=row.feature_view,
        feature_view_version=row.feature_view_version,
        window=Window(row.window_start, row.window_end),
        stores=tuple(Store(store) for store in row.stores),
        state=JobState(row.state),
        trigger=Trigger(row.trigger),
        create_time=row.create_time,
        progress=Progress(
            row.rows_read,
            row.rows_written_offline,
            row.rows_written_online,
            row.chunks_done,
            **{name: getattr(row, name) for name in EMBEDDING_COUNTERS},
        ),
        error_message=row.error_message,
        retry_of=row.retry_of,
        start_time=row.start_time,
        end_time=row.end_time,
        publish=publish,
        cancel_requested=row.cancel_requested,
        runner_id=row.runner_id,
        heartbeat_time=row.heartbeat_time,
    )


def _settings_row(settings: Settings) -> dict[str, object]:
    recurrence = settings.recurrence
    return {
        "project": settings.project,
        "feature_view": settings.feature_view,
        "offline_enabled": settings.offline_enabled,
        "online_enabled": settings.online_enabled,
        "frequency": recurrence.frequency.value if recurrence else None,
        "interval": recurrence.interval if recurrence else None,
        "recurrence_start": recurrence.start_time if recurrence else None,
        "source_delay_seconds": settings.source_delay.total_seconds(),
        "last_trigger_time": settings.last_trigger_time,
        "etag": settings.etag,
        "schedule_error": settings.schedule_error,
        "schedule_error_time": settings.schedule_error_time,
    }


def _settings(row: sa.Row) -> Settings:
    recurrence = (
        Recurrence(Frequency(row.frequency), row.interval, row.recurrence_start)
        if row.frequency is not None
        else None
    )
    return Settings(
        project=row.project,
        feature_view=row.feature_view,
        offline_enabled=row.offline_enabled,
        online_enabled=row.online_enabled,
        recurrence=recurrence,
        source_delay=timedelta(seconds=row.source_delay_seconds),
        last_trigger_time=row.last_trigger_time,
        etag=row.etag,
        schedule_error=row.schedule_error,
        schedule_error_time=row.schedule_error_time,
    )
