"""Training-set export: point-in-time correct joins of the offline store, run by DuckDB.

Three modes, one join. Each mode builds a relation of *entity rows* (keys + a timestamp),
and every feature view of the model feature set is joined onto it with one
`ASOF LEFT JOIN` per view: for each row, the view's latest event with
`feature_ts <= row_ts`, all features of a view taken from that one event row, then nulled
when the view has a TTL and `row_ts - feature_ts > ttl`. A left ASOF join matches at most
one right row per left row, so no entity row is dropped or duplicated.

- labelled entity rows (a Parquet path, or a PostgreSQL table staged to Parquet): the output
  is the input columns, in input order, plus one column per feature;
- snapshot: one row per key that has an event within TTL at `snapshot_time`, with
  `event_ts = snapshot_time` (keys ascending);
- changes: one row per distinct (key, event time) that any of the set's views of that entity
  recorded within the window, with every feature of the set as of that time: the offline
  events themselves, joined per view on key + event time (chronological order).
  When the set spans several entities (user and item views), the snapshot and change rows of
  each entity are stacked: the other entities' key and feature columns are null.

Output columns are named `{view}__{feature}`: `view:feature` is a legal Parquet name but not
a valid identifier in Spark/Hive SQL or most dataframe tools.

Ties: several events of one key with the same timestamp are resolved by write order: the
last written wins. Write order is the file's modification time (files are moved into place
whole, so that is when the write completed), then its path, then the row within the file.
The ASOF join sees this as one ordered position, `(event time, file rank, row)`, packed into
a HUGEINT, so it needs no de-duplicating window over the offline data.

DuckDB runs with external access off except for the directories it must read (the views'
offline data, the entity rows) and write (a staging directory beside the output, a spill
directory); the output appears by an atomic rename of the finished file.

Every Parquet file under a view version's directory is read: the offline store keeps every
event, including chunks that a later-failed job wrote before it failed.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow.fs as pafs

from services.materialization.adapters.offline_store import ParquetOfflineStore
from services.materialization.jobs import Window
from shared.errors import FailedPrecondition, InvalidArgument, quoted
from shared.feature_views import ViewSchema
from shared.paths import FileRoots

DEFAULT_TIMESTAMP_COLUMN = "event_ts"
OFFLINE_TS = "event_ts"
FEATURE_SEPARATOR = "__"
# Internal column names; input columns may not start with it.
RESERVED_PREFIX = "__rs_"
# Position = event_us * 2^63 + file_rank * 2^32 + file_row: lexicographic (time, file, row)
# in one HUGEINT (|event_us| < 2^63, file_rank < 2^31, rows per file < 2^32).
TIME_SHIFT = 2**63
FILE_SHIFT = 2**32
FEATURE_SET_NAME = re.compile(r"^projects/([^/]+)/modelFeatureSets/([^/]+)\Z")
INTEGER_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT"}
    | {"UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
)
GLOB_CHARS = re.compile(r"[*?\[]")


class ExportDefinitions(Protocol):
    """Where the feature set and view schemas come from (the cached registry client)."""

    def model_feature_set(self, project: str, set_id: str) -> Any: ...
    def view_schema(self, project: str, view_id: str, version: int = 0) -> ViewSchema: ...


class EntityTables(Protocol):
    """Stages a database table of labelled entity rows as one Parquet file."""

    def to_parquet(self, project: str, table: str, path: str) -> int: ...


@dataclass(frozen=True)
class ExportOptions:
    # Sized for a 2-core machine: DuckDB spills to `spill_directory` past the memory limit.
    threads: int = 2
    memory_limit: str = "2GB"
    # Parent of each export's DuckDB spill directory and of a staged entity table; empty:
    # the system temp dir. (The output is staged beside the output path, for the rename.)
    spill_directory: str = ""
    row_group_size: int = 122_880


@dataclass(frozen=True)
class ExportRequest:
    """ExportTrainingSetRequest without protobuf: exactly one of the four modes is set."""

    model_feature_set: str
    output_path: str
    entity_parquet_path: str = ""
    entity_table: str = ""
    timestamp_column: str = ""
    snapshot_time: datetime | None = None
    changes_window: Window | None = None


@dataclass(frozen=True)
class ExportResult:
    output_path: str
    row_count: int


@dataclass(frozen=True)
class _ViewPlan:
    """One feature view of the set: what to read and how to join it."""

    schema: ViewSchema
    features: tuple[str, ...]
    files: tuple[str, ...]
    alias: str

    @property
    def ttl_us(self) -> int:
        return round(self.schema.ttl_seconds * 1_000_000)

    def column(self, feature: str) -> str:
        return f"{self.schema.name}{FEATURE_SEPARATOR}{feature}"


@dataclass
class _Session:
    """One export's locked-down DuckDB connection and the directory it writes the output in."""

    connection: duckdb.DuckDBPyConnection
    staging: Path


