"""Load generator of `bench.serving`, run as its own process: never inside a server under test.

Latency variants run in interleaved blocks (their order rotating each block) over the same
random keys, so they share the machine's noise; concurrency variants alternate in blocks too.

    python -m bench.serving_load SPEC.json RESULT.json
"""

from __future__ import annotations

import array
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from recstack.common.v1 import value_pb2
from recstack.serving.v1 import serving_service_pb2 as pb
from recstack.serving.v1 import serving_service_pb2_grpc

from bench.echo_server import ECHO, LOOKUP, LOOKUP_ANSWERING, SET_ANSWER, lookup_statements
from bench.harness import nearest_rank
from shared.channels import ClientSettings, open_channel

Call = Callable[[Any], object]
# Separate subchannel pools give each client its own TCP connection, like separate clients.
CLIENT_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
# Calls state their deadlines: no interceptor sits between the load and the measured servers.
BARE = ClientSettings(timeout_seconds=None)


@dataclass(frozen=True)
class Spec:
    serving: str
    echo: str
    # The same servers as `workers` processes on one port each (SO_REUSEPORT).
    serving_wn: str
    echo_wn: str
    workers: int
    # Per server above: the pids of its serving processes (CPU accounting).
    server_pids: dict[str, list[int]]
    conninfo: str
    project: str
    table: str
    key_column: str
    columns: list[str]
    wide_refs: list[str]
    split_refs: list[str]
    entities: int
    warmup: int
    blocks: int
    calls_per_block: int
    clients: int
    concurrent_blocks: int
    concurrent_seconds: float
    seed: int = 7


def _packed(keys: list[int]) -> bytes:
    return array.array("q", keys).tobytes()


def _key(value: int) -> value_pb2.Value:
    return value_pb2.Value(int64_value=value)


def _request(spec: Spec, refs: Sequence[str], keys: Sequence[int]) -> pb.GetOnlineFeaturesRequest:
    return pb.GetOnlineFeaturesRequest(
        project=spec.project, features=list(refs), entity_keys=[_key(k) for k in keys]
    )


class Clients:
    """One connection of each kind, and a call per latency variant."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self._serving = open_channel(spec.serving, BARE, options=CLIENT_OPTIONS)
        self._echo = open_channel(spec.echo, BARE, options=CLIENT_OPTIONS)
        self.stub = serving_service_pb2_grpc.FeatureServingServiceStub(self._serving)
        self.echo = self._echo.unary_unary(ECHO)
        self.lookup = self._echo.unary_unary(LOOKUP)
        # Parses its answer (serving's response bytes) as a serving client does.
        self.lookup_answering = self._echo.unary_unary(
            LOOKUP_ANSWERING, response_deserializer=pb.GetOnlineFeaturesResponse.FromString
        )
        self._set_answer = self._echo.unary_unary(SET_ANSWER)
        self._db = psycopg.connect(spec.conninfo, autocommit=True, prepare_threshold=0)
        self._cursor = self._db.cursor(binary=True)
        self._pk, self._any = lookup_statements(self._db, spec.table, spec.key_column, spec.columns)

    def close(self) -> None:
        self._serving.close()
        self._echo.close()
        self._db.close()

    def variants(self) -> dict[str, tuple[int, Callable[[list[int]], Any], Call]]:
        """name → (keys per call, request builder, call); builders run outside the timing."""
        spec = self.spec
        one = spec.wide_refs
        return {
            "get_1": (1, lambda keys: _request(spec, one, keys), self.stub.GetOnlineFeatures),
            "get_100": (100, lambda keys: _request(spec, one, keys), self.stub.GetOnlineFeatures),
            "get_1_5views": (
                1,
                lambda keys: _request(spec, spec.split_refs, keys),
                self.stub.GetOnlineFeatures,
            ),
            "echo": (1, lambda keys: _request(spec, one, keys).SerializeToString(), self.echo),
            "pk_lookup": (1, lambda keys: keys[0], self._pk_lookup),
            "any_100": (100, lambda keys: keys, self._any_lookup),
            "echo_pk": (1, _packed, self.lookup),
            "echo_any_100": (100, _packed, self.lookup),
            "echo_pk_answering": (1, _packed, self.lookup_answering),
            "echo_any_100_answering": (100, _packed, self.lookup_answering),
        }

    def set_answers(self) -> None:
        """Give the bare server serving's own responses of 1 and 100 keys to answer with."""
        for width in (1, 100):
            request = _request(self.spec, self.spec.wide_refs, list(range(width)))
            answer = self.stub.GetOnlineFeatures(request).SerializeToString()
            self._set_answer(width.to_bytes(4, "little") + answer)

    def _pk_lookup(self, key: int) -> object:
        self._cursor.execute(self._pk, (key,), prepare=True)
        return self._cursor.fetchone()

    def _any_lookup(self, keys: list[int]) -> object:
        self._cursor.execute(self._any, (keys,), prepare=True)
        return self._cursor.fetchall()


