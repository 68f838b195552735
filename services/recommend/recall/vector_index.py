"""Nearest-neighbour indexes over an item view's ARRAY<FLOAT> feature, in process (faiss).

One index per (project, view, feature, `IndexSpec`), shared by every stage and scene that
asks for the same, each built from one `ItemTable` and kept with it (`ItemVectors.table`).
Tables are immutable and a cache refresh swaps in a new one, so an index is current exactly
while its table is the cache's.

When the cache swaps in a table, the next search starts bringing the index up to date:
- after an incremental refresh (`ItemTable.changed` is not None), a flat or IVF index is
  copied and only the rows that differ are removed and re-added. Which rows differ is decided
  here, not taken from `changed` alone: a row whose vector is the very object the indexed
  table held is unchanged (tables are never mutated), every other row is re-read. So an index
  that missed a table (two refreshes with no search between) still ends up exact.
- after a full load, for HNSW (faiss' HNSW cannot remove vectors), or when most rows
  changed, the index is rebuilt.
Updates run on a background thread and searches use the previous index meanwhile (its
results are checked against the new table, so a removed item is never returned). The first
flat index of a key is built on the request that needs it (a copy of the vectors: 0.2 s at
100,000 x 64); the first IVF or HNSW one (seconds to train or link) in the background, the
recall finding nothing until it is ready.

Searches run on one thread each: faiss would spread a single query over its OpenMP threads,
which on a small shared host costs far more than it gains (100,000 x 64 flat, k = 500: 30 ms
on two threads, 1.3 ms on one); the service's request threads are the parallelism. OpenMP
keeps the thread count per calling thread, so each thread that searches sets it for itself:
set once at import, it held only for the importing thread, and gRPC's request threads
searched on every core (14 ms instead of 1.4 on an idle 2-core host).

Items without a usable vector (missing, expired, of another length than the index's
dimension, non-finite, or all zeros under cosine) are not indexed; their count is logged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import structlog
from prometheus_client import Gauge

from services.recommend.item_cache import ItemTable
from shared.errors import FailedPrecondition
from shared.values import VT

log = structlog.get_logger(__name__)

_search_threads = threading.local()


def single_threaded() -> None:
    """Make faiss run this thread's calls on this thread alone (see the module docstring)."""
    if not getattr(_search_threads, "single", False):
        faiss.omp_set_num_threads(1)
        _search_threads.single = True


single_threaded()

INDEX_TYPES = ("flat", "ivf", "hnsw")
METRICS = ("inner_product", "cosine")
VECTOR_TYPES = frozenset({VT.VALUE_TYPE_FLOAT_LIST, VT.VALUE_TYPE_DOUBLE_LIST})
# faiss' k-means wants at least 39 training points per centroid; smaller catalogues are
# held flat whatever the configuration (an IVF index of one list is a flat one anyway).
MIN_POINTS_PER_LIST = 39
# Above this share of changed rows, one rebuild is cheaper than removing and re-adding.
REBUILD_SHARE = 0.5

INDEX_ITEMS = Gauge(
    "recstack_recommend_vector_index_items",
    "Items held by an in-process vector index.",
    ["project", "view", "feature", "index"],
    # Each worker process holds its own index: one series per live worker (pid label).
    multiprocess_mode="liveall",
)
INDEX_SKIPPED = Gauge(
    "recstack_recommend_vector_index_skipped_items",
    "Items of the view left out of its vector index for want of a usable vector.",
    ["project", "view", "feature", "index"],
    # Each worker process holds its own index: one series per live worker (pid label).
    multiprocess_mode="liveall",
)


@dataclass(frozen=True)
class IndexSpec:
    """How an item view's vectors are indexed and compared."""

    index: str = "flat"
    metric: str = "inner_product"
    # IVF: the number of lists (0: about 4·sqrt(items)) and how many a search visits.
    nlist: int = 0
    nprobe: int = 32
    # HNSW: links per node, and the candidate list sizes at build and at search (a search
    # of k items looks at max(ef_search, k) candidates).
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 128
    # 0: the most common length among the items' vectors.
    dimension: int = 0

    @property
    def updatable(self) -> bool:
        return self.index != "hnsw"