class TrainingSetExporter:
    def __init__(
        self,
        definitions: ExportDefinitions,
        offline_store_uri: str,
        *,
        entity_tables: EntityTables | None = None,
        options: ExportOptions | None = None,
        file_roots: FileRoots | None = None,
    ) -> None:
        # Where each project's entity files and outputs may be; None leaves paths unconfined
        # (unit tests of the join itself).
        self._file_roots = file_roots
        self._definitions = definitions
        self._uri = _as_uri(offline_store_uri)
        self._fs, _ = pafs.FileSystem.from_uri(self._uri)
        self._layout = ParquetOfflineStore(self._uri)
        self._entity_tables = entity_tables
        self._options = options or ExportOptions()

    # --- public API -------------------------------------------------------------------

    def export(self, request: ExportRequest) -> ExportResult:
        """Validate the request and run the one mode it sets."""
        _require_output(request.output_path)
        mode = _mode(request)
        request = self._confined(request)
        name, output = request.model_feature_set, request.output_path
        timestamp_column = request.timestamp_column or DEFAULT_TIMESTAMP_COLUMN
        if mode == "entity_parquet_path":
            return self.export_entity_rows(
                name, request.entity_parquet_path, output, timestamp_column
            )
        if mode == "entity_table":
            return self.export_entity_table(name, request.entity_table, output, timestamp_column)
        if request.snapshot_time is not None:
            return self.export_snapshot(name, request.snapshot_time, output)
        assert request.changes_window is not None  # the only mode left
        return self.export_changes(name, request.changes_window, output)

    def export_entity_rows(
        self,
        model_feature_set: str,
        entity_parquet_path: str,
        output_path: str,
        timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
    ) -> ExportResult:
        """Point-in-time join of labelled entity rows read from Parquet: a file, a directory
        of files or a glob, read in path order then row order."""
        _require_output(output_path)
        files = _entity_files(entity_parquet_path)
        if self._file_roots is not None:
            project = _project_of(model_feature_set)
            for file in files:
                self._file_roots.check_file(file, project, "entity_parquet_path")
        return self._export_rows(
            model_feature_set, files, output_path, timestamp_column, "entity_parquet_path"
        )

    def export_entity_table(
        self,
        model_feature_set: str,
        entity_table: str,
        output_path: str,
        timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
    ) -> ExportResult:
        """As `export_entity_rows`, for the rows of a PostgreSQL table, staged to Parquet."""
        _require_output(output_path)
        if not entity_table:
            raise InvalidArgument("entity_table", "is required")
        if self._entity_tables is None:
            raise FailedPrecondition("this service has no database to read entity_table from")
        self._plan(model_feature_set)  # fail on the feature set before copying the table
        project = model_feature_set.split("/")[1]
        with tempfile.TemporaryDirectory(dir=self._spill_parent()) as tmp:
            staged = str(Path(tmp) / "entity_rows.parquet")
            self._entity_tables.to_parquet(project, entity_table, staged)
            return self._export_rows(
                model_feature_set, (staged,), output_path, timestamp_column, "entity_table"
            )

    def export_snapshot(
        self, model_feature_set: str, snapshot_time: datetime, output_path: str
    ) -> ExportResult:
        """Every key's feature values as of `snapshot_time`."""
        _require_output(output_path)
        _, plans = self._plan(model_feature_set)
        with self._session(output_path, plans, ()) as session:
            return self._write(session, _snapshot_sql(plans, _micros(snapshot_time)), output_path)

    def export_changes(
        self, model_feature_set: str, changes_window: Window, output_path: str
    ) -> ExportResult:
        """One row per change (event) of the set's views within `[start, end)`."""
        _require_output(output_path)
        start, end = _micros(changes_window.start), _micros(changes_window.end)
        if end <= start:
            raise InvalidArgument("changes_window.end_time", "must be after start_time")
        _, plans = self._plan(model_feature_set)
        with self._session(output_path, plans, ()) as session:
            return self._write(session, _changes_sql(plans, start, end), output_path)

    def _confined(self, request: ExportRequest) -> ExportRequest:
        """The request with its paths checked against (and resolved in) the project's roots:
        entity rows may be read there or in the project's offline store, output written only
        in its roots."""
        if self._file_roots is None:
            return request
        project = _project_of(request.model_feature_set)
        output = self._file_roots.writable(request.output_path, project, "output_path")
        entity = request.entity_parquet_path
        if entity:
            entity = self._file_roots.readable(entity, project, "entity_parquet_path")
        return replace(request, output_path=output, entity_parquet_path=entity)

    # --- planning ---------------------------------------------------------------------

    def _export_rows(
        self,
        model_feature_set: str,
        files: Sequence[str],
        output_path: str,
        timestamp_column: str,
        source_field: str,
    ) -> ExportResult:
        label, plans = self._plan(model_feature_set)
        with self._session(output_path, plans, files) as session:
            columns = _describe(session.connection, _read(files), source_field)
            _check_entity_columns(columns, plans, timestamp_column, label, source_field, session)
            sql = _labelled_sql(plans, files, list(columns), timestamp_column)
            return self._write(session, sql, output_path)

    def _plan(self, name: str) -> tuple[str, list[_ViewPlan]]:
        """The set's label and its views, each with the features asked and its files."""
        match = FEATURE_SET_NAME.match(name)
        if not match:
            raise InvalidArgument(
                "model_feature_set",
                f"{name!r} is not `projects/{{project}}/modelFeatureSets/{{model_feature_set}}`",
            )
        project, set_id = match.groups()
        feature_set = self._definitions.model_feature_set(project, set_id)
        wanted: dict[tuple[str, int], list[str]] = {}
        for ref in feature_set.resolved_features:
            wanted.setdefault((ref.feature_view, ref.version), []).append(ref.feature)
        if not wanted:
            raise FailedPrecondition(f"{name} resolves to no features")
        plans = []
        for (view_id, version), refs in wanted.items():
            schema = self._definitions.view_schema(project, view_id, version)
            features = _features(schema, refs)
            if features:
                alias = f"__rs_v{len(plans)}"
                plans.append(_ViewPlan(schema, features, self._files(schema), alias))
        if not plans:
            raise FailedPrecondition(f"{name} names no feature besides entity keys")
        _check_unique_columns(plans)
        return feature_set.label, plans

    def _files(self, view: ViewSchema) -> tuple[str, ...]:
        """The view's offline Parquet files in write order (see the module docstring)."""
        if not isinstance(self._fs, pafs.LocalFileSystem):
            # DuckDB reads the files by path; object stores would need its httpfs extension.
            raise FailedPrecondition(
                f"training-set export reads a local (or mounted) offline store, not {self._uri!r}"
            )
        directory = self._layout.view_path(view)
        selector = pafs.FileSelector(directory, recursive=True, allow_not_found=True)
        files = [
            info
            for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith(".")
        ]
        if not files:
            raise FailedPrecondition(
                f"feature view {view.name!r} v{view.version} has no offline data yet: "
                "materialize it to the OFFLINE store first"
            )
        files.sort(key=lambda info: (info.mtime_ns or 0, info.path))
        return tuple(info.path for info in files)

    # --- running ----------------------------------------------------------------------

    @contextmanager
    def _session(
        self, output_path: str, plans: Sequence[_ViewPlan], entity_files: Sequence[str]
    ) -> Iterator[_Session]:
        output = _local(output_path)
        if output.is_dir():
            raise InvalidArgument("output_path", f"{output_path!r} is a directory")
        output.parent.mkdir(parents=True, exist_ok=True)
        # Staged beside the output so that the final rename stays on one filesystem.
        staging = output.parent / f".{output.name}.{uuid.uuid4().hex}.staging"
        staging.mkdir()
        scratch = Path(tempfile.mkdtemp(prefix="recstack-export-", dir=self._spill_parent()))
        readable = [_directory(self._layout.view_path(plan.schema)) for plan in plans]
        readable += sorted({_directory(str(Path(file).parent)) for file in entity_files})
        connection = self._connect(readable, staging, scratch)
        try:
            yield _Session(connection, staging)
        finally:
            connection.close()
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)

    def _spill_parent(self) -> str | None:
        return self._options.spill_directory or None

    def _connect(
        self, readable: list[str], staging: Path, scratch: Path
    ) -> duckdb.DuckDBPyConnection:
        """DuckDB that may read `readable`, write `staging` and spill to `scratch`, no more."""
        options = self._options
        writable = [_directory(str(staging)), _directory(str(scratch))]
        connection = duckdb.connect(
            ":memory:",
            config={
                "threads": options.threads,
                "memory_limit": options.memory_limit,
                "temp_directory": str(scratch),
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
            },
        )
        # Naive input timestamps are UTC, as the materialization engine reads them.
        connection.execute("SET TimeZone = 'UTC'")
        connection.execute(f"SET allowed_directories = {_list(readable + writable)}")
        connection.execute("SET enable_external_access = false")
        connection.execute("SET lock_configuration = true")
        return connection

    def _write(self, session: _Session, sql: str, output_path: str) -> ExportResult:
        staged = session.staging / "data.parquet"
        (count,) = session.connection.execute(
            f"COPY ({sql}) TO {_literal(str(staged))} "
            f"(FORMAT parquet, ROW_GROUP_SIZE {self._options.row_group_size})"
        ).fetchall()[0]
        staged.replace(_local(output_path))
        return ExportResult(output_path, int(count))


