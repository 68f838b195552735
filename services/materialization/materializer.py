"""Materialization requests: backfills, retries, cancels, settings, publishes, intervals.

Knows nothing of gRPC. Each request is one unit of work: jobs are queued together with the
PENDING intervals they cover, so a job never exists without its intervals or the reverse.
The `JobRunner` (runner.py) executes queued jobs.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from services.materialization.intervals import (
    Interval,
    Status,
    Timeline,
    backfill_windows,
    check_capacity,
)
from services.materialization.jobs import (
    Job,
    JobState,
    OfflineStore,
    Publish,
    PublishMode,
    Settings,
    Store,
    Trigger,
    UnitOfWork,
    UnitOfWorkFactory,
    Window,
)
from shared.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    quoted,
)
from shared.feature_views import ViewSchema
from shared.online_store import OnlineStore
from shared.standard_methods import PageTokens, page_size

WATCH_POLL_SECONDS = 0.2
SETTINGS_FIELDS = frozenset({"offline_enabled", "online_enabled", "recurrence", "source_delay"})
# The longest window, delay or schedule period (shared.request_validation's bound).
MAX_SPAN = timedelta(days=36525)
PARTITION = re.compile(r"\d{4}-\d{2}-\d{2}")


class Definitions(Protocol):
    def feature_view(self, project: str, view_id: str, version: int = 0) -> Any: ...
    def data_source(self, project: str, source_id: str) -> Any: ...
    def embedding_model(self, project: str, model_id: str) -> Any: ...
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


def parse_partition(partition: str) -> datetime:
    """The day a `YYYY-MM-DD` partition value names (parsed, not pattern-matched: 2026-02-30
    is no day), at midnight UTC; the day after it must exist too."""
    problem = f"{quoted(partition)} is not a YYYY-MM-DD date"
    if not PARTITION.fullmatch(partition):
        raise InvalidArgument("partition", problem)
    try:
        day = datetime.strptime(partition, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidArgument("partition", problem) from None
    if day.date() == date.max:
        raise InvalidArgument("partition", f"{problem} before 9999-12-31")
    return day


def new_job(
    project: str,
    view: str,
    version: int,
    window: Window,
    stores: Sequence[Store],
    trigger: Trigger,
    now: datetime,
    **extra: Any,
) -> Job:
    return Job(
        job_id=uuid.uuid4().hex[:16],
        project=project,
        feature_view=view,
        feature_view_version=version,
        window=window,
        stores=tuple(stores),
        state=JobState.QUEUED,
        trigger=trigger,
        create_time=now,
        **extra,
    )


def enqueue(uow: UnitOfWork, jobs: Sequence[Job]) -> None:
    """Insert jobs and mark their windows PENDING (the caller holds the view's lock)."""
    timelines: dict[tuple[str, str, int, Store], Timeline] = {}
    for job in jobs:
        for store in job.stores:
            key = (job.project, job.feature_view, job.feature_view_version, store)
            if key not in timelines:
                timelines[key] = uow.intervals.load(*key)
            timelines[key] = timelines[key].set(job.window, Status.PENDING, job.job_id)
        uow.jobs.insert(job)
    for key, timeline in timelines.items():
        uow.intervals.save(*key, timeline)


def default_settings(project: str, view_id: str, view: Any) -> Settings:
    """Before anyone sets them, a view materializes into the stores its definition enables."""
    return Settings(
        project, view_id, offline_enabled=view.offline_enabled, online_enabled=view.online_enabled
    )


class Materializer:
    def __init__(
        self,
        *,
        unit_of_work: UnitOfWorkFactory,
        definitions: Definitions,
        offline_store: OfflineStore,
        online_store: OnlineStore,
        on_enqueue: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] | None = None,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self._tokens = page_tokens or PageTokens()
        self._unit_of_work = unit_of_work
        self._definitions = definitions
        self._offline_store = offline_store
        self._online_store = online_store
        self._on_enqueue = on_enqueue
        self._clock = clock or (lambda: datetime.now(UTC))
        self._stopping = threading.Event()

    def stop_watches(self) -> None:
        """End every open `watch_job` with a final snapshot of its job (shutdown)."""
        self._stopping.set()

    # --- backfill and retry -----------------------------------------------------------

    def backfill(
        self,
        view_name: str,
        start: datetime | None,
        end: datetime | None,
        statuses: Sequence[Status],
        stores: Sequence[Store],
    ) -> list[Job]:
        project, view_id = parse_view_name(view_name, "feature_view")
        view = self._definitions.feature_view(project, view_id)
        if not view.source:
            raise FailedPrecondition(f"{view_name} has no data source to materialize from")
        with self._unit_of_work() as uow:
            settings = uow.settings.get(project, view_id) or default_settings(
                project, view_id, view
            )
            chosen = _chosen_stores(settings, stores)
            uow.intervals.lock(project, view_id, view.version)
            windows: dict[Window, list[Store]] = {}
            for store in chosen:
                timeline = uow.intervals.load(project, view_id, view.version, store)
                found = backfill_windows(timeline, statuses, start, end)
                check_capacity(timeline, found)
                for window in found:
                    windows.setdefault(window, []).append(store)
            offline = uow.intervals.load(project, view_id, view.version, Store.OFFLINE)
            windows = _cut_online_by_offline(windows, offline)
            now = self._clock()
            jobs = [
                new_job(
                    project, view_id, view.version, window, windows[window], Trigger.BACKFILL, now
                )
                for window in sorted(windows, key=lambda window: window.start)
            ]
            enqueue(uow, jobs)
        self._on_enqueue()
        return jobs

    def retry(self, name: str) -> Job:
        project, view_id, job_id = parse_job_name(name)
        with self._unit_of_work() as uow:
            failed = _require_job(uow, project, view_id, job_id, name)
            if failed.state not in (JobState.FAILED, JobState.CANCELLED):
                raise FailedPrecondition(
                    f"{name} is {failed.state.value}; only FAILED or CANCELLED jobs can be retried"
                )
            uow.intervals.lock(project, view_id, failed.feature_view_version)
            for store in failed.stores:
                timeline = uow.intervals.load(project, view_id, failed.feature_view_version, store)
                others = timeline.status_everywhere(failed.window, Status.INCOMPLETE)
                if others:
                    raise FailedPrecondition(
                        f"{name} cannot be retried: {_describe(others[0], store)}; backfill that "
                        "window instead",
                        reason="WINDOW_NOT_INCOMPLETE",
                    )
            job = new_job(
                project,
                view_id,
                failed.feature_view_version,
                failed.window,
                failed.stores,
                Trigger.RETRY,
                self._clock(),
                retry_of=failed.job_id,
                publish=failed.publish,
            )
            enqueue(uow, [job])
        self._on_enqueue()
        return job

    # --- jobs -------------------------------------------------------------------------

    def get_job(self, name: str) -> Job:
        project, view_id, job_id = parse_job_name(name)
        with self._unit_of_work() as uow:
            return _require_job(uow, project, view_id, job_id, name)

    def list_jobs(self, parent: str, requested_size: int, page_token: str) -> tuple[list[Job], str]:
        project, view_id = parse_view_name(parent, "parent")
        size = page_size(requested_size)
        # Newest first: a job created while a caller pages shifts the offsets by one, so the
        # next page may repeat one job, never skip one.
        scope = f"jobs:{project}/{view_id}"
        offset = int(self._tokens.position(page_token, scope) or 0)
        with self._unit_of_work() as uow:
            jobs = uow.jobs.list(project, view_id, offset, size + 1)
        more = len(jobs) > size
        return jobs[:size], self._tokens.issue(scope, str(offset + size)) if more else ""

    def cancel_job(self, name: str) -> Job:
        project, view_id, job_id = parse_job_name(name)
        with self._unit_of_work() as uow:
            job = _require_job(uow, project, view_id, job_id, name)
            if job.state.terminal:
                raise FailedPrecondition(f"{name} already ended {job.state.value}")
            if job.state is JobState.QUEUED:
                finish(uow, job, JobState.CANCELLED, self._clock(), "cancelled before it started")
            else:
                # The runner stops at its next chunk and marks the job CANCELLED.
                job.cancel_requested = True
                uow.jobs.save(job)
        return job

    def watch_job(self, name: str) -> Iterator[Job]:
        """Yield the job whenever its state or progress changes, until it ends.

        Once the service is stopping, the job as it stands is the watch's final message
        (even if unchanged); a job that has not ended then (another replica runs it, or it is
        still queued) ends the watch UNAVAILABLE, so the caller watches again elsewhere.
        """
        previous = None
        while True:
            stopping = self._stopping.is_set()
            job = self.get_job(name)
            snapshot = (job.state, job.progress.chunks_done, job.progress.rows_read)
            if snapshot != previous or stopping:
                yield job
                previous = snapshot
            if job.state.terminal:
                return
            if stopping:
                raise Unavailable(
                    f"the materialization service is shutting down while {name} is "
                    f"{job.state.value}; call WatchJob again to follow it",
                    reason="SHUTTING_DOWN",
                )
            self._stopping.wait(WATCH_POLL_SECONDS)

    # --- intervals and settings -------------------------------------------------------

    def list_intervals(
        self, view_name: str, version: int, store: Store | None, window: Window | None
    ) -> list[Interval]:
        project, view_id = parse_view_name(view_name, "feature_view")
        if store is None:
            raise InvalidArgument("store", "must be STORE_OFFLINE or STORE_ONLINE")
        if version < 0:
            raise InvalidArgument("version", "must not be negative")
        if window is not None and window.end <= window.start:
            raise InvalidArgument("window.end_time", "must be after window.start_time")
        version = version or self._definitions.feature_view(project, view_id).version
        with self._unit_of_work() as uow:
            timeline = uow.intervals.load(project, view_id, version, store)
        return timeline.covering(window)

    def get_settings(self, view_name: str) -> Settings:
        project, view_id = parse_view_name(view_name, "name")
        view = self._definitions.feature_view(project, view_id)
        with self._unit_of_work() as uow:
            return uow.settings.get(project, view_id) or default_settings(project, view_id, view)

    def update_settings(self, desired: Settings, etag: str, paths: Sequence[str]) -> Settings:
        unknown = sorted(set(paths) - SETTINGS_FIELDS)
        if unknown:
            raise InvalidArgument("update_mask", f"unknown or read-only fields {unknown}")
        if desired.recurrence is not None and desired.recurrence.interval < 1:
            raise InvalidArgument("settings.recurrence.interval", "must be at least 1")
        if desired.recurrence is not None and desired.recurrence.period > MAX_SPAN:
            raise InvalidArgument("settings.recurrence.interval", "the period exceeds 100 years")
        if desired.source_delay < timedelta(0):
            raise InvalidArgument("settings.source_delay", "must not be negative")
        if desired.source_delay > MAX_SPAN:
            raise InvalidArgument("settings.source_delay", "must be at most 100 years")
        view = self._definitions.feature_view(desired.project, desired.feature_view)
        schema = self._definitions.view_schema(desired.project, desired.feature_view)
        with self._unit_of_work() as uow:
            current = uow.settings.get(desired.project, desired.feature_view) or default_settings(
                desired.project, desired.feature_view, view
            )
            if etag and etag != current.etag:
                raise Aborted(f"{current.name} changed concurrently (etag {etag!r} is stale)")
            # Any update is a fresh start for a schedule that had failed.
            updated = replace(
                current, etag=uuid.uuid4().hex, schedule_error="", schedule_error_time=None
            )
            for path in paths or sorted(SETTINGS_FIELDS):
                setattr(updated, path, getattr(desired, path))
            uow.intervals.lock(desired.project, desired.feature_view, view.version)
            self._disable(uow, current, updated, schema)
            uow.settings.save(updated)
        return updated

    def _disable(
        self, uow: UnitOfWork, current: Settings, updated: Settings, view: ViewSchema
    ) -> None:
        """A store switched off forgets its intervals and stops serving its data."""
        for store, was, now in (
            (Store.OFFLINE, current.offline_enabled, updated.offline_enabled),
            (Store.ONLINE, current.online_enabled, updated.online_enabled),
        ):
            if was and not now:
                uow.intervals.save(view.project, view.name, view.version, store, Timeline())
                if store is Store.OFFLINE:
                    self._offline_store.drop(view)
                else:
                    self._online_store.drop_table(view)
                    self._online_store.ensure_table(view)

    # --- publish ----------------------------------------------------------------------

    def publish(self, view_name: str, partition: str, mode: PublishMode, transform: bool) -> Job:
        project, view_id = parse_view_name(view_name, "feature_view")
        day = parse_partition(partition)
        view = self._definitions.feature_view(project, view_id)
        with self._unit_of_work() as uow:
            settings = uow.settings.get(project, view_id) or default_settings(
                project, view_id, view
            )
            _chosen_stores(settings, [Store.ONLINE])
            uow.intervals.lock(project, view_id, view.version)
            job = new_job(
                project,
                view_id,
                view.version,
                Window(day, day + timedelta(days=1)),
                [Store.ONLINE],
                Trigger.PUBLISH,
                self._clock(),
                publish=Publish(partition, mode, transform),
            )
            enqueue(uow, [job])
        self._on_enqueue()
        return job


def _cut_online_by_offline(
    windows: dict[Window, list[Store]], offline: Timeline
) -> dict[Window, list[Store]]:
    """Online bootstrap (the Azure document's table): an online-only window is cut by the
    offline timeline. Offline-COMPLETE parts become jobs of their own, which copy the offline
    store's rows instead of reading the source (the runner checks it again when it runs);
    offline-PENDING parts get no job; NONE and INCOMPLETE parts are computed from the source.
    Adjacent parts of one kind stay one job."""
    cut: dict[Window, list[Store]] = {}
    for window, stores in windows.items():
        if stores != [Store.ONLINE]:
            cut[window] = stores
            continue
        pieces: list[tuple[Window, bool]] = []
        for part in offline.covering(window):
            if part.status is Status.PENDING:
                continue
            copy = part.status is Status.COMPLETE
            previous = pieces[-1] if pieces else None
            if previous and previous[1] == copy and previous[0].end == part.start:
                pieces[-1] = (Window(previous[0].start, part.end), copy)
            else:
                pieces.append((part.window, copy))
        for piece, _ in pieces:
            cut[piece] = [Store.ONLINE]
    return cut


def finish(uow: UnitOfWork, job: Job, state: JobState, now: datetime, error: str = "") -> None:
    """End a job and give its window the matching status in every store it wrote."""
    job.state, job.error_message, job.end_time = state, error, now
    uow.jobs.save(job)
    status = Status.COMPLETE if state is JobState.SUCCEEDED else Status.INCOMPLETE
    uow.intervals.lock(job.project, job.feature_view, job.feature_view_version)
    for store in job.stores:
        key = (job.project, job.feature_view, job.feature_view_version, store)
        uow.intervals.save(*key, uow.intervals.load(*key).set(job.window, status, job.job_id))


def _chosen_stores(settings: Settings, requested: Sequence[Store]) -> tuple[Store, ...]:
    enabled = {Store.OFFLINE: settings.offline_enabled, Store.ONLINE: settings.online_enabled}
    if not requested:
        chosen = tuple(store for store in (Store.OFFLINE, Store.ONLINE) if enabled[store])
        if not chosen:
            raise FailedPrecondition(
                f"{settings.name}: neither offline nor online materialization is enabled"
            )
        return chosen
    for store in requested:
        if not enabled[store]:
            raise FailedPrecondition(
                f"{store.value.lower()} materialization is disabled for "
                f"projects/{settings.project}/featureViews/{settings.feature_view}; enable it "
                "with UpdateMaterializationSettings",
                reason="STORE_DISABLED",
            )
    return tuple(dict.fromkeys(requested))


def _require_job(uow: UnitOfWork, project: str, view_id: str, job_id: str, name: str) -> Job:
    job = uow.jobs.get(project, view_id, job_id)
    if job is None:
        raise NotFound(f"{name} does not exist")
    return job


def _describe(interval: Interval, store: Store) -> str:
    return (
        f"{store.value.lower()} [{interval.start.isoformat()}, {interval.end.isoformat()}) "
        f"is {interval.status.value}, not INCOMPLETE"
    )
