"""Jobs in PostgreSQL (`materialization.jobs`)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from services.materialization.jobs import Job, JobState, Progress, Store, Trigger, Window
from shared.db import transaction

metadata = sa.MetaData(schema="materialization")
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("project", sa.Text),
    sa.Column("feature_view", sa.Text),
    sa.Column("feature_view_version", sa.Integer),
    sa.Column("window_start", sa.DateTime(timezone=True)),
    sa.Column("window_end", sa.DateTime(timezone=True)),
    sa.Column("stores", postgresql.ARRAY(sa.Text)),
    sa.Column("state", sa.Text),
    sa.Column("trigger", sa.Text),
    sa.Column("rows_read", sa.BigInteger),
    sa.Column("rows_written_offline", sa.BigInteger),
    sa.Column("rows_written_online", sa.BigInteger),
    sa.Column("chunks_done", sa.BigInteger),
    sa.Column("error_message", sa.Text),
    sa.Column("retry_of", sa.Text),
    sa.Column("create_time", sa.DateTime(timezone=True)),
    sa.Column("start_time", sa.DateTime(timezone=True)),
    sa.Column("end_time", sa.DateTime(timezone=True)),
)


class PostgresJobRepository:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def insert(self, job: Job) -> None:
        with transaction(self._engine) as conn:
            conn.execute(jobs.insert().values(**_row(job)))

    def save(self, job: Job) -> None:
        with transaction(self._engine) as conn:
            conn.execute(jobs.update().where(jobs.c.job_id == job.job_id).values(**_row(job)))

    def get(self, project: str, feature_view: str, job_id: str) -> Job | None:
        query = sa.select(jobs).where(
            jobs.c.job_id == job_id,
            jobs.c.project == project,
            jobs.c.feature_view == feature_view,
        )
        with transaction(self._engine) as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _job(row)

    def list(self, project: str, feature_view: str, offset: int, limit: int) -> list[Job]:
        query = (
            sa.select(jobs)
            .where(jobs.c.project == project, jobs.c.feature_view == feature_view)
            .order_by(jobs.c.create_time.desc(), jobs.c.job_id)
            .offset(offset)
            .limit(limit)
        )
        with transaction(self._engine) as conn:
            return [_job(row) for row in conn.execute(query)]


def _row(job: Job) -> dict[str, object]:
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
        "error_message": job.error_message,
        "retry_of": job.retry_of,
        "create_time": job.create_time,
        "start_time": job.start_time,
        "end_time": job.end_time,
    }


def _job(row: sa.Row) -> Job:
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
            row.rows_read, row.rows_written_offline, row.rows_written_online, row.chunks_done
        ),
        error_message=row.error_message,
        retry_of=row.retry_of,
        start_time=row.start_time,
        end_time=row.end_time,
    )
