"""Runs queued materialization jobs and fires schedules, in any number of replicas.

Each replica polls for work: a job is claimed with `FOR UPDATE SKIP LOCKED`, so it runs
exactly once; a running job's heartbeat is refreshed after every chunk, and a job whose
runner died (no heartbeat for `lease_seconds`) is ended FAILED with its intervals
INCOMPLETE, never COMPLETE. Schedules are locked the same way, so one replica fires each.
A replica asked to stop ends its running jobs at their next chunk boundary the same way:
FAILED with the window INCOMPLETE, to be retried (RetryJob), never COMPLETE.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow.dataset as ds
import structlog
from recstack.registry.v1 import feature_view_pb2

from services.materialization.intervals import Status, check_capacity
from services.materialization.jobs import (
    Aggregation,
    AggregationFunction,
    ComputeEngine,
    EmbeddingField,
    FileSourceSpec,
    Job,
    JobState,
    MaterializationTask,
    OfflineStore,
    PostgresSourceSpec,
    Progress,
    PublishMode,
    Settings,
    SourceSpec,
    SqlTransformation,
    Store,
    Transformation,
    Trigger,
    UnitOfWork,
    UnitOfWorkFactory,
    WindowedAggregations,
)
from services.materialization.materializer import (
    Definitions,
    enqueue,
    finish,
    new_job,
)
from services.materialization.schedules import due_triggers, run_window
from shared.embeddings import ModelSettings
from shared.errors import (
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    quoted,
    redact,
)
from shared.feature_views import ViewSchema
from shared.online_store import OnlineStore
from shared.paths import FileRoots

log = structlog.get_logger(__name__)
# A job's error message is stored and returned cut to this many characters.
MAX_ERROR_CHARS = 2000


class JobRunner:
    def __init__(
        self,
        *,
        unit_of_work: UnitOfWorkFactory,
        definitions: Definitions,
        engine: ComputeEngine,
        offline_store: OfflineStore,
        online_store: OnlineStore,
        lease_seconds: float = 60.0,
        poll_seconds: float = 1.0,
        clock: Callable[[], datetime] | None = None,
        file_roots: FileRoots | None = None,
        redactions: Mapping[str, str] | None = None,
    ) -> None:
        # Server paths a job's error message names instead of showing (shared.errors.redact).
        self._redactions = dict(redactions or {})
        # None: FILE source paths are read as stored (unit tests of the runner's logic).
        self._file_roots = file_roots
        self.runner_id = uuid.uuid4().hex[:12]
        self._unit_of_work = unit_of_work
        self._definitions = definitions
        self._engine = engine
        self._offline_store = offline_store
        self._online_store = online_store
        self._lease = timedelta(seconds=lease_seconds)
        self._poll_seconds = poll_seconds
        self._clock = clock or (lambda: datetime.now(UTC))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, workers: int = 1) -> None:
        for index in range(workers):
            thread = threading.Thread(target=self._loop, name=f"job-runner-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming work and end running jobs at their next chunk boundary, waiting up
        to `timeout` seconds in all. A job whose chunk outlasts it stays RUNNING without a
        heartbeat: another replica's reaper ends it FAILED once its lease runs out."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        running = [thread.name for thread in self._threads if thread.is_alive()]
        if running:
            log.warning("runner_stop_timed_out", threads=running, timeout_s=timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run_pending(self) -> int:
        """Reap dead jobs, fire due schedules, then run queued jobs until none is left."""
        self.reap()
        self.fire_schedules()
        ran = 0
        while not self._stop.is_set() and self.run_one():
            ran += 1
        return ran

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_pending()
            except Exception:  # the loop must survive a bad cycle (database blip, bug)
                log.exception("runner_cycle_failed")
            self._wake.wait(self._poll_seconds)
            self._wake.clear()

    # --- jobs -------------------------------------------------------------------------

    def run_one(self) -> bool:
        with self._unit_of_work() as uow:
            job = uow.jobs.claim(self.runner_id, self._clock())
        if job is None:
            return False
        structlog.contextvars.bind_contextvars(job=job.name)
        try:
            state, error = self._execute(job)
        except DomainError as exc:
            state, error = JobState.FAILED, self._message(exc.message)
        except Exception:  # a job must end FAILED, whatever broke
            # The job's error is for its API callers: no exception text (it may quote server
            # paths or values), only a reference to the log line with the traceback.
            reference = uuid.uuid4().hex[:12]
            log.exception("job_failed", reference=reference)
            state, error = (
                JobState.FAILED,
                f"internal error in the materialization service (reference {reference}); "
                "its log has the details",
            )
        with self._unit_of_work() as uow:
            finish(uow, job, state, self._clock(), error)
        log.info("job_ended", state=state.value, rows_read=job.progress.rows_read, error=error)
        structlog.contextvars.unbind_contextvars("job")
        return True

    def _message(self, message: str) -> str:
        message = redact(message, self._redactions)
        return message if len(message) <= MAX_ERROR_CHARS else f"{message[:MAX_ERROR_CHARS]}…"

    def _execute(self, job: Job) -> tuple[JobState, str]:
        view = self._definitions.view_schema(
            job.project, job.feature_view, job.feature_view_version
        )
        task = self._task(job, view)
        if Store.OFFLINE in job.stores:
            # Rerunning a window must replace its events, not add them a second time.
            self._offline_store.clear_window(view, job.window)
        cancelled = interrupted = False

        def on_chunk(progress: Progress) -> bool:
            nonlocal cancelled, interrupted
            with self._unit_of_work() as uow:
                current = uow.jobs.get(job.project, job.feature_view, job.job_id)
                job.progress, job.heartbeat_time = progress, self._clock()
                job.cancel_requested = bool(current and current.cancel_requested)
                uow.jobs.save(job)
            cancelled = job.cancel_requested
            interrupted = not cancelled and self._stop.is_set()
            return not (cancelled or interrupted)

        job.progress = self._engine.run(
            task,
            offline_store=self._offline_store,
            online_store=self._online_store,
            on_chunk=on_chunk,
        )
        if cancelled:
            return JobState.CANCELLED, "cancelled while running"
        if interrupted:
            return JobState.FAILED, (
                f"the materialization service running it (runner {self.runner_id}) shut down "
                f"after {job.progress.chunks_done} chunks; its window is INCOMPLETE: retry the job"
            )
        if job.publish is not None and job.publish.mode is PublishMode.OVERWRITE:
            # Upserting first and removing the other keys last means readers never see the
            # table emptier than either the old or the new partition.
            keys = ds.dataset(task.source.path, format="parquet").to_table(columns=[view.join_key])
            self._online_store.retain_keys(view, keys.column(view.join_key).to_pylist())
        return JobState.SUCCEEDED, ""

    def _task(self, job: Job, view: ViewSchema) -> MaterializationTask:
        read = self._sources(job, view)
        produced = [feature for feature in view.features if feature.produced]
        models = {
            feature.name: ModelSettings.from_proto(
                self._definitions.embedding_model(job.project, feature.embedding_model)
            )
            for feature in produced
        }
        if read.precomputed:
            dimensions = {name: model.dimension for name, model in models.items()}
            embeddings: tuple[EmbeddingField, ...] = ()
        else:
            dimensions = {}
            embeddings = tuple(
                EmbeddingField(feature.name, feature.input_field, models[feature.name])
                for feature in produced
            )
        return MaterializationTask(
            view,
            read.source,
            job.window,
            job.stores,
            job.job_id,
            read.excluded,
            read.transformation,
            dimensions,
            embeddings,
        )

    def _sources(self, job: Job, view: ViewSchema) -> _Read:
        offline = self._offline_store.source(view)
        if job.publish is not None:
            # transform=false: the partition's rows already carry the produced fields.
            return _Read(
                *self._publish_sources(job, offline), precomputed=not job.publish.transform
            )
        if job.stores == (Store.ONLINE,) and self._offline_complete(job):
            # Online bootstrap: the offline store already holds this window, transformed and
            # embedded; copy it rather than reading (and paying for) the source again.
            return _Read(offline, precomputed=True)
        source, transformation = self._file_source(job)
        return _Read(source, transformation=transformation)

    def _publish_sources(
        self, job: Job, offline: FileSourceSpec
    ) -> tuple[FileSourceSpec, FileSourceSpec | None]:
        assert job.publish is not None
        partition = f"{offline.path}/{offline.partition_column}={job.publish.partition}"
        source = FileSourceSpec(partition, "PARQUET", offline.event_timestamp_column)
        excluded = None
        if job.publish.mode is PublishMode.INCREMENTAL:
            previous = (job.window.start - timedelta(days=1)).date().isoformat()
            excluded = FileSourceSpec(
                f"{offline.path}/{offline.partition_column}={previous}",
                "PARQUET",
                offline.event_timestamp_column,
            )
        return source, excluded

    def _offline_complete(self, job: Job) -> bool:
        with self._unit_of_work() as uow:
            timeline = uow.intervals.load(
                job.project, job.feature_view, job.feature_view_version, Store.OFFLINE
            )
        return not timeline.status_everywhere(job.window, Status.COMPLETE)

    def _file_source(self, job: Job) -> tuple[SourceSpec, Transformation | None]:
        """The view's data source (FILE or POSTGRES) and its transformation."""
        view = self._definitions.feature_view(
            job.project, job.feature_view, job.feature_view_version
        )
        source = self._definitions.data_source(job.project, view.source)
        # `getattr`: registry stand-ins in the unit tests predate transformations.
        return _source_spec(view.source, source, job.project, self._file_roots), _transformation(
            getattr(view, "transformation", None)
        )

    # --- failures and schedules -------------------------------------------------------

    def reap(self) -> int:
        """End jobs whose runner stopped heartbeating (crashed or killed) as FAILED."""
        now = self._clock()
        with self._unit_of_work() as uow:
            dead = uow.jobs.stale(now - self._lease)
            for job in dead:
                finish(
                    uow,
                    job,
                    JobState.FAILED,
                    now,
                    f"the materialization service running it (runner {job.runner_id}) stopped; "
                    "its window is INCOMPLETE: retry the job",
                )
        return len(dead)

    def fire_schedules(self) -> int:
        """Queue the runs of every due schedule. One that cannot be planned (its window
        cannot be computed, its view is gone, it would exceed the interval limit) is marked
        failed with the reason and skipped from then on: the others fire all the same."""
        now = self._clock()
        fired = 0
        with self._unit_of_work() as uow:
            for settings in uow.settings.due(now):
                try:
                    plan = self._plan(uow, settings, now)
                except (Unavailable, DeadlineExceeded) as exc:
                    # The registry or the database is away: try this schedule next cycle.
                    log.warning("schedule_deferred", schedule=settings.name, error=exc.message)
                    continue
                except Exception as exc:  # a bad schedule must not stop the other schedules
                    self._mark_failed(uow, settings, now, exc)
                    continue
                fired += self._fire(uow, settings, plan)
        if fired:
            self._wake.set()
        return fired

    def _plan(self, uow: UnitOfWork, settings: Settings, now: datetime) -> _Firing | None:
        """The jobs a due schedule starts now, computed before anything is written."""
        recurrence = settings.recurrence
        assert recurrence is not None, "due() returns scheduled settings only"
        triggers = due_triggers(recurrence, settings.last_trigger_time, now)
        if not triggers:
            return None
        project, view_id = settings.project, settings.feature_view
        view = self._definitions.feature_view(project, view_id)
        stores = tuple(
            store
            for store, enabled in (
                (Store.OFFLINE, settings.offline_enabled),
                (Store.ONLINE, settings.online_enabled),
            )
            if enabled
        )
        uow.intervals.lock(project, view_id, view.version)
        windows = [run_window(t, recurrence, settings.source_delay) for t in triggers]
        for store in stores:
            check_capacity(uow.intervals.load(project, view_id, view.version, store), windows)
        jobs = [
            new_job(project, view_id, view.version, window, stores, Trigger.SCHEDULE, now)
            for window in windows
        ]
        return _Firing(jobs if stores else [], triggers[-1])

    def _fire(self, uow: UnitOfWork, settings: Settings, plan: _Firing | None) -> int:
        if plan is None:
            return 0
        enqueue(uow, plan.jobs)
        settings.last_trigger_time = plan.last_trigger
        uow.settings.save(settings)
        return len(plan.jobs)

    def _mark_failed(
        self, uow: UnitOfWork, settings: Settings, now: datetime, exc: Exception
    ) -> None:
        if isinstance(exc, DomainError):
            reason = exc.message
        elif isinstance(exc, OverflowError | ValueError):
            reason = (
                "its run window falls outside years 1-9999 (check source_delay, the interval "
                "and start_time)"
            )
        else:
            reference = uuid.uuid4().hex[:12]
            log.exception("schedule_failed", schedule=settings.name, reference=reference)
            reason = f"internal error (reference {reference}); the service log has the details"
        settings.schedule_error = self._message(f"the schedule cannot fire: {reason}")
        settings.schedule_error_time = now
        uow.settings.save(settings)
        log.warning("schedule_failed", schedule=settings.name, error=settings.schedule_error)


