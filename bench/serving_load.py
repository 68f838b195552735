"""Load generator of `bench.serving`, run as its own process: never inside a server under test.

Latency variants run in interleaved blocks (their order rotating each block) over the same
random keys, so they share the machine's noise; concurrency variants alternate in blocks too.

    python -m bench.serving_load SPEC.json RESULT.json
"""

from __future__ import annotations

import array
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from recstack.common.v1 import value_pb2
from recstack.serving.v1 import serving_service_pb2 as pb
from recstack.serving.v1 import serving_service_pb2_grpc

from bench.echo_server import ECHO, LOOKUP, lookup_statements
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
        }

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


def run_concurrent(spec: Spec) -> dict[str, dict[str, float]]:
    """Calls per second with `clients` threads, each on its own connection, 1 entity per call."""
    totals = {"echo_c8": [0, 0.0], "get_1_c8": [0, 0.0], "echo_pk_c8": [0, 0.0]}
    for _ in range(spec.concurrent_blocks):
        for name in totals:
            calls, seconds = _concurrent_block(spec, name)
            totals[name][0] += calls
            totals[name][1] += seconds
    return {
        name: {
            "per_s": round(calls / seconds, 1),
            "calls": calls,
            "clients": spec.clients,
            "seconds": round(seconds, 2),
        }
        for name, (calls, seconds) in totals.items()
    }


def _concurrent_block(spec: Spec, name: str) -> tuple[int, float]:
    counts = [0] * spec.clients
    start = threading.Barrier(spec.clients + 1)
    stop = threading.Event()

    def client(index: int) -> None:
        target = spec.serving if name == "get_1_c8" else spec.echo
        rng = random.Random(spec.seed + index)
        keys = [rng.randrange(spec.entities) for _ in range(256)]
        with open_channel(target, BARE, options=CLIENT_OPTIONS) as channel:
            if name == "echo_c8":
                payload = _request(spec, spec.wide_refs, [1]).SerializeToString()
                echo = channel.unary_unary(ECHO)
                call: Callable[[], object] = lambda: echo(payload)  # noqa: E731
            elif name == "echo_pk_c8":
                lookup = channel.unary_unary(LOOKUP)
                packed = [_packed([key]) for key in keys]
                call = lambda: lookup(packed[counts[index] % 256])  # noqa: E731
            else:
                stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
                requests = [_request(spec, spec.wide_refs, [key]) for key in keys]
                call = lambda: stub.GetOnlineFeatures(requests[counts[index] % 256])  # noqa: E731
            call()
            start.wait()
            while not stop.is_set():
                call()
                counts[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(spec.clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(spec.concurrent_seconds)
    stop.set()
    elapsed = time.perf_counter() - began
    calls = sum(counts)
    for thread in threads:
        thread.join()
    return calls, elapsed


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
