"""The default compute engine: pyarrow reads the source in bounded chunks on this machine.

Chunks keep memory flat whatever the dataset size; each chunk goes to the offline store
(every event) and to the online store (its upsert keeps the newest row per key).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from services.materialization.jobs import (
    FileSourceSpec,
    MaterializationTask,
    OfflineStore,
    Progress,
    Store,
)
from shared.errors import FailedPrecondition
from shared.online_store import OnlineStore

CHUNK_ROWS = 100_000
EVENT_TS = "event_ts"


class LocalEngine:
    def __init__(self, chunk_rows: int = CHUNK_ROWS) -> None:
        self._chunk_rows = chunk_rows

    def run(
        self,
        task: MaterializationTask,
        *,
        offline_store: OfflineStore,
        online_store: OnlineStore,
        on_chunk: Callable[[Progress], bool],
    ) -> Progress:
        progress = Progress()
        excluded = self._keys(task.exclude_keys_from, task.view.join_key)
        for chunk in self._chunks(task):
            if excluded is not None:
                chunk = chunk.filter(
                    pc.invert(pc.is_in(chunk.column(task.view.join_key), excluded))
                )
            progress.rows_read += chunk.num_rows
            if Store.OFFLINE in task.stores:
                progress.rows_written_offline += offline_store.write(
                    task.view, chunk, task.job_id, progress.chunks_done
                )
            if Store.ONLINE in task.stores:
                result = online_store.write(task.view, _online_rows(task, chunk))
                progress.rows_written_online += result.written
            progress.chunks_done += 1
            if not on_chunk(progress):
                break
        return progress

    def _keys(self, source: FileSourceSpec | None, key: str) -> pa.Array | None:
        if source is None:
            return None
        try:
            return pc.unique(_dataset(source).to_table(columns=[key]).column(key)).combine_chunks()
        except FileNotFoundError:
            # No previous partition: every key of this one is new.
            return None

    def _chunks(self, task: MaterializationTask) -> Iterator[pa.Table]:
        source = task.source
        dataset = _dataset(source)
        ts_column = source.event_timestamp_column
        if ts_column not in dataset.schema.names:
            raise FailedPrecondition(
                f"source {source.path} has no event timestamp column {ts_column!r}"
            )
        ts_type = dataset.schema.field(ts_column).type
        window_filter = (ds.field(ts_column) >= _scalar(task.window.start, ts_type)) & (
            ds.field(ts_column) < _scalar(task.window.end, ts_type)
        )
        columns = [task.view.join_key, *(f.name for f in task.view.features), ts_column]
        missing = [name for name in columns if name not in dataset.schema.names]
        if missing:
            raise FailedPrecondition(f"source {source.path} lacks columns {missing}")
        scanner = dataset.scanner(
            columns=columns, filter=window_filter, batch_size=self._chunk_rows
        )
        for batch in scanner.to_batches():
            if batch.num_rows:
                table = pa.Table.from_batches([batch])
                yield table.rename_columns([*columns[:-1], EVENT_TS]).set_column(
                    len(columns) - 1, EVENT_TS, _as_utc(table.column(ts_column))
                )


def _dataset(source: FileSourceSpec) -> ds.Dataset:
    return ds.dataset(
        source.path,
        format="parquet" if source.file_format == "PARQUET" else "csv",
        partitioning="hive" if source.partition_column else None,
    )


def _scalar(moment: datetime, ts_type: pa.DataType) -> pa.Scalar:
    if pa.types.is_timestamp(ts_type) and ts_type.tz is None:
        return pa.scalar(moment.astimezone(UTC).replace(tzinfo=None), type=ts_type)
    return pa.scalar(moment, type=ts_type)


def _as_utc(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if column.type.tz is None:
        return pc.assume_timezone(column, "UTC")
    return column.cast(pa.timestamp(column.type.unit, tz="UTC"))


def _online_rows(task: MaterializationTask, chunk: pa.Table) -> list[tuple[Any, ...]]:
    names = [task.view.join_key, *(f.name for f in task.view.features), EVENT_TS]
    columns = [chunk.column(name).to_pylist() for name in names]
    return list(zip(*columns, strict=True))
