"""The local engine's DuckDB queries: source rows in, the view's rows (key, features, event_ts) out.

On one connection the engine registers `raw` (the source as read) and, for an incremental
publish, `excluded` (keys to skip); this module writes the rest. `source` is `raw` limited to
[window start - lookback, window end) with the event time as TIMESTAMPTZ in UTC: it is what a
SQL transformation selects from. The output query keeps only rows inside the window, so
lookback rows feed aggregates without being stored.

Windowed aggregations are window functions over each key's events ordered by time with a RANGE
frame: the value at an event time t covers the key's events in (t - W, t]. Events at exactly t
are peers of the current row in a RANGE frame, so they are all included, and no event after t
ever is: the value is point-in-time correct whatever the row order. Results that are lists or
maps are ordered by value where times tie, so they do not depend on the row order either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from services.materialization.jobs import (
    Aggregation,
    AggregationFunction,
    SqlTransformation,
    Transformation,
    Window,
    WindowedAggregations,
)
from shared.errors import FailedPrecondition
from shared.feature_views import ViewSchema
from shared.values import TYPES

EVENT_TS = "event_ts"
EVENT_TS_TYPE = pa.timestamp("us", tz="UTC")
MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Plan:
    """How one transformation reads `source`.

    `select(schema)` is the query over `source` whose columns are `schema` (some aggregates
    depend on a column's type); it yields the key, the features and the source's event
    timestamp column. `columns` are the source columns it needs (None: all of them);
    `rescans` says whether it may read `source` more than once (a one-shot source is then
    staged in DuckDB first).
    """

    select: Callable[[pa.Schema], str]
    columns: tuple[str, ...] | None
    lookback: timedelta
    rescans: bool


def plan(view: ViewSchema, transformation: Transformation | None, ts: str) -> Plan:
    return _PLANNERS[type(transformation)](view, transformation, ts)


def _plan_none(view: ViewSchema, _: None, ts: str) -> Plan:
    columns = (view.join_key, *(feature.name for feature in view.features), ts)
    select = f"SELECT {_columns(columns)} FROM source"
    return Plan(lambda _: select, columns, timedelta(0), rescans=False)


def _plan_sql(view: ViewSchema, transformation: SqlTransformation, ts: str) -> Plan:
    select = transformation.sql.strip().rstrip(";").strip()
    return Plan(lambda _: select, None, transformation.lookback, rescans=True)


def _plan_aggregations(view: ViewSchema, transformation: WindowedAggregations, ts: str) -> Plan:
    aggregations = transformation.aggregations
    outputs = {aggregation.output for aggregation in aggregations}
    # Features no aggregation produces are the source's values at the event itself.
    passthrough = [feature.name for feature in view.features if feature.name not in outputs]
    windows = {length: f"w{i}" for i, length in enumerate(sorted({a.window for a in aggregations}))}
    frames = [f"{name} AS ({_frame(view.join_key, ts, span)})" for span, name in windows.items()]

    def select(schema: pa.Schema) -> str:
        expressions = [
            f"{_aggregate(a, quote(ts), windows[a.window], schema)} AS {quote(a.output)}"
            for a in aggregations
        ]
        return (
            f"SELECT {_columns([view.join_key, *passthrough])}, {', '.join(expressions)}, "
            f"{quote(ts)} FROM source WINDOW {', '.join(frames)}"
        )

    needed = [view.join_key, *passthrough, *(a.column for a in aggregations if a.column != "*"), ts]
    lookback = max(aggregation.window for aggregation in aggregations)
    return Plan(select, tuple(dict.fromkeys(needed)), lookback, rescans=False)


def _frame(key: str, ts: str, length: timedelta) -> str:
    # RANGE n PRECEDING includes t - n; one microsecond less makes the window (t - W, t].
    preceding = (length - MICROSECOND) // MICROSECOND
    return (
        f"PARTITION BY {quote(key)} ORDER BY {quote(ts)} "
        f"RANGE BETWEEN INTERVAL '{preceding} microseconds' PRECEDING AND CURRENT ROW"
    )


def _aggregate(aggregation: Aggregation, ts: str, window: str, schema: pa.Schema) -> str:
    column = "*" if aggregation.column == "*" else quote(aggregation.column)
    if aggregation.function is AggregationFunction.COUNT_BY_VALUE:
        return _count_by_value(column, window, _is_list(schema.field(aggregation.column).type))
    if aggregation.function is AggregationFunction.LAST_N:
        # The n values with the latest event times, newest first; ties on time are broken by
        # value so that the result does not depend on the order rows were read in.
        return (
            f"coalesce(max_by({column}, {{'t': {ts}, 'v': {column}}}, {aggregation.n}) "
            f"FILTER (WHERE {column} IS NOT NULL) OVER {window}, [])"
        )
    return f"{aggregation.function.value.lower()}({column}) OVER {window}"


def _count_by_value(column: str, window: str, listed: bool) -> str:
    """Occurrences of each distinct value in the frame, as MAP(VARCHAR, DOUBLE).

    A list column's frame is the concatenation of its rows' lists (`flatten` drops null
    lists, `histogram` null elements). `histogram` builds its map in value order, so equal
    frames give equal maps whatever order the rows came in; values become text and counts
    DOUBLE, the MAP<STRING,DOUBLE> type the registry requires of the output field.
    """
    if listed:
        values = f"CAST(flatten(list({column}) OVER {window}) AS VARCHAR[])"
        counts = f"list_aggregate({values}, 'histogram')"
    else:
        counts = f"histogram(CAST({column} AS VARCHAR)) OVER {window}"
    # An empty frame (no values, or only nulls) counts nothing: an empty map, not null.
    return f"coalesce(CAST({counts} AS MAP(VARCHAR, DOUBLE)), MAP {{}})"


_PLANNERS: dict[type, Callable[[ViewSchema, Any, str], Plan]] = {
    type(None): _plan_none,
    SqlTransformation: _plan_sql,
    WindowedAggregations: _plan_aggregations,
}


def source_sql(schema: pa.Schema, ts: str, span: Window) -> str:
    """`raw` rows in `span`, the event time normalized to TIMESTAMPTZ (naive times are UTC)."""
    raw_type = schema.field(ts).type
    normalized = f"CAST({quote(ts)} AS TIMESTAMPTZ)"
    if pa.types.is_timestamp(raw_type) and raw_type.tz is None:
        # Compare the column as stored, so the bounds reach the Parquet row-group statistics.
        bounded, literal = quote(ts), _naive
    elif pa.types.is_timestamp(raw_type) and raw_type.unit != "ns":
        # DuckDB compares TIMESTAMPTZ_NS with no other type, so those are normalized first.
        bounded, literal = quote(ts), _zoned
    elif pa.types.is_timestamp(raw_type) or pa.types.is_date(raw_type) or _is_text(raw_type):
        bounded, literal = normalized, _zoned
    else:
        raise FailedPrecondition(
            f"event timestamp column {ts!r} is {raw_type}; expected a timestamp, a date or "
            "ISO-8601 text"
        )
    return (
        f"SELECT * REPLACE ({normalized} AS {quote(ts)}) FROM raw "
        f"WHERE {bounded} >= {literal(span.start)} AND {bounded} < {literal(span.end)}"
    )


def output_sql(
    view: ViewSchema,
    select: str,
    ts: str,
    window: Window,
    *,
    exclude: bool,
    computed: frozenset[str] = frozenset(),
) -> str:
    """The view's rows of `select` with event times in `window` and a key.

    `computed` features are not read from `select`: they come out NULL, for the engine to fill
    (embeddings of another field).
    """
    key = f"t.{quote(view.join_key)}"
    event_ts = f"CAST(t.{quote(ts)} AS TIMESTAMPTZ)"
    conditions = [
        f"{event_ts} >= {_zoned(window.start)}",
        f"{event_ts} < {_zoned(window.end)}",
        # A row without a key describes no entity; neither store can hold it.
        f"{key} IS NOT NULL",
    ]
    if exclude:
        conditions.append(
            f"NOT EXISTS (SELECT 1 FROM excluded AS e WHERE e.{quote(view.join_key)} = {key})"
        )
    columns = ", ".join(
        [
            f"t.{quote(view.join_key)}",
            *(
                # Produced fields are FLOAT_LIST (the registry checks it).
                f"CAST(NULL AS FLOAT[]) AS {quote(f.name)}"
                if f.name in computed
                else f"t.{quote(f.name)}"
                for f in view.features
            ),
        ]
    )
    return (
        f"SELECT {columns}, {event_ts} AS {EVENT_TS} FROM ({select}) AS t "
        f"WHERE {' AND '.join(conditions)}"
    )


def without(view: ViewSchema, computed: frozenset[str]) -> ViewSchema:
    """The view as its transformation sees it: without the features the engine computes."""
    if not computed:
        return view
    return replace(view, features=tuple(f for f in view.features if f.name not in computed))


def output_columns(view: ViewSchema, ts: str) -> list[str]:
    """The columns a transformation's `select` must yield."""
    return [view.join_key, *(feature.name for feature in view.features), ts]


def output_schema(view: ViewSchema) -> pa.Schema:
    return pa.schema(
        [
            (view.join_key, TYPES[view.key_type].arrow),
            *((feature.name, TYPES[feature.value_type].arrow) for feature in view.features),
            (EVENT_TS, EVENT_TS_TYPE),
        ]
    )


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns(names: Iterable[str], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{quote(name)}" for name in names)


def _is_list(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
        or pa.types.is_list_view(arrow_type)
        or pa.types.is_large_list_view(arrow_type)
    )


def _is_text(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_string_view(arrow_type)
    )


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _zoned(moment: datetime) -> str:
    return f"TIMESTAMPTZ '{_utc(moment).isoformat(sep=' ', timespec='microseconds')}'"


def _naive(moment: datetime) -> str:
    naive = _utc(moment).replace(tzinfo=None)
    return f"TIMESTAMP '{naive.isoformat(sep=' ', timespec='microseconds')}'"
