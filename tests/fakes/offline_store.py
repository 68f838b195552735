"""`OfflineStore` in memory: each job's chunk per day kept as one table, as the Parquet store
keeps one file per job, chunk and day partition."""

from __future__ import annotations

import threading
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from services.materialization.jobs import FileSourceSpec, Window
from shared.feature_views import ViewSchema

PARTITION = "ds"
EVENT_TS = "event_ts"


class InMemoryOfflineStore:
    """`source` names a path under `root` that nothing can read: unit tests check which
    source a job reads, not the rows."""

    def __init__(self, root: str = "/offline") -> None:
        self.root = root
        self._files: dict[str, dict[tuple[date, str], pa.Table]] = {}
        self._lock = threading.Lock()

    def source(self, view: ViewSchema) -> FileSourceSpec:
        return FileSourceSpec(self._path(view), "PARQUET", EVENT_TS, PARTITION)

    def write(self, view: ViewSchema, table: pa.Table, job_id: str, chunk: int) -> int:
        days = pc.cast(table.column(EVENT_TS), pa.date32())
        with self._lock:
            files = self._files.setdefault(self._path(view), {})
            for day in pc.unique(days).to_pylist():
                part = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
                files[(day, f"{job_id}-{chunk:06d}")] = part
        return table.num_rows

    def clear_window(self, view: ViewSchema, window: Window) -> int:
        removed = 0
        with self._lock:
            files = self._files.get(self._path(view), {})
            for key, table in list(files.items()):
                times = table.column(EVENT_TS)
                inside = pc.and_(
                    pc.greater_equal(times, pa.scalar(window.start, times.type)),
                    pc.less(times, pa.scalar(window.end, times.type)),
                )
                count = pc.sum(inside).as_py() or 0
                removed += count
                if count == table.num_rows:
                    del files[key]
                elif count:
                    files[key] = table.filter(pc.invert(inside))
        return removed

    def drop(self, view: ViewSchema) -> None:
        with self._lock:
            self._files.pop(self._path(view), None)

    def stored(self, view: ViewSchema) -> list[pa.Table]:
        """Test inspection: what the view's partitions hold, one table per job, chunk and day."""
        with self._lock:
            return list(self._files.get(self._path(view), {}).values())

    def _path(self, view: ViewSchema) -> str:
        return f"{self.root}/{view.project}/{view.name}/v{view.version}"