@dataclass(frozen=True)
class ItemVectors:
    """One searchable index and the table it reflects; never changed once built."""

    table: ItemTable
    feature: str
    spec: IndexSpec
    # None when the table has no usable vector.
    index: faiss.Index | None
    # Label → item id (None: removed by an update), and the reverse.
    names: list[str | None]
    labels: dict[str, int]
    dimension: int
    skipped: int = 0

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def query(self, vector: Sequence[float] | np.ndarray, what: str) -> np.ndarray | None:
        """`vector` as a query of this index ([1, d] float32), None when it cannot be one
        (empty, non-finite, zero under cosine); FailedPrecondition on another dimension."""
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] == 0 or not np.isfinite(query).all():
            return None
        if self.index is not None and query.shape[1] != self.dimension:
            raise FailedPrecondition(
                f"{what} has {query.shape[1]} dimensions; the index of "
                f"{self.table.view.name}:{self.feature} has {self.dimension}",
                reason="EMBEDDING_DIMENSION_MISMATCH",
            )
        if self.spec.metric == "cosine":
            norm = float(np.linalg.norm(query))
            if norm == 0:
                return None
            query = query / norm
        return query

    def search(self, query: np.ndarray, k: int, exclude: Iterable[str] = ()) -> list[str]:
        """Up to `k` item ids nearest to `query`, best first, without `exclude`."""
        excluded = set(exclude)
        if self.index is None or k <= 0 or self.index.ntotal == 0:
            return []
        wanted = min(k + len(excluded), int(self.index.ntotal))
        single_threaded()
        _, labels = self.index.search(query, wanted, params=self._params(wanted))
        found: list[str] = []
        for label in labels[0].tolist():
            # faiss pads with -1 when an approximate index finds fewer than asked.
            name = self.names[label] if label >= 0 else None
            if name is not None and name not in excluded:
                found.append(name)
        return found[:k]

    def _params(self, k: int) -> faiss.SearchParameters | None:
        # Per call, so that one index serves specs that differ only in how they search.
        if isinstance(self.index, faiss.IndexHNSWFlat):
            return faiss.SearchParametersHNSW(efSearch=max(self.spec.ef_search, k))
        if isinstance(self.index, faiss.IndexIVFFlat):
            return faiss.SearchParametersIVF(nprobe=min(self.spec.nprobe, self.index.nlist))
        return None

    def vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """The usable vectors of `item_ids` (as indexed: normalised under cosine), [n, d]."""
        table = self.table
        rows = table.rows(item_ids)
        values = table.column(self.feature, rows[rows >= 0])
        _, matrix = _usable(values, self.dimension, self.spec.metric == "cosine")
        return matrix


class VectorIndexes:
    """Every vector index of the service, by what it indexes and how.

    The least recently used index is dropped beyond `max_indexes` (scenes whose index
    settings changed leave theirs behind).
    """

    def __init__(self, *, background: bool = True, max_indexes: int = 16) -> None:
        self._background = background
        self._max_indexes = max_indexes
        self._entries: dict[Hashable, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, project: str, table: ItemTable, feature: str, spec: IndexSpec) -> ItemVectors:
        """The index of `table`, or of the table before it while it is brought up to date;
        while the first IVF or HNSW index of a key is built in the background, an empty one
        (a flat index is cheap enough to build on the request that first needs it)."""
        key = (project, table.view.name, feature, spec)
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                entry = _Entry(project, feature, spec, self._background)
            # Insertion order is recency of use.
            self._entries[key] = entry
            while len(self._entries) > self._max_indexes:
                self._entries.pop(next(iter(self._entries)))
        return entry.index_for(table)


