"""Source rows for the local engine: file datasets and PostgreSQL tables or queries.

Both are opened lazily and read in bounded batches by whoever scans them (DuckDB here), so a
source larger than memory streams through. Files are found before anything is read: a glob is
expanded by listing only the directories under its fixed prefix, and `{column}=value`
partition directories that cannot hold an event of the requested span are never entered.
PostgreSQL rows come through a server-side cursor with the span as a WHERE clause, so the
server filters (and can use an index on the event timestamp column).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from psycopg import sql
from psycopg.types.numeric import FloatLoader
from psycopg.types.string import TextLoader

from services.materialization.adapters.source_databases import (
    APPLICATION_NAME,
    Guarded,
    SourceDatabases,
)
from services.materialization.jobs import (
    FileSourceSpec,
    PostgresSourceSpec,
    SourceSpec,
    Window,
)
from shared.errors import DomainError, FailedPrecondition, quoted
from shared.paths import FileRoots

DEFAULT_PARTITION_FORMAT = "%Y-%m-%d"
# Partition values may be dates in any time zone (UTC offsets lie within -12 h..+14 h), so a
# partition is kept when it overlaps the span widened by this much; rows are filtered by their
# event time afterwards, so the margin costs reads, never correctness.
PARTITION_ZONE_MARGIN = timedelta(hours=14)
# The finest strftime field of a partition format sets how long one partition lasts.
_PARTITION_LENGTHS = (
    ("%S", timedelta(seconds=1)),
    ("%M", timedelta(minutes=1)),
    ("%H", timedelta(hours=1)),
    ("%I", timedelta(hours=1)),
    ("%d", timedelta(days=1)),
    ("%j", timedelta(days=1)),
    ("%m", timedelta(days=31)),
    ("%b", timedelta(days=31)),
    ("%B", timedelta(days=31)),
    ("%Y", timedelta(days=366)),
    ("%y", timedelta(days=366)),
)
_GLOB_CHARS = frozenset("*?[")
__all__ = ["APPLICATION_NAME", "ReadOptions", "SourceRows", "file_dataset", "open_source"]
# Hive and Spark write bookkeeping files (`_SUCCESS`, `.crc`, temporary files) beside the data.
_IGNORED_PREFIXES = (".", "_")


@dataclass(frozen=True)
class SourceRows:
    """Rows to scan: a pyarrow Dataset (scannable again) or a one-shot RecordBatchReader."""

    data: ds.Dataset | pa.RecordBatchReader
    schema: pa.Schema
    rescannable: bool


@dataclass(frozen=True)
class ReadOptions:
    """How to open a source: the event-time span, the columns (None: all), batch size, the
    project it is read for and how its POSTGRES sources connect (None: they cannot)."""

    span: Window
    columns: Sequence[str] | None
    chunk_rows: int
    project: str = ""
    databases: SourceDatabases | None = None
    # Where a project's FILE sources may read (None: unconfined, for the platform's reads).
    file_roots: FileRoots | None = None
    # Errors raised while a scan pulls batches: the scanner (DuckDB) re-raises them as its
    # own, so whoever runs it looks here to report the original.
    failures: list[DomainError] = field(default_factory=list)


def open_source(
    source: SourceSpec, options: ReadOptions
) -> AbstractContextManager[SourceRows | None]:
    """The source's rows within `options.span`; None when no file can hold such a row."""
    return _OPENERS[type(source)](source, options)


# --- files --------------------------------------------------------------------------------


def _open_file(
    source: FileSourceSpec, options: ReadOptions
) -> AbstractContextManager[SourceRows | None]:
    check = None
    if source.project and options.file_roots is not None:
        roots = options.file_roots

        def check(path: str) -> None:
            roots.check_file(path, source.project, f"data source path {quoted(source.path)}")

    dataset = file_dataset(source, options.span, check=check)
    if dataset is None:
        return nullcontext(None)
    return nullcontext(SourceRows(dataset, dataset.schema, rescannable=True))


def file_dataset(
    source: FileSourceSpec,
    span: Window | None = None,
    *,
    missing_ok: bool = False,
    check: Callable[[str], None] | None = None,
) -> ds.Dataset | None:
    """The files of `source` that may hold events of `span` (all files when None) as one
    dataset; None when none may. A path that matches nothing fails unless `missing_ok`;
    `check` sees every file before any is read."""
    filesystem, path = _filesystem(source.path)
    listing = _Listing(filesystem, path, _partition_filter(source, span))
    if not listing.exists():
        if missing_ok:
            return None
        raise FailedPrecondition(
            f"data source path {quoted(source.path)} matches no file", reason="SOURCE_NOT_FOUND"
        )
    files = listing.files()
    for path in files if check is not None else ():
        check(path)
    if not files:
        return None
    return ds.dataset(
        files,
        filesystem=filesystem,
        format=_file_format(source),
        partitioning=_hive(source.partition_column),
        partition_base_dir=_partition_root(listing.base, source.partition_column),
    )


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).absolute())