# --- validation -----------------------------------------------------------------------------


def _mode(request: ExportRequest) -> str:
    """The name of the one mode field the request sets."""
    modes = [
        name
        for name, value in (
            ("entity_parquet_path", request.entity_parquet_path),
            ("entity_table", request.entity_table),
            ("snapshot_time", request.snapshot_time),
            ("changes_window", request.changes_window),
        )
        if value
    ]
    if not modes:
        raise InvalidArgument(
            "entity_rows",
            "set entity_parquet_path or entity_table, or, without entity rows, "
            "snapshot_time or changes_window",
        )
    if len(modes) > 1:
        raise InvalidArgument(modes[1], f"set only one of {', '.join(modes)}")
    return modes[0]


def _project_of(model_feature_set: str) -> str:
    match = FEATURE_SET_NAME.match(model_feature_set)
    if not match:
        raise InvalidArgument(
            "model_feature_set",
            f"{quoted(model_feature_set)} is not "
            "`projects/{project}/modelFeatureSets/{model_feature_set}`",
        )
    return match.group(1)


def _require_output(output_path: str) -> None:
    if not output_path:
        raise InvalidArgument("output_path", "is required")
    if "://" in output_path and not output_path.startswith("file://"):
        raise InvalidArgument("output_path", "must be a local path")


