"""The default compute engine: DuckDB over pyarrow sources, on this machine, in bounded chunks.

A task's source (files or PostgreSQL, see `sources`) is scanned lazily by DuckDB, which runs
the view's transformation (see `transform`) and streams the window's rows back as Arrow
batches of at most `chunk_rows`. Memory stays flat whatever the dataset size: scans and plain
transformations are pipelined, and what DuckDB must hold (window-function partitions, a SQL
query's joins and sorts, a one-shot source a query reads twice) spills to a temporary
directory past `memory_limit`. Each chunk goes to the offline store (every event) and to the
online store, whose bulk load keeps the newest row per key.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from services.materialization.adapters import transform
from services.materialization.adapters.source_databases import SourceDatabases
from services.materialization.adapters.sources import (
    ReadOptions,
    SourceRows,
    file_dataset,
    open_source,
)
from services.materialization.jobs import (
    EmbeddingField,
    FileSourceSpec,
    MaterializationTask,
    OfflineStore,
    Progress,
    SourceSpec,
    Store,
    Window,
)
from shared.embeddings import TextEmbedder
from shared.errors import FailedPrecondition, summary
from shared.feature_views import ViewSchema
from shared.online_store import OnlineStore
from shared.paths import FileRoots

CHUNK_ROWS = 100_000
# Views with embedded fields go in smaller chunks: each chunk waits for the model, and
# progress, cancellation and the job's heartbeat happen between chunks.
EMBEDDING_CHUNK_ROWS = 4_096


class LocalEngine:
    """`source_databases` says how POSTGRES sources connect (never as the platform's role),
    `file_roots` where a project's FILE sources may read;
    `memory_limit` (DuckDB syntax, e.g. "4GB") and `threads` default to DuckDB's own;
    `embedder` computes produced (LLM_EMBEDDING) fields."""

    def __init__(
        self,
        chunk_rows: int = CHUNK_ROWS,
        *,
        source_databases: SourceDatabases | None = None,
        file_roots: FileRoots | None = None,
        memory_limit: str = "",
        threads: int = 0,
        embedder: TextEmbedder | None = None,
    ) -> None:
        self._chunk_rows = chunk_rows
        self._embedder = embedder
        self._source_databases = source_databases
        self._file_roots = file_roots
        self._duckdb_config: dict[str, str | int | bool] = {
            # User SQL runs in this process: it may read the registered sources, no file.
            "enable_external_access": False,
            **({"memory_limit": memory_limit} if memory_limit else {}),
            **({"threads": threads} if threads else {}),
        }

    def run(
        self,
        task: MaterializationTask,
        *,
        offline_store: OfflineStore,
        online_store: OnlineStore,
        on_chunk: Callable[[Progress], bool],
    ) -> Progress:
        progress = Progress()
        latest = LatestPerKey(task.view.join_key) if Store.ONLINE in task.stores else None
        # `closing`: stopping early must end the source scan (and its database cursor) now.
        # Parquet encoding and PostgreSQL's COPY run outside the interpreter lock, so store
        # writes overlap the scan of the next chunk.
        with (
            closing(self.chunks(task)) as chunks,
            ThreadPoolExecutor(2, thread_name_prefix="store-writer") as writers,
        ):
            for rows in chunks:
                chunk = self._embed(task, rows, progress)
                _check_vectors(task, chunk)
                progress.rows_read += chunk.num_rows
                pending = []
                if Store.OFFLINE in task.stores:
                    pending.append(
                        writers.submit(
                            _write_offline, offline_store, task, chunk, progress.chunks_done
                        )
                    )
                full = latest.add(chunk) if latest is not None else None
                if full is not None:
                    pending.append(writers.submit(_load_online, online_store, task.view, full))
                for future in pending:
                    written_offline, written_online = future.result()
                    progress.rows_written_offline += written_offline
                    progress.rows_written_online += written_online
                progress.chunks_done += 1
                if not on_chunk(progress):
                    return progress
        if latest is not None and (rows := latest.take()) is not None:
            progress.rows_written_online += _load_online(online_store, task.view, rows)[1]
        return progress

    def chunks(self, task: MaterializationTask) -> Iterator[pa.Table]:
        """The view's rows of the task's window (key, features, `event_ts`), chunk by chunk."""
        # Fields the engine computes are not the transformation's to produce.
        source_view = transform.without(task.view, task.computed_fields)
        plan = transform.plan(source_view, task.transformation, task.source.event_timestamp_column)
        span = Window(task.window.start - plan.lookback, task.window.end)
        chunk_rows = (
            min(self._chunk_rows, EMBEDDING_CHUNK_ROWS) if task.embeddings else self._chunk_rows
        )
        options = ReadOptions(
            span,
            plan.columns,
            chunk_rows,
            task.view.project,
            self._source_databases,
            self._file_roots,
        )
        with _engine_errors(task.source, options), open_source(task.source, options) as rows:
            if rows is None:
                return
            with self._session() as connection:
                query = _prepare(connection, task, source_view, plan, rows, span)
                reader = connection.sql(query).to_arrow_reader(chunk_rows)
                schema = transform.output_schema(task.view)
                for batch in reader:
                    if batch.num_rows:
                        yield _conform(batch, schema)

    def _embed(self, task: MaterializationTask, chunk: pa.Table, progress: Progress) -> pa.Table:
        """The chunk with each produced field computed from its input field."""
        for produced in task.embeddings:
            if self._embedder is None:
                raise FailedPrecondition(
                    f"field {produced.name!r} is produced by an embedding model and this engine "
                    "has no embedder configured"
                )
            vectors = _embed_column(self._embedder, produced, chunk, progress)
            chunk = chunk.set_column(
                chunk.schema.get_field_index(produced.name), produced.name, vectors
            )
        return chunk

    @contextmanager
    def _session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with tempfile.TemporaryDirectory(prefix="recstack-engine-") as spill:
            connection = duckdb.connect(config={**self._duckdb_config, "temp_directory": spill})
            try:
                # Naive source times are UTC, and TIMESTAMPTZ results come back in UTC.
                connection.execute("SET TimeZone = 'UTC'")
                yield connection
            finally:
                connection.close()


def _prepare(
    connection: duckdb.DuckDBPyConnection,
    task: MaterializationTask,
    source_view: ViewSchema,
    plan: transform.Plan,
    rows: SourceRows,
    span: Window,
) -> str:
    """Registers `raw`, `source` and `excluded`; returns the output query.

    `source_view` is the view as its transformation yields it (no computed fields).
    """
    ts = task.source.event_timestamp_column
    _require(rows.schema.names, plan.columns or [ts], f"source {_describe(task.source)}")
    connection.register("raw", rows.data)
    # A one-shot stream (PostgreSQL) is staged once when the query may read it twice.
    kind = "TABLE" if plan.rescans and not rows.rescannable else "VIEW"
    connection.execute(
        f"CREATE TEMP {kind} source AS {transform.source_sql(rows.schema, ts, span)}"
    )
    select = plan.select(rows.schema)
    produced = connection.sql(select).columns
    _require(produced, transform.output_columns(source_view, ts), "the transformation's output")
    return transform.output_sql(
        task.view,
        select,
        ts,
        task.window,
        exclude=_register_excluded(connection, task.exclude_keys_from),
        computed=task.computed_fields,
    )


def _register_excluded(
    connection: duckdb.DuckDBPyConnection, source: FileSourceSpec | None
) -> bool:
    dataset = None if source is None else file_dataset(source, missing_ok=True)
    if dataset is None:
        # No previous partition: every key of this one is new.
        return False
    connection.register("excluded", dataset)
    return True


def _require(present: list[str], needed: list[str] | tuple[str, ...], what: str) -> None:
    missing = [name for name in needed if name not in present]
    if missing:
        raise FailedPrecondition(f"{what} lacks columns {missing}")


def _describe(source: SourceSpec) -> str:
    if isinstance(source, FileSourceSpec):
        return repr(source.path)
    return f"table {source.table!r}" if source.table else "query"


@contextmanager
def _engine_errors(source: SourceSpec, options: ReadOptions) -> Iterator[None]:
    """Bad SQL, unparseable times or unreadable files as job failures that say so; a source's
    own failure during the scan as itself."""
    try:
        yield
    except (duckdb.Error, pa.ArrowException, OSError) as exc:
        if options.failures:
            raise options.failures[0] from None
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException):
            raise
        raise FailedPrecondition(
            f"materializing from {_describe(source)} failed: {summary(exc)}"
        ) from exc


class LatestPerKey:
    """Each key's newest row seen so far, so the online store gets one row per key.

    Only the newest event of a key is ever served online; sending every event would make the
    store upsert (and discard) the rest. The state is bounded by `flush_rows`: past it the
    rows go to the store (whose upsert keeps the newest event) and the state starts over.
    """

    def __init__(self, key: str, flush_rows: int = 2_000_000) -> None:
        self._key = key
        self._flush_rows = flush_rows
        self._rows: pa.Table | None = None

    def add(self, chunk: pa.Table) -> pa.Table | None:
        """Fold a chunk in; returns rows to write now when the state grew past its bound."""
        combined = chunk if self._rows is None else pa.concat_tables([self._rows, chunk])
        self._rows = _newest_per_key(combined, self._key)
        if self._rows.num_rows < self._flush_rows:
            return None
        return self.take()

    def take(self) -> pa.Table | None:
        rows, self._rows = self._rows, None
        return rows


def _newest_per_key(table: pa.Table, key: str) -> pa.Table:
    # A stable sort by (key, event time): for equal times the row seen later stays last.
    ordered = table.take(pc.sort_indices(table, [(key, "ascending"), ("event_ts", "ascending")]))
    keys = ordered.column(key).combine_chunks()
    if len(keys) < 2:
        return ordered
    last = pc.not_equal(keys.slice(0, len(keys) - 1), keys.slice(1))
    return ordered.filter(pa.concat_arrays([last, pa.array([True])]))


def _write_offline(
    store: OfflineStore, task: MaterializationTask, rows: pa.Table, chunk: int
) -> tuple[int, int]:
    return store.write(task.view, rows, task.job_id, chunk), 0


def _load_online(store: OnlineStore, view: ViewSchema, rows: pa.Table) -> tuple[int, int]:
    return 0, store.bulk_load(view, rows).written


def _check_vectors(task: MaterializationTask, chunk: pa.Table) -> None:
    """Pre-computed embeddings must have the model's dimension; a wrong one fails the job."""
    for name, dimension in task.vector_dimensions.items():
        lengths = pc.list_value_length(chunk.column(name))
        wrong = pc.and_kleene(pc.is_valid(lengths), pc.not_equal(lengths, dimension))
        if pc.any(wrong).as_py():
            index = pc.index(wrong, True).as_py()
            key = chunk.column(task.view.join_key)[index].as_py()
            raise FailedPrecondition(
                f"field {name!r} of key {key!r} has {lengths[index].as_py()} dimensions; "
                f"its embedding model declares {dimension}",
                reason="WRONG_VECTOR_DIMENSION",
            )


def _embed_column(
    embedder: TextEmbedder, produced: EmbeddingField, chunk: pa.Table, progress: Progress
) -> pa.Array:
    texts = chunk.column(produced.input_field).to_pylist()
    embeddings = embedder.embed(produced.model, texts)
    progress.count_embeddings(embeddings.stats)
    vectors = np.ascontiguousarray(embeddings.vectors, dtype=np.float32)
    rows, dimension = vectors.shape
    offsets = pa.array(np.arange(0, rows * dimension + 1, dimension, dtype=np.int32))
    # A null text has no vector: the row's field is null, as any missing feature.
    return pa.ListArray.from_arrays(
        offsets,
        pa.array(vectors.reshape(-1)),
        type=pa.list_(pa.float32()),
        mask=pa.array(~np.asarray(embeddings.valid, dtype=bool)),
    )


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """The batch in the view's declared types, so every chunk and store agrees on them."""
    columns = []
    for field, column in zip(schema, batch.columns, strict=True):
        if column.type != field.type:
            try:
                # Nanosecond times lose their last digits, as PostgreSQL would on insert.
                column = column.cast(field.type, safe=not pa.types.is_timestamp(field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise FailedPrecondition(
                    f"column {field.name!r}: cannot store {column.type} as {field.type}: {exc}"
                ) from exc
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)
