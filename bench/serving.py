"""`make bench-serving`: online feature serving next to the bare limits it stands on.

One run, on this machine, against its own scratch database:
- the real registry and serving services start as processes; the load generator
  (`bench.serving_load`) is a third process;
- 100,000 entities x 20 DOUBLE features are loaded into one view, and the same values split
  over 5 views of 4 features;
- latency (p50/p99, nearest rank, interleaved blocks): `get_1`, `get_100`, `get_1_5views`
  through gRPC; `echo` (bare gRPC unary echo server, same gRPC settings), `pk_lookup` (bare
  prepared binary primary-key lookup) and `any_100` (bare binary `= ANY` of 100 keys);
- the floor the targets compare with, the bare composition of those limits: `echo_pk`,
  `echo_any_100` and `echo_pk_c8`, a bare gRPC server (same settings) whose handler runs the
  bare lookup;
- what the response contract itself costs: `echo_pk_answering` and `echo_any_100_answering`,
  the same bare servers answering with serving's own response bytes for those keys, which the
  client parses (not targets: the floor of a read that carries serving's answer);
- throughput with 8 clients, each on its own connection: `get_1_c8` against `echo_pk_c8` (and
  `echo_c8`), one process each; `get_1_c8_wN` (serving with RECSTACK_WORKERS=N) against
  `echo_pk_c8_wN` (the bare echo_pk server as N processes on one port, SO_REUSEPORT), N the
  cores this process may use (`--workers`). Each also carries p50/p99 per call and where the
  machine's CPU went meanwhile (share of cores busy; client, server and other CPU per call),
  and the serving ones how many of the 8 connections each worker got;
- `bulk_load` (1,000,000 rows x 20 features into an empty table through the bulk path) against
  `copy` (a bare binary COPY of the same rows into an unindexed table), plus `bulk_upsert`
  (the same keys again, newer events, into the full table).

Prints a table and one JSON object, also written to bench/results/serving.json.

    python -m bench.serving [--quick] [--workers N] [--threads N] [--skip-bulk]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from google.protobuf import duration_pb2
from psycopg import sql
from recstack.common.v1 import value_pb2
from recstack.registry.v1 import (
    entity_pb2,
    feature_view_pb2,
    project_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as rpb

from bench.harness import (
    REPO_ROOT,
    RESULTS_DIR,
    latency_figure,
    print_table,
    scratch_database,
    service_process,
    wait_port,
    wait_serving,
    write_result,
)
from bench.serving_load import Spec
from infra.local.ports import free_port
from shared.channels import open_channel
from shared.db import to_libpq
from shared.feature_views import Feature, ViewSchema
from shared.online_store.binary_copy import TIMESTAMP_US, BinaryCopyEncoder
from shared.online_store.postgres import PostgresOnlineStore
from shared.registry_client import RegistryClient
from shared.settings import available_cores

PROJECT = "bench"
FEATURES = [f"f{i:02d}" for i in range(20)]
SPLIT_VIEWS = 5
VT = value_pb2.ValueType
FV = feature_view_pb2.FeatureView
TARGETS = {
    "get_1_vs_echo_pk": "<= 1.25",
    "get_1_p99_vs_echo_pk_p99": "<= 1.5",
    "get_100_vs_echo_any_100": "<= 1.25",
    "get_1_c8_vs_echo_pk_c8": ">= 0.8",
    "get_1_c8_wN_vs_echo_pk_c8_wN": ">= 0.8",
    "workers_speedup": ">= 1.5",
    "get_1_5views_vs_get_1": "<= 1.3",
    "bulk_load_vs_copy": ">= 0.5",
}
LOG_DIR = RESULTS_DIR / "logs"


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"entities": 10_000, "bulk_rows": 100_000, "bulk_rounds": 1, "warmup": 100,
                "blocks": 2, "calls_per_block": 100, "concurrent_blocks": 1,
                "concurrent_seconds": 1.0}  # fmt: skip
    return {"entities": 100_000, "bulk_rows": 1_000_000, "bulk_rounds": 2, "warmup": 300,
            "blocks": 10, "calls_per_block": 250, "concurrent_blocks": 4,
            "concurrent_seconds": 2.5}  # fmt: skip


# --- definitions and data ----------------------------------------------------------------------


def define_views(registry_address: str) -> None:
    with open_channel(registry_address) as channel:
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        stub.CreateProject(
            rpb.CreateProjectRequest(project_id=PROJECT, project=project_pb2.Project())
        )
        stub.CreateEntity(
            rpb.CreateEntityRequest(
                parent=f"projects/{PROJECT}",
                entity_id="user",
                entity=entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64),
            )
        )
        per_view = len(FEATURES) // SPLIT_VIEWS
        views = {"wide": FEATURES, "bulk": FEATURES}
        for index in range(SPLIT_VIEWS):
            views[f"part{index}"] = FEATURES[index * per_view : (index + 1) * per_view]
        for view_id, features in views.items():
            fields = [("user_id", VT.VALUE_TYPE_INT64)]
            fields += [(name, VT.VALUE_TYPE_DOUBLE) for name in features]
            stub.CreateFeatureView(
                rpb.CreateFeatureViewRequest(
                    parent=f"projects/{PROJECT}",
                    feature_view_id=view_id,
                    feature_view=FV(
                        entity="user",
                        type=FV.TYPE_REAL_TIME,
                        ttl=duration_pb2.Duration(seconds=7 * 86_400),
                        fields=[
                            feature_view_pb2.FeatureField(name=name, value_type=value_type)
                            for name, value_type in fields
                        ],
                    ),
                )
            )


def feature_table(rows: int, seed: int, *, shuffled: bool, age_s: float = 3600) -> pa.Table:
    """`rows` entities x 20 doubles with event times in the last `age_s` seconds."""
    rng = np.random.default_rng(seed)
    keys = rng.permutation(rows) if shuffled else np.arange(rows)
    now = int(datetime.now(UTC).timestamp() * 1_000_000)
    event_us = now - rng.integers(0, int(age_s * 1_000_000), rows)
    columns = {"user_id": pa.array(keys.astype(np.int64))}
    columns |= {name: pa.array(rng.random(rows)) for name in FEATURES}
    columns["event_ts"] = pa.array(event_us, type=pa.int64()).cast(TIMESTAMP_US)
    return pa.table(columns)


def load_read_data(
    store: PostgresOnlineStore, registry: RegistryClient, entities: int, conninfo: str
) -> None:
    data = feature_table(entities, seed=1, shuffled=False)
    store.bulk_load(registry.view_schema(PROJECT, "wide"), data)
    per_view = len(FEATURES) // SPLIT_VIEWS
    for index in range(SPLIT_VIEWS):
        names = FEATURES[index * per_view : (index + 1) * per_view]
        part = data.select(["user_id", *names, "event_ts"])
        store.bulk_load(registry.view_schema(PROJECT, f"part{index}"), part)
    # Fresh tables: visibility map and statistics as a long-running database would have them.
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


# --- phases ----------------------------------------------------------------------------------


def measure_serving(
    url: str, sizes: dict[str, Any], workers: int, threads: int | None = None
) -> dict[str, Any]:
    """Start registry, serving and echo (one process each, and `workers` processes each on
    another port), with `threads` request threads per process (None: the default); load; run
    the load generator; return its figures."""
    # Serving and the bare servers alike: the floor keeps the same gRPC settings.
    threads_env = {} if threads is None else {"RECSTACK_MAX_WORKERS": str(threads)}
    serving_env = {"RECSTACK_DATABASE_URL": url, **threads_env}
    with read_environment(url, sizes["entities"]) as (registry_address, wide), ExitStack() as stack:
        servers: dict[str, tuple[str, list[int]]] = {}
        for name, count in (("serving", 1), ("serving_wn", workers)):
            servers[name] = start_serving(stack, name, serving_env, registry_address, count)
        for name, count in (("echo", 1), ("echo_wn", workers)):
            servers[name] = start_echo(stack, name, echo_arguments(url, wide), count, threads_env)
        spec = _spec(url, wide, servers, workers, sizes)
        return _run_load_generator(spec)


@contextmanager
def read_environment(url: str, entities: int) -> Iterator[tuple[str, ViewSchema]]:
    """The registry running with the bench's views defined and `entities` rows loaded into
    them: its address, and the one-view ("wide") schema."""
    registry_port = free_port()
    registry_address = f"127.0.0.1:{registry_port}"
    with service_process(
        "services.registry.server",
        {"RECSTACK_DATABASE_URL": url, "RECSTACK_GRPC_PORT": str(registry_port)},
        LOG_DIR / "serving-registry.log",
    ) as registry_process:
        wait_serving(registry_address, registry_process)
        define_views(registry_address)
        registry = RegistryClient(registry_address)
        store = PostgresOnlineStore(to_libpq(url), min_size=1, max_size=2)
        try:
            load_read_data(store, registry, entities, to_libpq(url))
            wide = registry.view_schema(PROJECT, "wide")
        finally:
            store.close()
            registry.close()
        yield registry_address, wide


def echo_arguments(url: str, wide: ViewSchema) -> list[str]:
    """`bench.echo_server`'s database arguments: its lookup reads the wide view's table."""
    return [to_libpq(url), f"online.{wide.table_name}", "user_id", ",".join(FEATURES)]


def start_serving(
    stack: ExitStack,
    name: str,
    base_env: dict[str, str],
    registry_address: str,
    workers: int,
    module: str = "services.serving.server",
) -> tuple[str, list[int]]:
    """A serving service of `workers` processes (started as `module`); its address and
    serving pids, once every worker has started."""
    port = free_port()
    env = {
        **base_env,
        "RECSTACK_GRPC_PORT": str(port),
        "RECSTACK_REGISTRY_ADDR": registry_address,
        "RECSTACK_WORKERS": str(workers),
    }
    log_path = LOG_DIR / f"serving-{name}.log"
    process = stack.enter_context(service_process(module, env, log_path))
    address = f"127.0.0.1:{port}"
    wait_serving(address, process)
    deadline = time.monotonic() + 60
    while log_path.read_text().count('"server_started"') < workers:
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"{name}: {workers} workers did not start (see {log_path})")
        time.sleep(0.1)
    return address, _serving_pids(process.pid, workers)


def start_echo(
    stack: ExitStack, name: str, echo_args: list[str], workers: int, env: dict[str, str]
) -> tuple[str, list[int]]:
    port = free_port()
    process = stack.enter_context(
        service_process(
            "bench.echo_server",
            env,
            LOG_DIR / f"serving-{name}.log",
            args=["--workers", str(workers), str(port), *echo_args],
        )
    )
    address = f"127.0.0.1:{port}"
    wait_port(address)
    deadline = time.monotonic() + 30
    while len(pids := _serving_pids(process.pid, workers)) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {workers} processes did not start")
        time.sleep(0.1)
    return address, pids


def _serving_pids(pid: int, workers: int) -> list[int]:
    """The process itself, or with several workers the supervisor and its children."""
    if workers == 1:
        return [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)] if len(children) >= workers else []


def _spec(
    url: str,
    wide: ViewSchema,
    servers: dict[str, tuple[str, list[int]]],
    workers: int,
    sizes: dict[str, Any],
) -> Spec:
    per_view = len(FEATURES) // SPLIT_VIEWS
    return Spec(
        serving=servers["serving"][0],
        echo=servers["echo"][0],
        serving_wn=servers["serving_wn"][0],
        echo_wn=servers["echo_wn"][0],
        workers=workers,
        server_pids={name: pids for name, (_address, pids) in servers.items()},
        conninfo=to_libpq(url),
        project=PROJECT,
        table=f"online.{wide.table_name}",
        key_column="user_id",
        columns=FEATURES,
        wide_refs=[f"wide:{name}" for name in FEATURES],
        split_refs=[f"part{i // per_view}:{name}" for i, name in enumerate(FEATURES)],
        entities=sizes["entities"],
        warmup=sizes["warmup"],
        blocks=sizes["blocks"],
        calls_per_block=sizes["calls_per_block"],
        clients=8,
        concurrent_blocks=sizes["concurrent_blocks"],
        concurrent_seconds=sizes["concurrent_seconds"],
    )


def _run_load_generator(spec: Spec) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="recstack-bench-") as scratch:
        spec_path, out_path = Path(scratch) / "spec.json", Path(scratch) / "out.json"
        spec_path.write_text(json.dumps(asdict(spec)))
        subprocess.run(
            [sys.executable, "-m", "bench.serving_load", str(spec_path), str(out_path)],
            cwd=REPO_ROOT,
            check=True,
            timeout=420,
        )
        result = json.loads(out_path.read_text())
    figures: dict[str, Any] = {
        name: latency_figure(samples) for name, samples in result["latency"].items()
    }
    figures |= result["concurrent"]
    return figures


def measure_bulk(url: str, rows: int, rounds: int) -> dict[str, Any]:
    """Bare COPY vs the bulk path, interleaved; a CHECKPOINT before each so neither pays for
    the other's dirty pages."""
    conninfo = to_libpq(url)
    registry_view = _bulk_view()
    first = feature_table(rows, seed=2, shuffled=True)
    newer = first.set_column(
        first.schema.get_field_index("event_ts"),
        "event_ts",
        pa.array(first.column("event_ts").to_numpy() + np.timedelta64(1, "s"), type=TIMESTAMP_US),
    )
    timings: dict[str, list[float]] = {"copy": [], "bulk_load": [], "bulk_upsert": []}
    store = PostgresOnlineStore(conninfo, min_size=1, max_size=2)
    try:
        for _ in range(rounds):
            timings["copy"].append(_bare_copy(conninfo, first))
            store.drop_table(registry_view)
            store.ensure_table(registry_view)
            _checkpoint(conninfo)
            timings["bulk_load"].append(_timed_load(store, registry_view, first, rows))
            _checkpoint(conninfo)
            timings["bulk_upsert"].append(_timed_load(store, registry_view, newer, rows))
    finally:
        store.close()
    return {
        name: {"rows_per_s": round(rows * len(seconds) / sum(seconds)), "rows": rows}
        for name, seconds in timings.items()
    }


