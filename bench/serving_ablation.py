"""`make bench-serving-ablation`: what each part of a read costs inside the running server.

In-process timings (`bench.hot_path`) time a part alone, hot in the caches; inside a server,
among gRPC's own threads and work, the same part costs several times that. This measures the
parts where they run: one serving process per variant, each with
some parts of the read taken out (`bench.serving_without`), next to the bare gRPC servers
(`bench.echo_server`: `echo` answers at once, `echo_pk` after the bare primary-key lookup),
all on one database and registry. Rounds interleave every server, so each shares the machine's
noise; a figure is the median over rounds of
- one client: `c1_p50_us` over sequential calls, and `c1_cpu_us` the server's CPU per call;
- 8 clients (8 threads of one process, each on its own connection): `c8_per_s`, `c8_cpu_us`.
The call is `get_1`'s (20 feature refs of one view, one key); the bare servers get the same
request bytes (`echo`) or its key (`echo_pk`).

Prints a table and writes bench/results/serving_ablation.json.

    python -m bench.serving_ablation [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import array
import itertools
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import grpc
from recstack.common.v1 import value_pb2
from recstack.serving.v1 import serving_service_pb2 as pb
from recstack.serving.v1 import serving_service_pb2_grpc

from bench.echo_server import ECHO, LOOKUP
from bench.harness import REPO_ROOT, scratch_database, write_result
from bench.serving import (
    FEATURES,
    PROJECT,
    echo_arguments,
    read_environment,
    start_echo,
    start_serving,
)
from bench.serving_load import BARE, CLIENT_OPTIONS, process_seconds
from shared.channels import open_channel

VARIANTS = {
    "serving": "",
    "without_validation": "validation",
    "without_metrics": "metrics",
    "without_encode": "encode",
    "without_store": "store",
    "without_all": "store,encode,validation,metrics",
}
CLIENTS = 8


def _request(key: int) -> pb.GetOnlineFeaturesRequest:
    return pb.GetOnlineFeaturesRequest(
        project=PROJECT,
        features=[f"wide:{name}" for name in FEATURES],
        entity_keys=[value_pb2.Value(int64_value=key)],
    )


def _call(kind: str, channel: grpc.Channel, entities: int, seed: int) -> Callable[[], object]:
    """The call a client repeats, over 256 random keys."""
    rng = random.Random(seed)
    keys = [rng.randrange(entities) for _ in range(256)]
    if kind == "echo":
        payloads = [_request(key).SerializeToString() for key in keys]
        method = channel.unary_unary(ECHO)
    elif kind == "echo_pk":
        payloads = [array.array("q", [key]).tobytes() for key in keys]
        method = channel.unary_unary(LOOKUP)
    else:
        payloads = [_request(key) for key in keys]
        method = serving_service_pb2_grpc.FeatureServingServiceStub(channel).GetOnlineFeatures
    count = itertools.count()
    return lambda: method(payloads[next(count) % 256], timeout=10)


def run_client(
    kind: str, address: str, clients: int, amount: float, entities: int
) -> dict[str, Any]:
    """One client: `amount` sequential calls (latency); several: calls for `amount` seconds."""
    channels = [open_channel(address, BARE, options=CLIENT_OPTIONS) for _ in range(clients)]
    calls = [_call(kind, channel, entities, seed) for seed, channel in enumerate(channels)]
    for call in calls:
        call()
    try:
        if clients == 1:
            timings = []
            for _ in range(int(amount)):
                started = time.perf_counter()
                calls[0]()
                timings.append(time.perf_counter() - started)
            return {"p50_us": statistics.median(timings) * 1e6, "calls": len(timings)}
        counts = [0] * clients
        stop = time.perf_counter() + amount

        def client(index: int) -> None:
            while time.perf_counter() < stop:
                calls[index]()
                counts[index] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {"per_s": sum(counts) / amount, "calls": sum(counts)}
    finally:
        for channel in channels:
            channel.close()


def _measured(kind: str, address: str, pids: list[int], clients: int, amount: float,
              entities: int) -> dict[str, Any]:  # fmt: skip
    """A client run in its own process, with the server's CPU per call meanwhile."""
    before = process_seconds(pids)
    command = [sys.executable, "-m", "bench.serving_ablation", "--client", kind, address,
               str(clients), str(amount), str(entities)]  # fmt: skip
    output = subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    figure = json.loads(output.stdout)
    figure["cpu_us"] = (process_seconds(pids) - before) / figure["calls"] * 1e6
    return figure