class _Entry:
    def __init__(self, project: str, feature: str, spec: IndexSpec, background: bool) -> None:
        self._project = project
        self._feature = feature
        self._spec = spec
        self._background = background
        self._current: ItemVectors | None = None
        # One build or update at a time; `_state` guards the hand-over to the worker.
        self._building = threading.Lock()
        self._state = threading.Lock()
        self._wanted: ItemTable | None = None
        self._worker: threading.Thread | None = None

    def index_for(self, table: ItemTable) -> ItemVectors:
        current = self._current
        if current is not None and (
            current.table is table or current.table.loaded_at > table.loaded_at
        ):
            return current
        if not self._background or (current is None and self._spec.index == "flat"):
            return self._advance(table)
        self._request(table)
        return current if current is not None else empty(table, self._feature, self._spec)

    def _advance(self, table: ItemTable) -> ItemVectors:
        with self._building:
            current = self._current
            if current is None or (
                current.table is not table and current.table.loaded_at <= table.loaded_at
            ):
                current = self._current = self._next(current, table)
            return current

    def _request(self, table: ItemTable) -> None:
        with self._state:
            self._wanted = table
            if self._worker is not None:
                return
            self._worker = threading.Thread(
                target=self._work, name=f"vector-index-{table.view.name}", daemon=True
            )
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._state:
                table, self._wanted = self._wanted, None
                if table is None:
                    self._worker = None
                    return
            try:
                self._advance(table)
            except Exception:  # searches keep the previous index; the next table retries
                log.warning(
                    "vector_index_update_failed",
                    view=table.view.name,
                    feature=self._feature,
                    exc_info=True,
                )

    def _next(self, current: ItemVectors | None, table: ItemTable) -> ItemVectors:
        started = time.perf_counter()
        how = "update"
        built = None
        if current is not None and table.changed is not None and self._spec.updatable:
            built = _updated(current, table)
        if built is None:
            how = "build"
            built = build(table, self._feature, self._spec)
        labels = (self._project, table.view.name, self._feature, self._spec.index)
        INDEX_ITEMS.labels(*labels).set(len(built))
        INDEX_SKIPPED.labels(*labels).set(built.skipped)
        log.info(
            "vector_index_ready",
            how=how,
            view=table.view.name,
            feature=self._feature,
            index=self._spec.index,
            items=len(built),
            skipped=built.skipped,
            seconds=round(time.perf_counter() - started, 4),
        )
        return built


# --- building and updating --------------------------------------------------------------------


def build(table: ItemTable, feature: str, spec: IndexSpec) -> ItemVectors:
    """A new index of every usable vector of `table`'s `feature`."""
    values = _vector_column(table, feature)
    dimension = spec.dimension or _common_length(values)
    rows, matrix = _usable(values, dimension, spec.metric == "cosine")
    names: list[str | None] = table.item_ids[rows].tolist()
    labels = {name: label for label, name in enumerate(names) if name is not None}
    skipped = len(table) - len(rows)
    if not len(rows):
        return ItemVectors(table, feature, spec, None, [], {}, dimension, skipped)
    index = _new_index(spec, dimension, matrix)
    if isinstance(index, faiss.IndexHNSWFlat):
        index.add(matrix)
    else:
        index.add_with_ids(matrix, np.arange(len(rows), dtype=np.int64))
    return ItemVectors(table, feature, spec, index, names, labels, dimension, skipped)


def empty(table: ItemTable, feature: str, spec: IndexSpec) -> ItemVectors:
    """An index of nothing (every search finds no item)."""
    return ItemVectors(table, feature, spec, None, [], {}, 0, skipped=len(table))