def _bulk_view() -> ViewSchema:
    features = tuple(Feature(name, VT.VALUE_TYPE_DOUBLE) for name in FEATURES)
    return ViewSchema(PROJECT, "bulk", 1, "user_id", VT.VALUE_TYPE_INT64, features)


def _timed_load(store: PostgresOnlineStore, view: ViewSchema, data: pa.Table, rows: int) -> float:
    started = time.perf_counter()
    result = store.bulk_load(view, data)
    elapsed = time.perf_counter() - started
    assert result.written == rows, f"bulk load wrote {result.written} of {rows} rows"
    return elapsed


def _bare_copy(conninfo: str, data: pa.Table) -> float:
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type))
        for name, pg_type in [
            ("user_id", "bigint"),
            *((name, "double precision") for name in FEATURES),
            ("event_ts", "timestamptz"),
        ]
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute(sql.SQL("CREATE TABLE bench_copy ({})").format(columns))
        _checkpoint(conninfo)
        started = time.perf_counter()
        with (
            conn.transaction(),
            conn.cursor().copy("COPY bench_copy FROM STDIN (FORMAT BINARY)") as copy,
        ):
            for chunk in BinaryCopyEncoder(data.columns).chunks():
                copy.write(chunk)
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE bench_copy")
    return elapsed


