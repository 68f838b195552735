"""Materialization service layer: turns requests into jobs and runs them on the compute engine.

Knows nothing of gRPC. Jobs run on a small thread pool in this process; their state and
progress are persisted after every chunk so `GetJob`/`WatchJob` see them from any replica.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from services.materialization.jobs import (
    ComputeEngine,
    FileSourceSpec,
    Job,
    JobRepository,
    JobState,
    MaterializationTask,
    OfflineStore,
    Progress,
    Store,
    Trigger,
    Window,
)
from shared.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from shared.feature_views import ViewSchema
from shared.online_store import OnlineStore

log = structlog.get_logger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
WATCH_POLL_SECONDS = 0.2


class Definitions(Protocol):
    def feature_view(self, project: str, view_id: str, version: int = 0) -> Any: ...
    def data_source(self, project: str, source_id: str) -> Any: ...
    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema: ...


def parse_view_name(name: str, field: str) -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "featureViews":
        raise InvalidArgument(
            field, f"{name!r} is not `projects/{{project}}/featureViews/{{view}}`"
        )
    return parts[1], parts[3]


def parse_job_name(name: str) -> tuple[str, str, str]:
    parts = name.split("/")
    if len(parts) != 6 or parts[4] != "jobs":
        raise InvalidArgument("name", f"{name!r} is not `projects/*/featureViews/*/jobs/{{job}}`")
    project, view = parse_view_name("/".join(parts[:4]), "name")
    return project, view, parts[5]


class Materializer:
    def __init__(
        self,
        *,
        jobs: JobRepository,
        definitions: Definitions,
        engine: ComputeEngine,
        offline_store: OfflineStore,
        online_store: OnlineStore,
        executor: Executor,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._jobs = jobs
        self._definitions = definitions
        self._engine = engine
        self._offline_store = offline_store
        self._online_store = online_store
        self._executor = executor
        self._clock = clock or (lambda: datetime.now(UTC))
        self._cancel_requested: set[str] = set()
        self._lock = threading.Lock()

    def backfill(self, view_name: str, window: Window | None, stores: Sequence[Store]) -> list[Job]:
        project, view_id = parse_view_name(view_name, "feature_view")
        if window is None:
            raise InvalidArgument("window", "give window.start_time and window.end_time")
        if window.end <= window.start:
            raise InvalidArgument("window.end_time", "must be after window.start_time")
        view = self._definitions.feature_view(project, view_id)
        chosen = tuple(stores) or _enabled_stores(view)
        if not chosen:
            raise FailedPrecondition(
                f"{view_name} has neither online nor offline materialization enabled"
            )
        self._source_spec(project, view)
        job = Job(
            job_id=uuid.uuid4().hex[:16],
            project=project,
            feature_view=view_id,
            feature_view_version=view.version,
            window=window,
            stores=chosen,
            state=JobState.QUEUED,
            trigger=Trigger.BACKFILL,
            create_time=self._clock(),
        )
        self._jobs.insert(job)
        self._executor.submit(self._execute, job)
        return [job]

    def get_job(self, name: str) -> Job:
        project, view, job_id = parse_job_name(name)
        job = self._jobs.get(project, view, job_id)
        if job is None:
            raise NotFound(f"{name} does not exist")
        return job

    def list_jobs(self, parent: str, page_size: int, page_token: str) -> tuple[list[Job], str]:
        project, view = parse_view_name(parent, "parent")
        if page_size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        if page_token and not page_token.isdigit():
            raise InvalidArgument("page_token", "is not a token from a previous response")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        offset = int(page_token or 0)
        jobs = self._jobs.list(project, view, offset, size + 1)
        token = str(offset + size) if len(jobs) > size else ""
        return jobs[:size], token

    def cancel_job(self, name: str) -> Job:
        job = self.get_job(name)
        if job.state.terminal:
            raise FailedPrecondition(f"{name} already ended {job.state.value}")
        with self._lock:
            self._cancel_requested.add(job.job_id)
        return job

    def watch_job(self, name: str) -> Iterator[Job]:
        """Yield the job whenever its state or progress changes, until it ends."""
        previous = None
        while True:
            job = self.get_job(name)
            snapshot = (job.state, job.progress.chunks_done, job.progress.rows_read)
            if snapshot != previous:
                yield job
                previous = snapshot
            if job.state.terminal:
                return
            time.sleep(WATCH_POLL_SECONDS)

    # --- running ----------------------------------------------------------------------

    def _execute(self, job: Job) -> None:
        structlog.contextvars.bind_contextvars(job=job.name)
        try:
            if self._take_cancel(job.job_id):
                self._finish(job, JobState.CANCELLED)
                return
            view = self._definitions.view_schema(
                job.project, job.feature_view, job.feature_view_version
            )
            source = self._source_spec(
                job.project,
                self._definitions.feature_view(
                    job.project, job.feature_view, job.feature_view_version
                ),
            )
            job.state, job.start_time = JobState.RUNNING, self._clock()
            self._jobs.save(job)
            task = MaterializationTask(view, source, job.window, job.stores, job.job_id)
            cancelled = False

            def on_chunk(progress: Progress) -> bool:
                nonlocal cancelled
                job.progress = progress
                self._jobs.save(job)
                cancelled = self._take_cancel(job.job_id)
                return not cancelled

            job.progress = self._engine.run(
                task,
                offline_store=self._offline_store,
                online_store=self._online_store,
                on_chunk=on_chunk,
            )
            self._finish(job, JobState.CANCELLED if cancelled else JobState.SUCCEEDED)
        except DomainError as exc:
            self._finish(job, JobState.FAILED, exc.message)
        except Exception as exc:  # a job must end FAILED, whatever broke
            log.exception("job_failed")
            self._finish(job, JobState.FAILED, f"{type(exc).__name__}: {exc}")

    def _finish(self, job: Job, state: JobState, error: str = "") -> None:
        job.state, job.error_message, job.end_time = state, error, self._clock()
        self._jobs.save(job)
        log.info("job_ended", state=state.value, rows_read=job.progress.rows_read, error=error)

    def _take_cancel(self, job_id: str) -> bool:
        with self._lock:
            if job_id in self._cancel_requested:
                self._cancel_requested.discard(job_id)
                return True
        return False

    def _source_spec(self, project: str, view: Any) -> FileSourceSpec:
        if not view.source:
            raise FailedPrecondition(f"{view.name} has no data source to materialize from")
        source = self._definitions.data_source(project, view.source)
        if source.WhichOneof("kind") != "file":
            raise FailedPrecondition(
                f"data source {view.source!r} is not a FILE source; only FILE sources "
                "materialize in this version"
            )
        file_format = "PARQUET" if source.file.format == 1 else "CSV"
        return FileSourceSpec(
            source.file.path,
            file_format,
            source.event_timestamp_column,
            source.file.partition_column,
        )


def _enabled_stores(view: Any) -> tuple[Store, ...]:
    stores = []
    if view.offline_enabled:
        stores.append(Store.OFFLINE)
    if view.online_enabled:
        stores.append(Store.ONLINE)
    return tuple(stores)
