"""Item features in memory, columnar, so ranking reads hundreds of items with no database trip.

One `ItemTable` per item feature view (latest version): item ids, a position index, and one
numpy array per feature (float64 with NaN for missing numeric values, object otherwise), as
the EasyRec processor's item feature cache keeps them (seeds/001). Tables are immutable; a
refresh builds a new one and swaps it in, so readers never see a half-loaded view.

Refresh is a full reload of every cached view every `refresh_seconds`: simple and correct,
and cheap at the walking skeleton's item counts. Incremental refresh (rows with `written_ts`
after the last load) replaces it once catalogues outgrow a full scan.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import structlog

from shared.errors import FailedPrecondition
from shared.feature_views import ViewSchema
from shared.online_store import OnlineStore, ViewColumns
from shared.values import VT

log = structlog.get_logger(__name__)

NUMERIC_TYPES = frozenset(
    {VT.VALUE_TYPE_INT64, VT.VALUE_TYPE_FLOAT, VT.VALUE_TYPE_DOUBLE, VT.VALUE_TYPE_BOOL}
)
ViewKey = tuple[str, str]


class ViewDefinitions(Protocol):
    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema: ...


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
    # Item ids whose rows differ from the table this one replaced (an incremental refresh), so
    # derived structures (a vector index) can update only those; None: a full load.
    changed: frozenset[str] | None = None

    @classmethod
    def from_scan(
        cls, view: ViewSchema, keys: Sequence[Any], scanned: ViewColumns, now: datetime
    ) -> ItemTable:
        item_ids = np.asarray([str(key) for key in keys], dtype=str)
        expired = _expired(view, scanned.event_times, now)
        columns = {
            feature.name: _column(scanned.values[feature.name], feature.value_type, expired)
            for feature in view.features
        }
        index = {item_id: row for row, item_id in enumerate(item_ids.tolist())}
        return cls(view, item_ids, columns, time.monotonic(), index)

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each item id, -1 where the view has no row for it."""
        return np.fromiter((self._index.get(i, -1) for i in item_ids), np.int64, len(item_ids))

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


class ItemCache:
    """`ItemTable`s by (project, view), loaded on first use and reloaded in the background."""

    def __init__(
        self,
        store: OnlineStore,
        definitions: ViewDefinitions,
        *,
        refresh_seconds: float = 30.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self._definitions = definitions
        self._refresh_seconds = refresh_seconds
        self._clock = clock or (lambda: datetime.now(UTC))
        self._tables: dict[ViewKey, ItemTable] = {}
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

    def refresh(self) -> None:
        """Reload every cached view; a view that fails keeps serving its previous table."""
        for key in list(self._tables):
            try:
                self._load(key)
            except Exception:  # the old table stays; the next round retries
                log.warning("item_cache_refresh_failed", project=key[0], view=key[1], exc_info=True)

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
        while not self._stop.wait(self._refresh_seconds):
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
        features = [feature.name for feature in view.features]
        keys, scanned = self._store.scan(view, features) if features else ([], _no_columns())
        table = ItemTable.from_scan(view, keys, scanned, self._clock())
        with self._lock:
            self._tables[key] = table
        log.info("item_cache_loaded", project=project, view=view_id, items=len(table))
        return table

    def _load_lock(self, key: ViewKey) -> threading.Lock:
        with self._lock:
            return self._loading.setdefault(key, threading.Lock())


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