def _checkpoint(conninfo: str) -> None:
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        pass


# --- ratios and main ---------------------------------------------------------------------------


def ratios(figures: dict[str, Any]) -> dict[str, float]:
    def p50(name: str) -> float:
        return float(figures[name]["p50_ms"])

    def p99(name: str) -> float:
        return float(figures[name]["p99_ms"])

    def per_s(name: str) -> float:
        return float(figures[name]["per_s"])

    return {
        # The targets: against the bare composed servers (a bare gRPC server whose handler
        # runs the bare lookup), one process each or `workers` processes each.
        "get_1_vs_echo_pk": p50("get_1") / p50("echo_pk"),
        "get_1_p99_vs_echo_pk_p99": p99("get_1") / p99("echo_pk"),
        "get_100_vs_echo_any_100": p50("get_100") / p50("echo_any_100"),
        "get_1_c8_vs_echo_pk_c8": per_s("get_1_c8") / per_s("echo_pk_c8"),
        "get_1_c8_wN_vs_echo_pk_c8_wN": per_s("get_1_c8_wN") / per_s("echo_pk_c8_wN"),
        "workers_speedup": per_s("get_1_c8_wN") / per_s("get_1_c8"),
        "get_1_5views_vs_get_1": p50("get_1_5views") / p50("get_1"),
        "bulk_load_vs_copy": figures["bulk_load"]["rows_per_s"] / figures["copy"]["rows_per_s"],
        # Not targets. What the bare servers gain from `workers` processes, and the earlier
        # comparisons with the sum of the limits measured apart, which even the bare composed
        # server misses (echo_pk_vs_limit).
        "echo_pk_workers_speedup": per_s("echo_pk_c8_wN") / per_s("echo_pk_c8"),
        "get_1_c8_vs_echo_c8": per_s("get_1_c8") / per_s("echo_c8"),
        "get_1_vs_limit": p50("get_1") / (p50("echo") + p50("pk_lookup")),
        "get_100_vs_limit": p50("get_100") / (p50("echo") + p50("any_100")),
        "echo_pk_vs_limit": p50("echo_pk") / (p50("echo") + p50("pk_lookup")),
        "echo_any_100_vs_limit": p50("echo_any_100") / (p50("echo") + p50("any_100")),
        # Against the bare servers that also carry serving's response bytes.
        "get_1_vs_echo_pk_answering": p50("get_1") / p50("echo_pk_answering"),
        "get_100_vs_echo_any_100_answering": p50("get_100") / p50("echo_any_100_answering"),
    }


