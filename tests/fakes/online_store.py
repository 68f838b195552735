"""`OnlineStore` in dictionaries: one table per view version, the newest row per key."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from shared.errors import NotFound
from shared.feature_views import ViewSchema
from shared.online_store.base import Row, Scan, ViewColumns, WriteResult
from shared.online_store.bulk import LoadData, prepare


class _Stored:
    """One key's row: its features by name, its event time and when it was written."""

    __slots__ = ("event_ts", "values", "written")

    def __init__(self, values: dict[str, Any], event_ts: datetime, written: datetime) -> None:
        self.values, self.event_ts, self.written = values, event_ts, written


class InMemoryOnlineStore:
    """`within` (a transaction of the store's database) has no meaning here: DDL is immediate."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._tables: dict[str, dict[Any, _Stored]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Nothing to release; here for the same lifecycle as the real store."""

    def ensure_table(self, view: ViewSchema, within: Any = None) -> None:
        with self._lock:
            self._tables.setdefault(view.table_name, {})

    def drop_table(self, view: ViewSchema, within: Any = None) -> None:
        with self._lock:
            self._tables.pop(view.table_name, None)

    def retain_keys(self, view: ViewSchema, keys: Sequence[Any]) -> int:
        kept = set(keys)
        with self._lock:
            table = self._table(view)
            gone = [key for key in table if key not in kept]
            for key in gone:
                del table[key]
        return len(gone)

    def write(self, view: ViewSchema, rows: Sequence[Row]) -> WriteResult:
        newest: dict[Any, Row] = {}
        for row in rows:
            # The batch's newest row per key, as the real upsert's DISTINCT ON keeps.
            if row[0] not in newest or newest[row[0]][-1] < row[-1]:
                newest[row[0]] = row
        written = self._upsert(view, list(newest.values()))
        return WriteResult(written, len(rows) - written)

    def bulk_load(self, view: ViewSchema, data: LoadData) -> WriteResult:
        # The real store's preparation: the same typing, validation and newest row per key.
        load = prepare(view, data)
        columns = load.columns
        if load.order is not None:
            columns = [column.take(pa.array(load.order)) for column in columns]
        rows = list(zip(*(column.to_pylist() for column in columns), strict=True))
        written = self._upsert(view, rows)
        return WriteResult(written, load.input_rows - written)

    def read(
        self, requests: Sequence[tuple[ViewSchema, Sequence[str]]], keys: Sequence[Any]
    ) -> list[ViewColumns]:
        with self._lock:
            tables = [self._tables.get(view.table_name) for view, _ in requests]
        if any(table is None for table in tables):
            raise NotFound(
                "the online table of a requested feature view version is gone (version "
                "deleted?); retry with a current version"
            )
        answers = []
        for (_, features), table in zip(requests, tables, strict=True):
            assert table is not None
            found = [table.get(key) for key in keys]
            values = {f: [row.values[f] if row else None for row in found] for f in features}
            answers.append(ViewColumns(values, [row.event_ts if row else None for row in found]))
        return answers

    def scan(self, view: ViewSchema, features: Sequence[str]) -> tuple[list[Any], ViewColumns]:
        found = self.scan_since(view, features, None)
        return found.keys, found.columns

    def scan_since(self, view: ViewSchema, features: Sequence[str], since: datetime | None) -> Scan:
        with self._lock:
            as_of = self._clock()
            table = self._tables.setdefault(view.table_name, {})
            chosen = sorted(
                ((key, row) for key, row in table.items() if since is None or row.written > since),
                key=lambda item: item[0],
            )
        values = {f: [row.values[f] for _, row in chosen] for f in features}
        columns = ViewColumns(values, [row.event_ts for _, row in chosen])
        return Scan([key for key, _ in chosen], columns, as_of)

    def rows(self, view: ViewSchema) -> dict[Any, dict[str, Any]]:
        """Test inspection: each key's stored row as a dict (key, features, `event_ts`)."""
        with self._lock:
            table = dict(self._tables.get(view.table_name, {}))
        return {
            key: {view.join_key: key, **row.values, "event_ts": row.event_ts}
            for key, row in table.items()
        }

    def _upsert(self, view: ViewSchema, rows: Sequence[Row]) -> int:
        """Store each row unless its key holds a newer event; returns the rows stored."""
        names = [feature.name for feature in view.features]
        written = 0
        with self._lock:
            table = self._table(view)
            now = self._clock()
            for key, *values, event_ts in rows:
                current = table.get(key)
                if current is None or current.event_ts <= event_ts:
                    table[key] = _Stored(dict(zip(names, values, strict=True)), event_ts, now)
                    written += 1
        return written

    def _table(self, view: ViewSchema) -> dict[Any, _Stored]:
        # Writers create the table on first use, as the real store's do.
        return self._tables.setdefault(view.table_name, {})
