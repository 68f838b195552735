"""Item features in memory, columnar, so ranking reads hundreds of items with no database trip.

One `ItemTable` per item feature view (latest version): item ids, a position index, and one
numpy array per feature (float64 with NaN for missing numeric values, object otherwise), as
the EasyRec processor's item feature cache keeps them (seeds/001). Tables are immutable; a
refresh builds a new one and swaps it in, so readers never see a half-loaded view.

Refresh, per cached view:
- incremental, every `incremental_seconds`: the rows written (the online store's
  `written_ts`) since the previous scan began, less an overlap for writes that commit later
  than they are stamped, merged into a new table, so a feature written through serving is
  served within seconds at the cost of the rows that changed;
- full, every `full_seconds`: the whole view again, which also drops deleted rows, expires
  rows past the view's TTL, and catches a write whose transaction committed later than the
  overlap allows (a long bulk load).
An item a request needs that the table lacks (a cold item: new, or named by a recall that
does not read the cache) is read from the online store once and merged in; ids the store does
not have either are remembered until the next refresh, so they cost no read per request.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import structlog
from prometheus_client import Counter, Gauge

from shared.errors import FailedPrecondition
from shared.feature_views import ViewSchema
from shared.online_store import OnlineStore, Scan, ViewColumns
from shared.values import VT

log = structlog.get_logger(__name__)

NUMERIC_TYPES = frozenset(
    {VT.VALUE_TYPE_INT64, VT.VALUE_TYPE_FLOAT, VT.VALUE_TYPE_DOUBLE, VT.VALUE_TYPE_BOOL}
)
ViewKey = tuple[str, str]
T = TypeVar("T")


class ViewDefinitions(Protocol):
    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema: ...


@runtime_checkable
class Carried(Protocol):
    """A structure derived per row of a table that an incremental refresh need not rebuild:
    the merged table gets a copy with the replaced rows marked stale and room for new ones."""

    def carried(self, replaced_rows: np.ndarray, size: int) -> Carried: ...


@dataclass(frozen=True)
class ItemTable:
    """One item view's features for every item, in columns."""

    view: ViewSchema
    item_ids: np.ndarray
    columns: dict[str, np.ndarray]
    loaded_at: float
    _index: dict[str, int] = field(repr=False)
    # Rankings by feature, computed on first use; a table never changes, so they stay valid.
    _rankings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # Structures other modules derive from the table (see `derived`).
    _derived: dict[Hashable, Any] = field(default_factory=dict, repr=False)
    # Item ids whose rows differ from the table this one replaced (an incremental refresh), so
    # derived structures (a vector index) can update only those; None: a full load.
    changed: frozenset[str] | None = None

    @classmethod
    def from_scan(
        cls,
        view: ViewSchema,
        keys: Sequence[Any],
        scanned: ViewColumns,
        now: datetime,
    ) -> ItemTable:
        item_ids = np.asarray([str(key) for key in keys], dtype=str)
        expired = _expired(view, scanned.event_times, now)
        columns = {
            feature.name: _column(scanned.values[feature.name], feature.value_type, expired)
            for feature in view.features
        }
        index = {item_id: row for row, item_id in enumerate(item_ids.tolist())}
        return cls(view, item_ids, columns, time.monotonic(), index)

    def merged(self, keys: Sequence[Any], scanned: ViewColumns, now: datetime) -> ItemTable:
        """A new table with these rows replacing or joining the current ones."""
        update = ItemTable.from_scan(self.view, keys, scanned, now)
        rows = self.rows(update.item_ids.tolist())
        new = rows < 0
        item_ids = np.concatenate([self.item_ids, update.item_ids[new]])
        columns = {}
        for name, column in self.columns.items():
            values = np.concatenate([column, update.columns[name][new]])
            values[rows[~new]] = update.columns[name][~new]
            columns[name] = values
        index = dict(self._index)
        index.update(
            (item_id, len(self.item_ids) + offset)
            for offset, item_id in enumerate(update.item_ids[new].tolist())
        )
        carried = {
            key: value.carried(rows[~new], len(item_ids))
            for key, value in self._derived.items()
            if isinstance(value, Carried)
        }
        return ItemTable(
            self.view,
            item_ids,
            columns,
            time.monotonic(),
            index,
            _derived=carried,
            changed=frozenset(update.item_ids.tolist()),
        )

    def derived(self, key: Hashable, build: Callable[[ItemTable], T]) -> T:
        """The structure `build` derives from this table, built on first use and kept with
        it; a `Carried` one passes to the table an incremental refresh merges from this."""
        found = self._derived.get(key)
        if found is None:
            found = self._derived.setdefault(key, build(self))
        return found

    @property
    def nbytes(self) -> int:
        """Approximate memory: numeric columns exactly, object columns from a sample."""
        total = self.item_ids.nbytes + 100 * len(self._index)
        for column in self.columns.values():
            total += column.nbytes
            if column.dtype == object and len(column):
                sample = column[:: max(1, len(column) // 100)]
                total += int(np.mean([sys.getsizeof(v) for v in sample]) * len(column))
        return total

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each item id, -1 where the view has no row for it."""
        return np.fromiter(
            map(self._index.get, item_ids, itertools.repeat(-1)), np.int64, len(item_ids)
        )

    def column(self, feature: str, rows: np.ndarray) -> np.ndarray:
        """A feature's values at `rows`; NaN (numeric) or None (other types) where row is -1."""
        values = self._require(feature)
        missing = rows < 0
        taken = values[np.where(missing, 0, rows)] if len(values) else _empty(values, len(rows))
        if missing.any():
            # Fancy indexing returned a copy: the table itself is untouched.
            taken[missing] = np.nan if values.dtype == np.float64 else None
        return taken

    def top(self, feature: str, k: int) -> list[str]:
        """Up to `k` item ids by `feature` descending, ties by id; items without a value last
        and never returned."""
        ranking = self._rankings.get(feature)
        if ranking is None:
            ranking = self._ranking(feature)
            self._rankings[feature] = ranking
        return self.item_ids[ranking[:k]].tolist()

    def _ranking(self, feature: str) -> np.ndarray:
        values = self._require(feature)
        if values.dtype != np.float64:
            raise FailedPrecondition(
                f"feature {self.view.name}:{feature} is not numeric, so it cannot rank items",
                reason="FEATURE_NOT_NUMERIC",
            )
        present = np.flatnonzero(~np.isnan(values))
        order = np.lexsort((self.item_ids[present], -values[present]))
        return present[order]

    def _require(self, feature: str) -> np.ndarray:
        values = self.columns.get(feature)
        if values is None:
            raise FailedPrecondition(
                f"feature view {self.view.name!r} v{self.view.version} has no feature "
                f"{feature!r}; it has {sorted(self.columns)}",
                reason="FEATURE_NOT_FOUND",
            )
        return values


# Each worker process caches on its own: with several, one series per live worker (pid label).
ITEMS = Gauge(
    "recstack_recommend_item_cache_items",
    "Items cached per view.",
    ["project", "view"],
    multiprocess_mode="liveall",
)
BYTES = Gauge(
    "recstack_recommend_item_cache_bytes",
    "Approximate memory per cached view.",
    ["project", "view"],
    multiprocess_mode="liveall",
)
STALENESS = Gauge(
    "recstack_recommend_item_cache_staleness_seconds",
    "Seconds since a cached view was last refreshed successfully.",
    ["project", "view"],
    multiprocess_mode="liveall",
)
REFRESHES = Counter(
    "recstack_recommend_item_cache_refreshes_total",
    "Refreshes of cached item views.",
    ["kind", "outcome"],
)
COLD_READS = Counter(
    "recstack_recommend_item_cache_cold_reads_total",
    "Items read from the online store because the cache did not have them.",
    ["found"],
)


class ItemCache:
    """`ItemTable`s by (project, view), loaded on first use and refreshed in the background."""

    def __init__(
        self,
        store: OnlineStore,
        definitions: ViewDefinitions,
        *,
        incremental_seconds: float = 2.0,
        full_seconds: float = 300.0,
        overlap_seconds: float = 10.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self._definitions = definitions
        self._incremental_seconds = incremental_seconds
        self._full_seconds = full_seconds
        # Writes are stamped when their statement runs, not when they commit: re-reading this
        # much before the newest write seen catches a transaction that committed late.
        self._overlap = timedelta(seconds=overlap_seconds)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._tables: dict[ViewKey, ItemTable] = {}
        self._refreshed: dict[ViewKey, float] = {}
        # The store's clock at each view's last scan: the next incremental scan starts there.
        self._as_of: dict[ViewKey, datetime] = {}
        # Ids the online store did not have either, until the view's next refresh.
        self._absent: dict[ViewKey, set[str]] = {}
        # One lock per view: concurrent first requests load a view once, other views in parallel.
        self._loading: dict[ViewKey, threading.Lock] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def table(self, project: str, view_id: str) -> ItemTable:
        key = (project, view_id)
        table = self._tables.get(key)
        if table is not None:
            return table
        with self._load_lock(key):
            table = self._tables.get(key)
            return table if table is not None else self._load(key)

    def lookup(
        self, project: str, view_id: str, item_ids: Sequence[str]
    ) -> tuple[ItemTable, np.ndarray]:
        """The table and the row of each item (-1 where the view has none), after reading
        the items the table lacks from the online store."""
        key = (project, view_id)
        table = self.table(project, view_id)
        rows = table.rows(item_ids)
        if (rows >= 0).all():
            return table, rows
        absent = self._absent.get(key, set())
        cold = [
            i for i, row in zip(item_ids, rows.tolist(), strict=True) if row < 0 and i not in absent
        ]
        if not cold:
            return table, rows
        table = self._read_cold(key, table, list(dict.fromkeys(cold)))
        return table, table.rows(item_ids)

    def values(
        self, project: str, view_id: str, feature: str, item_ids: Sequence[str]
    ) -> np.ndarray:
        """One feature's values for these items (NaN or None where an item has none)."""
        table, rows = self.lookup(project, view_id, item_ids)
        return table.column(feature, rows)

    def refresh(self, *, full: bool = False) -> None:
        """Refresh every cached view (incrementally unless `full` or its full refresh is due);
        a view that fails keeps serving its previous table."""
        now = time.monotonic()
        for key in list(self._tables):
            kind = (
                "full"
                if full or now - self._refreshed.get(key, 0) >= self._full_seconds
                else "incremental"
            )
            try:
                if kind == "full":
                    self._load(key)
                else:
                    self._refresh_incremental(key)
                REFRESHES.labels(kind, "ok").inc()
            except Exception:  # the old table stays; the next round retries
                REFRESHES.labels(kind, "failed").inc()
                log.warning("item_cache_refresh_failed", project=key[0], view=key[1], exc_info=True)
            self._report(key)

    def start(self, warm: Callable[[], Iterable[ViewKey]] | None = None) -> None:
        """Start the refresh thread; it first loads the views `warm` names (errors logged)."""
        self._thread = threading.Thread(
            target=self._run, args=(warm,), name="item-cache", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, warm: Callable[[], Iterable[ViewKey]] | None) -> None:
        if warm is not None:
            self._warm(warm)
        while not self._stop.wait(self._incremental_seconds):
            self.refresh()

    def _warm(self, warm: Callable[[], Iterable[ViewKey]]) -> None:
        try:
            keys = list(warm())
        except Exception:  # warming is an optimisation: requests load views on demand
            log.warning("item_cache_warm_failed", exc_info=True)
            return
        for project, view_id in keys:
            try:
                self.table(project, view_id)
            except Exception:  # as above: the first request for the view retries
                log.warning("item_cache_warm_failed", project=project, view=view_id, exc_info=True)

    def _load(self, key: ViewKey) -> ItemTable:
        project, view_id = key
        view = self._definitions.view_schema(project, view_id)
        scan = self._scan(view, None)
        table = ItemTable.from_scan(view, scan.keys, scan.columns, self._clock())
        self._swap(key, table, scan.as_of, full=True)
        log.info("item_cache_loaded", project=project, view=view_id, items=len(table))
        return table

    def _refresh_incremental(self, key: ViewKey) -> None:
        project, view_id = key
        current = self._tables[key]
        view = self._definitions.view_schema(project, view_id)
        if view.version != current.view.version:
            self._load(key)  # a new schema: start over
            return
        scan = self._scan(view, self._as_of[key] - self._overlap)
        if scan.keys:
            current = current.merged(scan.keys, scan.columns, self._clock())
        self._swap(key, current, scan.as_of)
        self._absent.pop(key, None)

    def _read_cold(self, key: ViewKey, table: ItemTable, item_ids: list[str]) -> ItemTable:
        view = table.view
        keys = _typed_keys(view, item_ids)
        features = [feature.name for feature in view.features]
        found = _no_columns()
        if keys and features:
            [found] = self._store.read([(view, features)], keys)
        present = [i for i, event_time in enumerate(found.event_times) if event_time is not None]
        absent = set(item_ids) - {str(keys[i]) for i in present}
        COLD_READS.labels("yes").inc(len(present))
        COLD_READS.labels("no").inc(len(absent))
        rows = ViewColumns(
            {name: [values[i] for i in present] for name, values in found.values.items()},
            [found.event_times[i] for i in present],
        )
        with self._lock:
            self._absent.setdefault(key, set()).update(absent)
            if not present:
                return self._tables.get(key, table)
            # Into the latest table: a refresh may have swapped one in meanwhile.
            merged = self._tables.get(key, table).merged(
                [keys[i] for i in present], rows, self._clock()
            )
            self._tables[key] = merged
        return merged

    def _scan(self, view: ViewSchema, since: datetime | None) -> Scan:
        features = [feature.name for feature in view.features]
        if not features:
            return Scan([], _no_columns(), self._clock())
        return self._store.scan_since(view, features, since)

    def _swap(self, key: ViewKey, table: ItemTable, as_of: datetime, *, full: bool = False) -> None:
        with self._lock:
            self._tables[key] = table
            self._as_of[key] = as_of
            if full:
                self._absent.pop(key, None)
        self._refreshed[key] = time.monotonic()
        self._report(key)

    def _report(self, key: ViewKey) -> None:
        table = self._tables.get(key)
        if table is None:
            return
        ITEMS.labels(*key).set(len(table))
        BYTES.labels(*key).set(table.nbytes)
        STALENESS.labels(*key).set(time.monotonic() - self._refreshed.get(key, table.loaded_at))

    def _load_lock(self, key: ViewKey) -> threading.Lock:
        with self._lock:
            return self._loading.setdefault(key, threading.Lock())


def _typed_keys(view: ViewSchema, item_ids: Sequence[str]) -> list[Any]:
    """Item ids as keys of the view's key type; an id that cannot be one is not in it."""
    if view.key_type != VT.VALUE_TYPE_INT64:
        return list(item_ids)
    return [int(i) for i in item_ids if i.lstrip("-").isdigit()]


def _no_columns() -> ViewColumns:
    return ViewColumns({}, [])


def _expired(view: ViewSchema, event_times: Sequence[datetime | None], now: datetime) -> np.ndarray:
    """Rows older than the view's TTL at load time, served as missing like serving does."""
    if not view.ttl_seconds:
        return np.zeros(len(event_times), dtype=bool)
    return np.fromiter(
        (t is None or (now - t).total_seconds() > view.ttl_seconds for t in event_times),
        dtype=bool,
        count=len(event_times),
    )


def _column(values: list[Any], value_type: int, expired: np.ndarray) -> np.ndarray:
    if value_type in NUMERIC_TYPES:
        # numpy reads None as NaN and bools as 0/1 when asked for float64.
        column = np.array(values, dtype=np.float64)
        column[expired] = np.nan
        return column
    column = np.empty(len(values), dtype=object)
    column[:] = values
    column[expired] = None
    return column


def _empty(values: np.ndarray, count: int) -> np.ndarray:
    if values.dtype == np.float64:
        return np.full(count, np.nan)
    return np.full(count, None, dtype=object)