def _updated(current: ItemVectors, table: ItemTable) -> ItemVectors | None:
    """`current` brought to `table` by removing and re-adding the rows that differ; None
    when a rebuild is due (no index yet, or most rows changed)."""
    if current.index is None:
        return None
    values = _vector_column(table, current.feature)
    previous = _vector_column(current.table, current.feature)
    old_rows = current.table.rows(table.item_ids.tolist())
    same = np.zeros(len(table), dtype=bool)
    known = np.flatnonzero(old_rows >= 0)
    same[known] = _object_ids(values[known]) == _object_ids(previous[old_rows[known]])
    for item_id in table.changed or ():
        row = table.rows([item_id])[0]
        if row >= 0:
            same[row] = False
    changed_rows = np.flatnonzero(~same)
    present = set(table.item_ids.tolist())
    gone = [label for name, label in current.labels.items() if name not in present]
    if len(changed_rows) + len(gone) > REBUILD_SHARE * max(len(current), 1):
        return None
    index = faiss.clone_index(current.index)
    names = list(current.names)
    labels = dict(current.labels)
    stale = gone + [
        labels[name] for name in table.item_ids[changed_rows].tolist() if name in labels
    ]
    if stale:
        index.remove_ids(np.asarray(stale, dtype=np.int64))
        for label in stale:
            name = names[label]
            names[label] = None
            labels.pop(name, None)  # type: ignore[arg-type]
    usable, matrix = _usable(
        values[changed_rows], current.dimension, current.spec.metric == "cosine"
    )
    added = table.item_ids[changed_rows[usable]].tolist()
    if added:
        new_labels = np.arange(len(names), len(names) + len(added), dtype=np.int64)
        index.add_with_ids(matrix, new_labels)
        names.extend(added)
        labels.update(zip(added, new_labels.tolist(), strict=True))
    indexed = index.ntotal
    return ItemVectors(
        table,
        current.feature,
        current.spec,
        index,
        names,
        labels,
        current.dimension,
        skipped=len(table) - indexed,
    )


def _new_index(spec: IndexSpec, dimension: int, matrix: np.ndarray) -> faiss.Index:
    metric = faiss.METRIC_INNER_PRODUCT
    if spec.index == "hnsw":
        index = faiss.IndexHNSWFlat(dimension, spec.hnsw_m, metric)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
        return index
    count = len(matrix)
    if spec.index == "ivf" and count >= 2 * MIN_POINTS_PER_LIST:
        nlist = spec.nlist or round(4 * np.sqrt(count))
        nlist = max(1, min(nlist, count // MIN_POINTS_PER_LIST))
        quantizer = faiss.IndexFlatIP(dimension)
        index = faiss.IndexIVFFlat(quantizer, dimension, nlist, metric)
        index.train(matrix)
        return index
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def _vector_column(table: ItemTable, feature: str) -> np.ndarray:
    declared = {f.name: f.value_type for f in table.view.features}
    if feature in declared and declared[feature] not in VECTOR_TYPES:
        raise FailedPrecondition(
            f"feature {table.view.name}:{feature} is {VT.Name(declared[feature])}, not "
            "ARRAY<FLOAT> or ARRAY<DOUBLE>: it cannot be indexed as vectors",
            reason="FEATURE_NOT_A_VECTOR",
        )
    return table.column(feature, np.arange(len(table)))


def _common_length(values: np.ndarray) -> int:
    lengths = _lengths(values)
    lengths = lengths[lengths > 0]
    if not len(lengths):
        return 0
    found, counts = np.unique(lengths, return_counts=True)
    return int(found[np.argmax(counts)])


def _lengths(values: np.ndarray) -> np.ndarray:
    return np.fromiter(
        (len(value) if value is not None else 0 for value in values), np.int64, len(values)
    )


def _usable(values: np.ndarray, dimension: int, cosine: bool) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `values` of the usable vectors and those vectors, [n, dimension] float32."""
    if dimension <= 0:
        return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
    rows = np.flatnonzero(_lengths(values) == dimension)
    matrix = np.array(values[rows].tolist(), dtype=np.float32).reshape(len(rows), dimension)
    keep = np.isfinite(matrix).all(axis=1)
    if cosine:
        norms = np.linalg.norm(matrix, axis=1)
        keep &= norms > 0
        matrix = matrix / np.where(norms > 0, norms, 1)[:, None]
    return rows[keep], np.ascontiguousarray(matrix[keep])


def _object_ids(values: np.ndarray) -> np.ndarray:
    return np.fromiter(map(id, values), np.int64, len(values))