def _file_format(source: FileSourceSpec) -> ds.FileFormat:
    if source.file_format == "PARQUET":
        return ds.ParquetFileFormat()
    # The event time is read as text and parsed explicitly later: CSV inference would make
    # some files timestamps and others strings, and it rejects mixed zone offsets.
    convert = pcsv.ConvertOptions(column_types={source.event_timestamp_column: pa.string()})
    return ds.CsvFileFormat(convert_options=convert)


def _hive(partition_column: str) -> ds.Partitioning | None:
    if not partition_column:
        return None
    # Values stay strings: inference would turn `20260401` into an integer on one day and
    # fail on another.
    return ds.partitioning(pa.schema([(partition_column, pa.string())]), flavor="hive")


def _partition_root(base: str, partition_column: str) -> str:
    """The directory partition paths are relative to: `base` above any partition level."""
    parts = base.rstrip("/").split("/")
    while partition_column and parts and parts[-1].startswith(f"{partition_column}="):
        parts.pop()
    return "/".join(parts) or "/"


class _Listing:
    """The files a path, directory or glob names, partition directories pruned on the way."""

    def __init__(
        self, filesystem: pafs.FileSystem, path: str, keep_directory: Callable[[str], bool]
    ) -> None:
        self._fs = filesystem
        self._keep = keep_directory
        segments = path.split("/")
        fixed = next(
            (i for i, part in enumerate(segments) if _GLOB_CHARS & set(part)), len(segments)
        )
        self.base = "/".join(segments[:fixed]) or "/"
        self._pattern = _glob_regex(path) if fixed < len(segments) else None
        # A directory is read whole; a glob without `**` matches no deeper than its own levels.
        recursive = self._pattern is None or "**" in path
        self._depth = None if recursive else len(segments) - fixed - 1

    def exists(self) -> bool:
        if self._pattern is None:
            return self._fs.get_file_info(self.base).type != pafs.FileType.NotFound
        return any(True for _ in self._walk(self.base, 0, prune=False))

    def files(self) -> list[str]:
        kind = self._fs.get_file_info(self.base).type
        if self._pattern is None and kind == pafs.FileType.File:
            return [self.base]
        return sorted(self._walk(self.base, 0, prune=True))

    def _walk(self, directory: str, depth: int, *, prune: bool) -> Iterator[str]:
        selector = pafs.FileSelector(directory, allow_not_found=True)
        for info in self._fs.get_file_info(selector):
            if info.base_name.startswith(_IGNORED_PREFIXES):
                continue
            if info.type == pafs.FileType.Directory:
                deeper = self._depth is None or depth < self._depth
                if deeper and (not prune or self._keep(info.base_name)):
                    yield from self._walk(info.path, depth + 1, prune=prune)
            elif info.type == pafs.FileType.File and self._matches(info.path):
                yield info.path

    def _matches(self, path: str) -> bool:
        return self._pattern is None or self._pattern.fullmatch(path) is not None


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Shell-style glob: `*` and `?` stay within one directory level, `**` spans levels."""
    tokens = re.split(r"(\*\*/?|\*|\?|\[[^\]]*\])", pattern)
    regex = []
    for token in tokens:
        if token.startswith("**"):
            regex.append("(?:.*/)?" if token.endswith("/") else ".*")
        elif token == "*":
            regex.append("[^/]*")
        elif token == "?":
            regex.append("[^/]")
        elif token.startswith("[") and token.endswith("]") and len(token) > 2:
            body = token[1:-1]
            regex.append("[^" + body[1:] + "]" if body.startswith("!") else token)
        else:
            regex.append(re.escape(token))
    return re.compile("".join(regex))


def _partition_filter(source: FileSourceSpec, span: Window | None) -> Callable[[str], bool]:
    """Whether a directory may hold events of `span` (False only for partitions outside it)."""
    column, fmt = source.partition_column, source.partition_format or DEFAULT_PARTITION_FORMAT
    length = next((length for field, length in _PARTITION_LENGTHS if field in fmt), None)
    if not column or span is None or length is None:
        return lambda name: True
    since, until = span.start - PARTITION_ZONE_MARGIN, span.end + PARTITION_ZONE_MARGIN

    def keep(name: str) -> bool:
        prefix = f"{column}="
        if not name.startswith(prefix):
            return True
        try:
            start = datetime.strptime(unquote(name.removeprefix(prefix)), fmt)
        except ValueError:
            # Not a date in this format (e.g. Hive's default partition): read it.
            return True
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
        return start < until and start + length > since

    return keep


# --- PostgreSQL ---------------------------------------------------------------------------

_ARROW_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "numeric": pa.float64(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "bytea": pa.binary(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
}
# Element types PostgreSQL arrays of which arrive as lists; other arrays arrive as text.
_LIST_ELEMENTS = frozenset({"bool", "int2", "int4", "int8", "float4", "float8", "text", "varchar"})


@contextmanager
def _open_postgres(source: PostgresSourceSpec, options: ReadOptions) -> Iterator[SourceRows]:
    if options.databases is None:
        raise FailedPrecondition("this engine was given no way to reach POSTGRES sources")
    query = _select(source, options)
    with options.databases.connect(options.project, source) as guarded:
        schema = _describe(guarded, query)
        with guarded.connection.cursor(name="recstack_materialization") as cursor:
            with guarded.watched():
                cursor.execute(query)
            batches = _batches(guarded, cursor, schema, options)
            yield SourceRows(
                pa.RecordBatchReader.from_batches(schema, batches), schema, rescannable=False
            )


def _select(source: PostgresSourceSpec, options: ReadOptions) -> sql.Composed:
    if source.table:
        relation: sql.Composable = sql.Identifier(*source.table.split("."))
    elif source.query.strip():
        relation = sql.SQL("({})").format(sql.SQL(source.query.strip().rstrip(";")))
    else:
        raise FailedPrecondition("the POSTGRES source names neither a table nor a query")
    columns = options.columns
    projection = sql.SQL(", ").join(map(sql.Identifier, columns)) if columns else sql.SQL("*")
    ts = sql.Identifier(source.event_timestamp_column)
    # Literals, not parameters: a user query may contain `%`, which parameters would claim.
    return sql.SQL("SELECT {} FROM {} AS source WHERE {} >= {} AND {} < {}").format(
        projection,
        relation,
        ts,
        sql.Literal(options.span.start),
        ts,
        sql.Literal(options.span.end),
    )


def _describe(guarded: Guarded, query: sql.Composed) -> pa.Schema:
    """The result's Arrow schema; types without an Arrow counterpart are loaded as text."""
    connection = guarded.connection
    try:
        with guarded.watched():
            cursor = connection.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(query))
    except psycopg.Error as exc:
        raise FailedPrecondition(
            f"the POSTGRES source query fails: {_first_line(exc)}",
            reason="SOURCE_QUERY_FAILED",
        ) from None
    connection.adapters.register_loader("numeric", FloatLoader)
    fields = []
    for column in cursor.description or ():
        arrow_type = _arrow_type(column.type_code)
        if arrow_type is None:
            connection.adapters.register_loader(column.type_code, TextLoader)
            arrow_type = pa.string()
        fields.append(pa.field(column.name, arrow_type))
    return pa.schema(fields)