def run_latency(spec: Spec, clients: Clients) -> dict[str, list[float]]:
    variants = clients.variants()
    rng = random.Random(spec.seed)
    _check(clients, variants)
    clients.set_answers()
    for width, build, call in variants.values():
        for _ in range(spec.warmup):
            call(build(rng.sample(range(spec.entities), width)))
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for block in range(spec.blocks):
        # The same keys for every variant of a block; the variants' order rotates.
        keys = [rng.sample(range(spec.entities), 100) for _ in range(spec.calls_per_block)]
        for name in names[block % len(names) :] + names[: block % len(names)]:
            width, build, call = variants[name]
            requests = [build(call_keys[:width]) for call_keys in keys]
            timings = samples[name]
            for request in requests:
                started = time.perf_counter()
                call(request)
                timings.append(time.perf_counter() - started)
    return samples


def _check(clients: Clients, variants: dict[str, tuple[int, Any, Call]]) -> None:
    """Every served value must be present: timing NOT_FOUND answers would flatter us."""
    for name in ("get_1", "get_100", "get_1_5views"):
        width, build, call = variants[name]
        response = call(build(list(range(width))))
        assert len(response.columns) == 20, f"{name}: {len(response.columns)} columns"
        for column in response.columns:
            assert list(column.statuses) == [pb.FEATURE_STATUS_PRESENT] * width, name


