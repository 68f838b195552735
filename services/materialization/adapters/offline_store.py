"""Offline store: Parquet per feature-view version, partitioned by event date, every event kept.

Each file is written under a temporary name and then moved into place, so a reader never
sees half a file. Paths go through pyarrow's filesystem layer, so an object-store URI works
as well as a local directory.
"""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shared.feature_views import ViewSchema

PARTITION = "ds"


class ParquetOfflineStore:
    def __init__(self, uri: str) -> None:
        self._fs, self._root = pafs.FileSystem.from_uri(uri)
        self._fs.create_dir(self._root, recursive=True)

    def view_path(self, view: ViewSchema) -> str:
        return f"{self._root}/{view.project}/{view.name}/v{view.version}"

    def write(self, view: ViewSchema, table: pa.Table, job_id: str, chunk: int) -> int:
        days = pc.strftime(table.column("event_ts"), format="%Y-%m-%d")
        for day in pc.unique(days).to_pylist():
            part = table.filter(pc.equal(days, day))
            directory = f"{self.view_path(view)}/{PARTITION}={day}"
            self._fs.create_dir(directory, recursive=True)
            final = f"{directory}/{job_id}-{chunk:06d}.parquet"
            temporary = f"{directory}/.tmp-{uuid.uuid4().hex}"
            pq.write_table(part, temporary, filesystem=self._fs)
            self._fs.move(temporary, final)
        return table.num_rows