def _arrow_type(oid: int) -> pa.DataType | None:
    info = psycopg.postgres.types.get(oid)
    if info is None:
        return None
    if info.array_oid == oid:
        return pa.list_(_ARROW_TYPES[info.name]) if info.name in _LIST_ELEMENTS else None
    return _ARROW_TYPES.get(info.name)


def _batches(
    guarded: Guarded, cursor: psycopg.ServerCursor[Any], schema: pa.Schema, options: ReadOptions
) -> Iterator[pa.RecordBatch]:
    try:
        yield from _fetch(guarded, cursor, schema, options)
    except DomainError as exc:
        options.failures.append(exc)
        raise


def _fetch(
    guarded: Guarded, cursor: psycopg.ServerCursor[Any], schema: pa.Schema, options: ReadOptions
) -> Iterator[pa.RecordBatch]:
    assert options.databases is not None
    limit, read = options.databases.max_rows, 0
    while True:
        try:
            with guarded.watched():
                rows = cursor.fetchmany(options.chunk_rows)
        except psycopg.Error as exc:
            raise FailedPrecondition(
                f"the POSTGRES source query fails: {_first_line(exc)}",
                reason="SOURCE_QUERY_FAILED",
            ) from None
        if not rows:
            return
        read += len(rows)
        if read > limit:
            raise FailedPrecondition(
                f"the POSTGRES source returned more than {limit} rows for one job: narrow its "
                "query or the job's window",
                reason="SOURCE_ROW_LIMIT",
            )
        columns = zip(*rows, strict=True)
        arrays = [pa.array(values, type=f.type) for values, f in zip(columns, schema, strict=True)]
        yield pa.record_batch(arrays, schema=schema)


def _first_line(exc: BaseException) -> str:
    """PostgreSQL's own message (e.g. "permission denied for schema registry"), one line."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


_OPENERS: dict[type, Callable[[Any, ReadOptions], AbstractContextManager[SourceRows | None]]] = {
    FileSourceSpec: _open_file,
    PostgresSourceSpec: _open_postgres,
}