def _features(schema: ViewSchema, features: list[str]) -> tuple[str, ...]:
    """The view's features asked for, in the view's order for `*`; the join key is no
    feature (a `view:*` ref expands to every field, the key included)."""
    names = [feature.name for feature in schema.features]
    chosen: list[str] = []
    for feature in features:
        if feature == "*":
            chosen += names
        elif feature == schema.join_key:
            continue
        elif feature not in names:
            raise FailedPrecondition(
                f"feature view {schema.name!r} v{schema.version} has no feature {feature!r}"
            )
        else:
            chosen.append(feature)
    return tuple(dict.fromkeys(chosen))


def _check_unique_columns(plans: Sequence[_ViewPlan]) -> None:
    seen: set[str] = set()
    for plan in plans:
        for feature in plan.features:
            column = plan.column(feature)
            if column in seen:
                raise FailedPrecondition(f"two features of the set would both be {column!r}")
            seen.add(column)


def _check_entity_columns(
    columns: dict[str, str],
    plans: Sequence[_ViewPlan],
    timestamp_column: str,
    label: str,
    source_field: str,
    session: _Session,
) -> None:
    ts_type = columns.get(timestamp_column)
    if ts_type is None:
        raise InvalidArgument("timestamp_column", f"the entity rows have no {timestamp_column!r}")
    if not (ts_type.startswith("TIMESTAMP") or ts_type == "DATE"):
        raise InvalidArgument(
            "timestamp_column", f"{timestamp_column!r} is {ts_type}, not a timestamp"
        )
    if label and label not in columns:
        raise InvalidArgument(source_field, f"the entity rows have no label column {label!r}")
    for plan in plans:
        _check_key(columns, plan, source_field, session)
    for name in columns:
        if name.startswith(RESERVED_PREFIX):
            raise InvalidArgument(source_field, f"column {name!r}: `{RESERVED_PREFIX}` is reserved")
        if any(name == plan.column(feature) for plan in plans for feature in plan.features):
            raise InvalidArgument(source_field, f"column {name!r} is also a feature column")