@dataclass(frozen=True)
class _Firing:
    """What a due schedule queues now, and the trigger it has then fired up to."""

    jobs: list[Job]
    last_trigger: datetime


@dataclass(frozen=True)
class _Read:
    """What a job reads: its source, keys to skip, its transformation, and whether produced
    (embedding) fields arrive in the rows rather than being computed."""

    source: SourceSpec
    excluded: FileSourceSpec | None = None
    transformation: Transformation | None = None
    precomputed: bool = False


def _source_spec(
    name: str, source: Any, project: str = "", file_roots: FileRoots | None = None
) -> SourceSpec:
    """The registry's DataSource message as what the compute engine reads; a FILE path is
    checked against the project's file roots again (they may have changed since create)."""
    kind = source.WhichOneof("kind")
    if kind == "postgres":
        postgres = source.postgres
        return PostgresSourceSpec(
            source.event_timestamp_column,
            postgres.table,
            postgres.query,
            postgres.url,
            # `getattr`: registry stand-ins in the unit tests predate credentials.
            getattr(postgres, "credential", ""),
        )
    if kind == "file":
        file = source.file
        path = file.path
        if file_roots is not None:
            try:
                path = file_roots.readable(file.path, project, "data_source.file.path")
            except InvalidArgument as exc:
                raise FailedPrecondition(
                    f"data source {quoted(name)}: {exc.description}; nothing was read",
                    reason=exc.reason,
                ) from None
        return FileSourceSpec(
            path,
            "PARQUET" if file.format == file.FORMAT_PARQUET else "CSV",
            source.event_timestamp_column,
            file.partition_column,
            # `getattr`: registry stand-ins in the unit tests predate partition formats.
            getattr(file, "partition_format", ""),
            project if file_roots is not None else "",
        )
    raise FailedPrecondition(
        f"data source {quoted(name)} is a {kind} source: its rows arrive through PushFeatures, "
        "there is nothing to materialize"
    )


def _transformation(message: Any) -> Transformation | None:
    """The registry's Transformation message as a domain object (None when unset)."""
    kind = message.WhichOneof("kind") if message is not None else None
    if kind == "sql":
        return SqlTransformation(message.sql)
    if kind == "aggregations":
        return WindowedAggregations(
            tuple(_aggregation(item) for item in message.aggregations.aggregations)
        )
    return None


def _aggregation(message: Any) -> Aggregation:
    name = feature_view_pb2.Aggregation.Function.Name(message.function)
    return Aggregation(
        AggregationFunction(name.removeprefix("FUNCTION_")),
        message.column,
        message.window.ToTimedelta(),
        message.output,
        message.n,
    )
