"""The small interface every online store implements (PostgreSQL ships; others plug in)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa

from shared.feature_views import ViewSchema

# A row to write: the key, then each feature of the view in declared order, then event time.
Row = tuple[Any, ...]


@dataclass(frozen=True)
class WriteResult:
    written: int
    stale: int


@dataclass(frozen=True)
class ViewColumns:
    """One view's values for a batch of keys, in key order: one sequence per requested feature.

    A key the view has no row for reads as None in every column, event time included.
    """

    values: dict[str, Sequence[Any]]
    event_times: Sequence[datetime | None]


class OnlineStore(Protocol):
    def ensure_table(self, view: ViewSchema, within: Any = None) -> None:
        """Create the view version's table if it does not exist; `within`, an open
        transaction of the store's database, makes it part of that transaction."""
        ...

    def drop_table(self, view: ViewSchema, within: Any = None) -> None: ...

    def retain_keys(self, view: ViewSchema, keys: Sequence[Any]) -> int:
        """Delete the rows of every key not in `keys` at once (an overwriting publish)."""
        ...

    def write(self, view: ViewSchema, rows: Sequence[Row]) -> WriteResult:
        """Upsert atomically; a row never replaces one with a newer event time."""
        ...

    def bulk_load(self, view: ViewSchema, data: pa.Table | Sequence[Row]) -> WriteResult:
        """`write` for large loads (columns: join key, features, `event_ts`), one transaction."""
        ...

    def read(
        self, requests: Sequence[tuple[ViewSchema, Sequence[str]]], keys: Sequence[Any]
    ) -> list[ViewColumns]:
        """Features of several views of one entity for `keys`, in one round trip."""
        ...

    def scan(self, view: ViewSchema, features: Sequence[str]) -> tuple[list[Any], ViewColumns]:
        """Every key of a view with the given features (for in-memory caches)."""
        ...

    def scan_since(self, view: ViewSchema, features: Sequence[str], since: datetime | None) -> Scan:
        """The rows written after `since` (every row when None), for incremental caches."""
        ...


@dataclass(frozen=True)
class Scan:
    keys: list[Any]
    columns: ViewColumns
    # The store's clock when the scan began: every row written before it that had committed
    # is in the scan, so the next scan may start from here (less a margin for late commits).
    as_of: datetime