def _check_key(
    columns: dict[str, str], plan: _ViewPlan, source_field: str, session: _Session
) -> None:
    key = plan.schema.join_key
    if key not in columns:
        raise InvalidArgument(
            source_field, f"the entity rows have no key column {key!r} (of {plan.schema.name!r})"
        )
    stored = _describe(session.connection, _read(plan.files[:1]), "feature_view")
    if key not in stored or OFFLINE_TS not in stored:
        raise FailedPrecondition(f"offline data of {plan.schema.name!r} lacks {key!r}/event_ts")
    missing = [feature for feature in plan.features if feature not in stored]
    if missing:
        raise FailedPrecondition(f"offline data of {plan.schema.name!r} lacks {missing}")
    given, expected = columns[key], stored[key]
    if given != expected and not {given, expected} <= INTEGER_TYPES:
        raise InvalidArgument(
            source_field,
            f"key column {key!r} is {given}, but {plan.schema.name!r} keys are {expected}",
        )


def _entity_files(path: str) -> tuple[str, ...]:
    if not path:
        raise InvalidArgument("entity_parquet_path", "is required")
    local = path.removeprefix("file://")
    if "://" in local:
        raise InvalidArgument("entity_parquet_path", "must be a local path")
    target = Path(local).absolute()
    if GLOB_CHARS.search(local):
        parts = target.parts
        first = next(index for index, part in enumerate(parts) if GLOB_CHARS.search(part))
        matches = Path(*parts[:first]).glob(str(Path(*parts[first:])))
        files = sorted(str(file) for file in matches if file.is_file())
    elif target.is_dir():
        files = sorted(str(file) for file in target.rglob("*.parquet"))
    else:
        files = [str(target)] if target.is_file() else []
    if not files:
        raise InvalidArgument("entity_parquet_path", f"no Parquet file at {path!r}")
    return tuple(files)


def _describe(
    connection: duckdb.DuckDBPyConnection, relation: str, source_field: str
) -> dict[str, str]:
    try:
        rows = connection.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    except (duckdb.IOException, duckdb.InvalidInputException) as exc:
        raise InvalidArgument(source_field, f"cannot read the Parquet data: {exc}") from exc
    return {str(row[0]): str(row[1]) for row in rows}


# --- SQL ------------------------------------------------------------------------------------


def _labelled_sql(
    plans: Sequence[_ViewPlan], files: Sequence[str], columns: list[str], timestamp_column: str
) -> str:
    passthrough = ", ".join(_ident(column) for column in columns)
    ts = f"epoch_us({_ident(timestamp_column)})"
    entity = (
        f"SELECT {passthrough}, file_index::BIGINT * {FILE_SHIFT} + file_row_number AS __rs_row, "
        f"{ts} AS __rs_ts, {_probe(ts)} AS __rs_probe FROM {_read(files)}"
    )
    selected = ", ".join(f"e.{_ident(column)}" for column in columns)
    features = ", ".join(_feature_columns(plans))
    return (
        f"WITH {_view_ctes(plans)}, e AS ({entity}) "
        f"SELECT {selected}, {features} FROM e {_joins(plans)} ORDER BY e.__rs_row"
    )


def _snapshot_sql(plans: Sequence[_ViewPlan], at_us: int) -> str:
    """Per entity: keys with an event in [at - ttl, at] in any of its views, joined as of at."""

    def keys(plan: _ViewPlan) -> str:
        lower = f" AND __rs_ts >= {at_us - plan.ttl_us}" if plan.ttl_us > 0 else ""
        return f"SELECT __rs_key FROM {plan.alias} WHERE __rs_ts <= {at_us}{lower}"

    def entity(group: list[_ViewPlan]) -> str:
        union = " UNION ALL ".join(keys(plan) for plan in group)
        key = _ident(group[0].schema.join_key)
        return (
            f"SELECT DISTINCT __rs_key AS {key}, {at_us}::BIGINT AS __rs_ts, "
            f"{_probe(str(at_us))} AS __rs_probe FROM ({union})"
        )

    return _stacked_sql(plans, entity)