def measure(url: str, rounds: int, entities: int, calls: int, seconds: float) -> dict[str, Any]:
    with read_environment(url, entities) as (registry_address, wide), ExitStack() as stack:
        servers: dict[str, tuple[str, str, list[int]]] = {}
        for name, parts in VARIANTS.items():
            env = {"RECSTACK_DATABASE_URL": url, "RECSTACK_BENCH_WITHOUT": parts}
            address, pids = start_serving(
                stack, f"ablation-{name}", env, registry_address, 1, "bench.serving_without"
            )
            servers[name] = ("serving", address, pids)
        address, pids = start_echo(stack, "ablation-echo", echo_arguments(url, wide), 1, {})
        servers["echo"], servers["echo_pk"] = ("echo", address, pids), ("echo_pk", address, pids)
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in servers}
        for _ in range(rounds):
            for name, (kind, address, pids) in servers.items():
                one = _measured(kind, address, pids, 1, calls, entities)
                many = _measured(kind, address, pids, CLIENTS, seconds, entities)
                figure = {"c1_p50_us": one["p50_us"], "c1_cpu_us": one["cpu_us"],
                          "c8_per_s": many["per_s"], "c8_cpu_us": many["cpu_us"]}  # fmt: skip
                for key, value in figure.items():
                    samples[name].setdefault(key, []).append(value)
    return {
        name: {key: round(statistics.median(values), 1) for key, values in figure.items()}
        for name, figure in samples.items()
    }


def part_costs(figures: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """What each part costs: serving's figure less the figure of serving without it."""
    whole = figures["serving"]
    costs = {}
    for name in VARIANTS:
        if name != "serving":
            without = figures[name]
            costs[name.removeprefix("without_")] = {
                "c1_p50_us": round(whole["c1_p50_us"] - without["c1_p50_us"], 1),
                "c1_cpu_us": round(whole["c1_cpu_us"] - without["c1_cpu_us"], 1),
                "c8_cpu_us": round(whole["c8_cpu_us"] - without["c8_cpu_us"], 1),
            }
    return costs


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        kind, address, clients, amount, entities = argv[1:]
        print(json.dumps(run_client(kind, address, int(clients), float(amount), int(entities))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="few calls, for a smoke test")
    args = parser.parse_args(argv)
    calls, seconds, entities = (200, 0.5, 2_000) if args.quick else (2_000, 2.0, 10_000)
    started = time.monotonic()
    with scratch_database("recstack_bench_ablation") as url:
        figures = measure(url, args.rounds, entities, calls, seconds)
    costs = part_costs(figures)
    print(f"\n{'server':<20}{'c1 p50 us':>11}{'c1 cpu us':>11}{'c8 per s':>10}{'c8 cpu us':>11}")
    for name, figure in figures.items():
        print(f"{name:<20}{figure['c1_p50_us']:>11.0f}{figure['c1_cpu_us']:>11.0f}"
              f"{figure['c8_per_s']:>10,.0f}{figure['c8_cpu_us']:>11.0f}")  # fmt: skip
    print(f"\n{'part':<20}{'c1 p50 us':>11}{'c1 cpu us':>11}{'c8 cpu us':>11}")
    for name, cost in costs.items():
        print(
            f"{name:<20}{cost['c1_p50_us']:>11.0f}{cost['c1_cpu_us']:>11.0f}{cost['c8_cpu_us']:>11.0f}"
        )
    extra = {"part_costs": costs, "rounds": args.rounds, "quick": args.quick,
             "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
    path = write_result("serving_ablation", figures, {}, {}, extra)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
