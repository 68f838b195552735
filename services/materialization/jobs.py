"""Materialization domain objects and the interfaces the service layer depends on."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from shared.embeddings import EmbeddingStats, ModelSettings
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


class PublishMode(enum.StrEnum):
    MERGE = "MERGE"
    OVERWRITE = "OVERWRITE"
    INCREMENTAL = "INCREMENTAL"


class Frequency(enum.StrEnum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"

    @property
    def unit(self) -> timedelta:
        return {"MINUTE": timedelta(minutes=1), "HOUR": timedelta(hours=1)}.get(
            self.value, timedelta(days=1)
        )


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
    # Produced (LLM_EMBEDDING) fields: texts sent to the model, texts whose vector came from
    # the cache, model calls made and texts cut at the model's max input tokens.
    texts_embedded: int = 0
    embedding_cache_hits: int = 0
    embedding_calls: int = 0
    embedding_truncations: int = 0

    def count_embeddings(self, stats: EmbeddingStats) -> None:
        self.texts_embedded += stats.embedded
        self.embedding_cache_hits += stats.cache_hits
        self.embedding_calls += stats.model_calls
        self.embedding_truncations += stats.truncations


@dataclass(frozen=True)
class Publish:
    """What a PUBLISH job syncs: one offline partition to the online store."""

    partition: str
    mode: PublishMode
    transform: bool


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
    publish: Publish | None = None
    cancel_requested: bool = False
    runner_id: str = ""
    heartbeat_time: datetime | None = None

    @property
    def name(self) -> str:
        return f"projects/{self.project}/featureViews/{self.feature_view}/jobs/{self.job_id}"


@dataclass(frozen=True)
class Recurrence:
    frequency: Frequency
    interval: int
    start_time: datetime

    @property
    def period(self) -> timedelta:
        return self.frequency.unit * self.interval


@dataclass
class Settings:
    """Which stores a view materializes into, and its recurring schedule."""

    project: str
    feature_view: str
    offline_enabled: bool = False
    online_enabled: bool = False
    recurrence: Recurrence | None = None
    source_delay: timedelta = timedelta(0)
    last_trigger_time: datetime | None = None
    etag: str = ""
    # Why the schedule could not fire; while set, the schedule is skipped (until an update).
    schedule_error: str = ""
    schedule_error_time: datetime | None = None

    @property
    def name(self) -> str:
        return f"projects/{self.project}/featureViews/{self.feature_view}/materializationSettings"


@dataclass(frozen=True)
class FileSourceSpec:
    """Where rows are read from: a FILE data source, or the view's own offline data.

    `path` is a file, a directory or a glob (`*`, `?`, `[…]`, `**`), local or an object-store
    URL. Partition values (`{partition_column}=value` directories) are read with
    `partition_format`, a strftime format; empty means `%Y-%m-%d`.
    """

    path: str
    file_format: str
    event_timestamp_column: str
    partition_column: str = ""
    partition_format: str = ""
    # Set for a project's FILE source: every file it lists must lie in that project's roots.
    # Empty for the platform's own reads of the offline store.
    project: str = ""


@dataclass(frozen=True)
class PostgresSourceSpec:
    """Rows of a PostgreSQL table (optionally `schema.table`) or of a SELECT query.

    An empty `url` means the platform's database, read under the project's own role; a `url`
    is read as its user, with the password of the declared `credential`.
    """

    event_timestamp_column: str
    table: str = ""
    query: str = ""
    url: str = ""
    credential: str = ""


SourceSpec = FileSourceSpec | PostgresSourceSpec


class AggregationFunction(enum.StrEnum):
    COUNT = "COUNT"
    SUM = "SUM"
    AVG = "AVG"
    MIN = "MIN"
    MAX = "MAX"
    LAST_N = "LAST_N"
    COUNT_BY_VALUE = "COUNT_BY_VALUE"


@dataclass(frozen=True)
class Aggregation:
    """`function` of `column` over each key's events in (t - window, t], named `output`."""

    function: AggregationFunction
    column: str
    window: timedelta
    output: str
    n: int = 0


@dataclass(frozen=True)
class WindowedAggregations:
    aggregations: tuple[Aggregation, ...]


@dataclass(frozen=True)
class SqlTransformation:
    """A DuckDB SELECT over the relation `source`.

    `source` also holds `lookback` of history before the window (for the query's own window
    functions); only output rows whose event time is inside the window are stored.
    """

    sql: str
    lookback: timedelta = timedelta(0)


Transformation = SqlTransformation | WindowedAggregations


@dataclass(frozen=True)
class MaterializationTask:
    view: ViewSchema
    source: SourceSpec
    window: Window
    stores: tuple[Store, ...]
    job_id: str
    # Incremental publish: keys present in this dataset are skipped.
    exclude_keys_from: FileSourceSpec | None = None
    # How source rows become feature rows; None stores the source columns as they are.
    transformation: Transformation | None = None
    # Produced (embedding) fields that arrive pre-computed: each vector must have this length.
    vector_dimensions: Mapping[str, int] = field(default_factory=dict)
    # Produced (embedding) fields the engine computes from their input field.
    embeddings: tuple[EmbeddingField, ...] = ()

    @property
    def computed_fields(self) -> frozenset[str]:
        return frozenset(embedding.name for embedding in self.embeddings)


@dataclass(frozen=True)
class EmbeddingField:
    """A feature the platform produces: `model`'s vector of the text in `input_field`."""

    name: str
    input_field: str
    model: ModelSettings


class OfflineStore(Protocol):
    def write(self, view: ViewSchema, table: Any, job_id: str, chunk: int) -> int:
        """Append rows (a pyarrow Table) atomically; returns rows written."""
        ...

    def clear_window(self, view: ViewSchema, window: Window) -> int:
        """Remove rows whose event time is in `window`, so a rerun never duplicates them."""
        ...

    def source(self, view: ViewSchema) -> FileSourceSpec:
        """The view's offline data as a source to read (online bootstrap, publish)."""
        ...

    def drop(self, view: ViewSchema) -> None: ...


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


class JobRepository(Protocol):
    def insert(self, job: Job) -> None: ...
    def get(self, project: str, feature_view: str, job_id: str) -> Job | None: ...
    def save(self, job: Job) -> None: ...
    def list(self, project: str, feature_view: str, offset: int, limit: int) -> list[Job]: ...
    def claim(self, runner_id: str, now: datetime) -> Job | None:
        """Take the oldest QUEUED job for this runner; each job is claimed exactly once."""
        ...

    def stale(self, heartbeat_before: datetime) -> list[Job]:
        """RUNNING jobs whose runner stopped sending heartbeats (locked for update)."""
        ...


class IntervalRepository(Protocol):
    def lock(self, project: str, feature_view: str, version: int) -> None:
        """Serialise timeline changes of one view version until the transaction ends."""
        ...

    def load(self, project: str, feature_view: str, version: int, store: Store) -> Any: ...
    def save(
        self, project: str, feature_view: str, version: int, store: Store, timeline: Any
    ) -> None: ...


class SettingsRepository(Protocol):
    def get(self, project: str, feature_view: str) -> Settings | None: ...
    def save(self, settings: Settings) -> None: ...
    def due(self, now: datetime) -> Sequence[Settings]:
        """Scheduled settings that have not failed (locked, skipping those another replica
        holds)."""
        ...


class UnitOfWork(Protocol):
    jobs: JobRepository
    intervals: IntervalRepository
    settings: SettingsRepository


UnitOfWorkFactory = Callable[[], AbstractContextManager[UnitOfWork]]