def _changes_sql(plans: Sequence[_ViewPlan], start_us: int, end_us: int) -> str:
    """Per entity: each distinct (key, event time) in [start, end) of any of its views."""

    def entity(group: list[_ViewPlan]) -> str:
        union = " UNION ALL ".join(
            f"SELECT __rs_key, __rs_ts FROM {plan.alias} "
            f"WHERE __rs_ts >= {start_us} AND __rs_ts < {end_us}"
            for plan in group
        )
        key = _ident(group[0].schema.join_key)
        return (
            f"SELECT __rs_key AS {key}, __rs_ts, {_probe('__rs_ts')} AS __rs_probe "
            f"FROM (SELECT DISTINCT __rs_key, __rs_ts FROM ({union}))"
        )

    return _stacked_sql(plans, entity)


def _stacked_sql(plans: Sequence[_ViewPlan], entity: Any) -> str:
    """Join each entity's rows with its own views and stack the entities by column name."""
    groups: dict[str, list[_ViewPlan]] = {}
    for plan in plans:
        groups.setdefault(plan.schema.join_key, []).append(plan)
    parts = []
    for index, (key, group) in enumerate(groups.items()):
        features = ", ".join(_feature_columns(group))
        parts.append(
            f"SELECT {index} AS __rs_group, e.{_ident(key)}, "
            f"make_timestamp(e.__rs_ts)::TIMESTAMPTZ AS {_ident(OFFLINE_TS)}, {features} "
            f"FROM ({entity(group)}) AS e {_joins(group)}"
        )
    keys = [_ident(key) for key in groups]
    columns = [*keys, _ident(OFFLINE_TS)]
    columns += [_ident(plan.column(feature)) for plan in plans for feature in plan.features]
    order = ", ".join(["__rs_group", _ident(OFFLINE_TS), *keys])
    stacked = " UNION ALL BY NAME ".join(f"({part})" for part in parts)
    return f"WITH {_view_ctes(plans)} SELECT {', '.join(columns)} FROM ({stacked}) ORDER BY {order}"


def _view_ctes(plans: Sequence[_ViewPlan]) -> str:
    return ", ".join(f"{plan.alias} AS ({_view_sql(plan)})" for plan in plans)


def _view_sql(plan: _ViewPlan) -> str:
    ts = f"epoch_us({_ident(OFFLINE_TS)})"
    position = (
        f"{ts}::HUGEINT * {TIME_SHIFT} + file_index::HUGEINT * {FILE_SHIFT} + file_row_number"
    )
    features = "".join(f", {_ident(feature)}" for feature in plan.features)
    return (
        f"SELECT {_ident(plan.schema.join_key)} AS __rs_key, {ts} AS __rs_ts, "
        f"{position} AS __rs_pos{features} FROM {_read(plan.files)}"
    )


def _joins(plans: Sequence[_ViewPlan]) -> str:
    return " ".join(
        f"ASOF LEFT JOIN {plan.alias} ON e.{_ident(plan.schema.join_key)} = {plan.alias}.__rs_key "
        f"AND e.__rs_probe >= {plan.alias}.__rs_pos"
        for plan in plans
    )


def _feature_columns(plans: Sequence[_ViewPlan]) -> list[str]:
    columns = []
    for plan in plans:
        for feature in plan.features:
            value = f"{plan.alias}.{_ident(feature)}"
            if plan.ttl_us > 0:
                value = (
                    f"CASE WHEN e.__rs_ts - {plan.alias}.__rs_ts <= {plan.ttl_us} THEN {value} END"
                )
            columns.append(f"{value} AS {_ident(plan.column(feature))}")
    return columns


def _probe(micros: str) -> str:
    """The greatest position at time `micros`: every event at that time is eligible."""
    return f"({micros})::HUGEINT * {TIME_SHIFT} + {TIME_SHIFT - 1}"


def _read(files: Sequence[str]) -> str:
    return f"read_parquet({_list(files)})"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_literal(item) for item in items) + "]"


def _directory(path: str) -> str:
    # DuckDB's allowed_directories are prefixes: the slash stops `/a/b` admitting `/a/bc`.
    return str(Path(path).absolute()).rstrip("/") + "/"


def _local(path: str) -> Path:
    return Path(path.removeprefix("file://")).absolute()


def _as_uri(path: str) -> str:
    return path if "://" in path else str(Path(path).absolute())


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
