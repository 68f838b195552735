"""Materialization jobs: the domain objects and the interfaces their runner depends on."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from shared.feature_views import ViewSchema
from shared.online_store import OnlineStore


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Store(enum.StrEnum):
    OFFLINE = "OFFLINE"
    ONLINE = "ONLINE"


class Trigger(enum.StrEnum):
    BACKFILL = "BACKFILL"
    RETRY = "RETRY"
    SCHEDULE = "SCHEDULE"
    PUBLISH = "PUBLISH"


@dataclass(frozen=True)
class Window:
    """A half-open time range [start, end)."""

    start: datetime
    end: datetime


@dataclass
class Progress:
    rows_read: int = 0
    rows_written_offline: int = 0
    rows_written_online: int = 0
    chunks_done: int = 0


@dataclass
class Job:
    job_id: str
    project: str
    feature_view: str
    feature_view_version: int
    window: Window
    stores: tuple[Store, ...]
    state: JobState
    trigger: Trigger
    create_time: datetime
    progress: Progress = field(default_factory=Progress)
    error_message: str = ""
    retry_of: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None

    @property
    def name(self) -> str:
        return f"projects/{self.project}/featureViews/{self.feature_view}/jobs/{self.job_id}"


@dataclass(frozen=True)
class FileSourceSpec:
    """Where a batch view's raw rows live (a FILE data source)."""

    path: str
    file_format: str
    event_timestamp_column: str
    partition_column: str = ""


@dataclass(frozen=True)
class MaterializationTask:
    view: ViewSchema
    source: FileSourceSpec
    window: Window
    stores: tuple[Store, ...]
    job_id: str


class JobRepository(Protocol):
    def insert(self, job: Job) -> None: ...
    def get(self, project: str, feature_view: str, job_id: str) -> Job | None: ...
    def save(self, job: Job) -> None: ...
    def list(self, project: str, feature_view: str, offset: int, limit: int) -> list[Job]: ...


class OfflineStore(Protocol):
    def write(self, view: ViewSchema, table: object, job_id: str, chunk: int) -> int:
        """Append rows (a pyarrow Table) atomically; returns rows written."""
        ...


class ComputeEngine(Protocol):
    def run(
        self,
        task: MaterializationTask,
        *,
        offline_store: OfflineStore,
        online_store: OnlineStore,
        on_chunk: Callable[[Progress], bool],
    ) -> Progress:
        """Materialize the task; `on_chunk` reports progress and returns False to stop."""
        ...