def _without_bulk(figures: dict[str, Any]) -> dict[str, float]:
    stand_in = {"rows_per_s": float("nan")}
    computed = ratios({**figures, "bulk_load": stand_in, "copy": stand_in})
    computed.pop("bulk_load_vs_copy")
    return computed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--workers",
        type=int,
        default=available_cores(),
        help="processes of the wN variants (default: the cores this process may use)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="request threads per server process, serving and bare servers alike "
        "(RECSTACK_MAX_WORKERS; default: the services' default)",
    )
    parser.add_argument(
        "--skip-bulk", action="store_true", help="leave out bulk_load/copy (and their ratio)"
    )
    args = parser.parse_args(argv)
    sizes = _sizes(args.quick)
    started = time.monotonic()
    with scratch_database("recstack_bench") as url:
        figures = measure_serving(url, sizes, args.workers, args.threads)
        if not args.skip_bulk:
            figures |= measure_bulk(url, sizes["bulk_rows"], sizes["bulk_rounds"])
    computed = ratios(figures) if not args.skip_bulk else _without_bulk(figures)
    order = ["get_1", "get_100", "get_1_5views", "echo", "pk_lookup", "any_100", "echo_pk",
             "echo_any_100", "echo_pk_answering", "echo_any_100_answering", "get_1_c8",
             "echo_c8", "echo_pk_c8", "get_1_c8_wN", "echo_pk_c8_wN", "bulk_load", "copy",
             "bulk_upsert"]  # fmt: skip
    figures = {name: figures[name] for name in order if name in figures}
    extra = {
        "seconds": round(time.monotonic() - started, 1),
        "quick": args.quick,
        "workers": args.workers,
        "threads": args.threads,
    }
    path = write_result("serving", figures, computed, TARGETS, extra)
    print_table(figures, computed, TARGETS)
    print(path.read_text())


if __name__ == "__main__":
    main()