# Concurrency variants: figure name -> (server, call kind).
CONCURRENT = {
    "echo_c8": ("echo", "echo"),
    "get_1_c8": ("serving", "get"),
    "echo_pk_c8": ("echo", "lookup"),
    "echo_pk_c8_wN": ("echo_wn", "lookup"),
    "get_1_c8_wN": ("serving_wn", "get"),
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class _Totals:
    calls: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    busy: float = 0.0
    machine: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    workers_hit: dict[str, int] = field(default_factory=dict)


def run_concurrent(spec: Spec) -> dict[str, dict[str, Any]]:
    """Calls per second with `clients` threads, each on its own connection, 1 entity per call,
    with each call's latency and where the machine's CPU went meanwhile."""
    totals = {name: _Totals() for name in CONCURRENT}
    for _ in range(spec.concurrent_blocks):
        for name in totals:
            _concurrent_block(spec, name, totals[name])
    return {name: _concurrent_figure(spec, name, total) for name, total in totals.items()}


def _concurrent_figure(spec: Spec, name: str, total: _Totals) -> dict[str, Any]:
    ordered = sorted(total.latencies)
    calls = max(total.calls, 1)
    figure: dict[str, Any] = {
        "per_s": round(total.calls / total.seconds, 1),
        "calls": total.calls,
        "clients": spec.clients,
        "seconds": round(total.seconds, 2),
        "p50_ms": round(nearest_rank(ordered, 50) * 1000, 4),
        "p99_ms": round(nearest_rank(ordered, 99) * 1000, 4),
        "cpu": {
            # Share of all cores busy (any process: ours, PostgreSQL, other tenants).
            "machine_busy": round(total.busy / total.machine, 3),
            "client_us_per_call": round(total.client_cpu / calls * 1e6, 1),
            "server_us_per_call": round(total.server_cpu / calls * 1e6, 1),
            # PostgreSQL's backends and everything else running on the machine.
            "rest_us_per_call": round(
                (total.busy / CLOCK_TICKS - total.client_cpu - total.server_cpu) / calls * 1e6, 1
            ),
        },
    }  # fmt: skip
    if name.endswith("_wN"):
        figure["workers"] = spec.workers
    if total.workers_hit:
        figure["connections_per_worker"] = dict(sorted(total.workers_hit.items()))
    return figure


def _client_call(
    spec: Spec, name: str, channel: grpc.Channel, index: int, counts: list[int]
) -> tuple[Callable[[], object], str | None]:
    """The call a client repeats, and (serving only) the pid of the worker its connection hit."""
    _server, kind = CONCURRENT[name]
    rng = random.Random(spec.seed + index)
    keys = [rng.randrange(spec.entities) for _ in range(256)]
    if kind == "echo":
        payload = _request(spec, spec.wide_refs, [1]).SerializeToString()
        echo = channel.unary_unary(ECHO)
        return (lambda: echo(payload)), None
    if kind == "lookup":
        lookup = channel.unary_unary(LOOKUP)
        packed = [_packed([key]) for key in keys]
        return (lambda: lookup(packed[counts[index] % 256])), None
    stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
    requests = [_request(spec, spec.wide_refs, [key]) for key in keys]
    _response, first = stub.GetOnlineFeatures.with_call(requests[0])
    worker = dict(first.trailing_metadata()).get("x-recstack-worker")
    return (lambda: stub.GetOnlineFeatures(requests[counts[index] % 256])), worker


def _concurrent_block(spec: Spec, name: str, total: _Totals) -> None:
    counts = [0] * spec.clients
    latencies: list[list[float]] = [[] for _ in range(spec.clients)]
    start = threading.Barrier(spec.clients + 1)
    stop = threading.Event()
    target = getattr(spec, CONCURRENT[name][0])
    workers: list[str | None] = [None] * spec.clients

    def client(index: int) -> None:
        with open_channel(target, BARE, options=CLIENT_OPTIONS) as channel:
            call, workers[index] = _client_call(spec, name, channel, index, counts)
            timings = latencies[index]
            call()
            start.wait()
            while not stop.is_set():
                began = time.perf_counter()
                call()
                timings.append(time.perf_counter() - began)
                counts[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(spec.clients)]
    for thread in threads:
        thread.start()
    start.wait()
    machine, client_cpu = _machine_ticks(), time.process_time()
    server_cpu = process_seconds(spec.server_pids[CONCURRENT[name][0]])
    began = time.perf_counter()
    time.sleep(spec.concurrent_seconds)
    stop.set()
    elapsed = time.perf_counter() - began
    calls = sum(counts)
    busy_after, all_after = _machine_ticks()
    total.client_cpu += time.process_time() - client_cpu
    total.server_cpu += process_seconds(spec.server_pids[CONCURRENT[name][0]]) - server_cpu
    total.busy += busy_after - machine[0]
    total.machine += all_after - machine[1]
    for thread in threads:
        thread.join()
    total.calls += calls
    total.seconds += elapsed
    for timings in latencies:
        total.latencies.extend(timings)
    for worker in workers:
        if worker is not None:
            total.workers_hit[worker] = total.workers_hit.get(worker, 0) + 1


def _machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every core since boot, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user .. steal; guest time is already counted in user
    return total - idle, total


def process_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes (all their threads)."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / CLOCK_TICKS


def main(argv: list[str]) -> None:
    spec = Spec(**json.loads(Path(argv[0]).read_text()))
    clients = Clients(spec)
    try:
        samples = run_latency(spec, clients)
    finally:
        clients.close()
    result = {"latency": samples, "concurrent": run_concurrent(spec)}
    Path(argv[1]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
