"""`make bench-hot-path`: what the shared interceptor costs every RPC, part by part, in-process.

A real gRPC server runs in this process with one method whose handler, on its real request
thread and with its real `ServicerContext`, times each per-call part of
`shared.grpc_server.ObservabilityInterceptor` many times over (request id, context variables,
trailing metadata, deadline, validation, metrics, access log), then the whole intercepted
handler around a behaviour that does nothing, next to that bare behaviour. The request is
`get_1`'s (20 feature refs, one key). Wall time is per call; CPU time also counts the log
writer thread, which renders a logged line off the request thread but on the same GIL.

Prints a table and writes bench/results/hot_path.json.

    python -m bench.hot_path [--calls N]
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from random import random
from typing import Any

import grpc
import structlog
from recstack.common.v1 import value_pb2
from recstack.serving.v1 import serving_service_pb2 as pb

from bench.harness import write_result
from shared import grpc_server
from shared.logging import configure_logging
from shared.request_context import RequestInfo, set_deadline, set_request
from shared.settings import ServiceSettings

METHOD = "/bench.HotPath/Measure"
SERVICE = "bench"


def _request() -> pb.GetOnlineFeaturesRequest:
    return pb.GetOnlineFeaturesRequest(
        project="bench",
        features=[f"wide:f{i:02d}" for i in range(20)],
        entity_keys=[value_pb2.Value(int64_value=7)],
    )


def _timed(part: Callable[[], object], calls: int) -> dict[str, float]:
    for _ in range(min(calls, 1000)):
        part()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        part()
    wall = time.perf_counter() - wall
    _drain_log_writer()
    cpu = time.process_time() - cpu
    return {"us": round(wall / calls * 1e6, 2), "cpu_us": round(cpu / calls * 1e6, 2)}


def _drain_log_writer() -> None:
    """Wait until the background writer rendered every queued line (its CPU counts)."""
    writer = getattr(structlog.get_config()["logger_factory"](), "_writer", None)
    queue = getattr(writer, "_queue", None)
    while queue is not None and not queue.empty():
        time.sleep(0.001)
    time.sleep(0.002)  # the last batch being written


def parts(context: grpc.ServicerContext, request: Any) -> dict[str, Callable[[], object]]:
    """Each step the interceptor takes per call, as it takes it."""
    sample = ServiceSettings().access_log_sample
    metrics = grpc_server._MethodMetrics(SERVICE, METHOD)
    worker = str(os.getpid())

    def request_id() -> object:
        return grpc_server._request_id(context.invocation_metadata()) or (
            grpc_server._new_request_id()
        )

    def context_vars() -> None:
        info = RequestInfo("r", METHOD, context.peer)
        contextvars.Context().run(set_request, info)

    def deadline() -> None:
        remaining = context.time_remaining()
        budget = 30.0 if remaining is None or remaining > 30.0 else remaining
        set_deadline(time.monotonic() + budget)

    def metrics_part() -> None:
        code = context.code()
        if code is None or code is grpc.StatusCode.OK:
            metrics.ok.observe(0.0002)

    def access_log() -> None:
        if sample and random() < sample:
            grpc_server.log.info("rpc", code="OK", duration_ms=0.2)

    return {
        "request_id": request_id,
        "context_vars": context_vars,
        "trailing_metadata": lambda: context.set_trailing_metadata(
            ((grpc_server.REQUEST_ID_HEADER, "r"), (grpc_server.WORKER_HEADER, worker))
        ),
        "deadline": deadline,
        "validation": lambda: grpc_server._validated(request),
        "metrics": metrics_part,
        "access_log": access_log,
    }


def references() -> dict[str, Callable[[], object]]:
    """Not per call: one access line, as every call logged one before it was sampled."""
    return {
        "access_line_unsampled": lambda: grpc_server.log.info("rpc", code="OK", duration_ms=0.2)
    }


def _whole(context: grpc.ServicerContext, request: Any) -> dict[str, Callable[[], object]]:
    """The intercepted handler (what every RPC runs) and the bare behaviour it wraps."""
    settings = ServiceSettings()
    access_log = grpc_server.AccessLog(settings.access_log_sample, settings.slow_rpc_seconds)
    interceptor = grpc_server.ObservabilityInterceptor(SERVICE, 30.0, access_log=access_log)

    def behavior(_request: Any, _context: grpc.ServicerContext) -> bytes:
        return b""

    handler = grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=pb.GetOnlineFeaturesRequest.FromString
    )
    details = _Details(METHOD)
    wrapped = interceptor.intercept_service(lambda _details: handler, details)
    assert wrapped is not None

    def lookup() -> object:
        return interceptor.intercept_service(lambda _details: handler, details)

    return {
        "bare_behavior": lambda: behavior(request, context),
        "intercept_service": lookup,
        "whole_interceptor": lambda: wrapped.unary_unary(request, context),
    }


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def measure(context: grpc.ServicerContext, request: Any, calls: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, part in parts(context, request).items():
        results[name] = _timed(part, calls)
    results["sum_of_parts"] = {
        key: round(sum(figure[key] for figure in results.values()), 2) for key in ("us", "cpu_us")
    }
    for name, part in {**references(), **_whole(context, request)}.items():
        results[name] = _timed(part, calls)
    return results


def serve_and_measure(calls: int) -> dict[str, Any]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    request = _request()
    outcome: dict[str, Any] = {}

    def handler(_request: bytes, context: grpc.ServicerContext) -> bytes:
        outcome.update(measure(context, request, calls))
        return b"{}"

    methods = {"Measure": grpc.unary_unary_rpc_method_handler(handler)}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.HotPath", methods),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            channel.unary_unary(METHOD)(b"", timeout=600)
    finally:
        server.stop(0)
    return outcome


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per part")
    args = parser.parse_args(argv)
    # Logged lines are rendered as in a service, then dropped.
    real_stderr = sys.stderr
    with Path(os.devnull).open("w") as devnull:
        sys.stderr = devnull
        try:
            configure_logging("INFO", service=SERVICE)
            results = serve_and_measure(args.calls)
        finally:
            sys.stderr = real_stderr
    print(f"\n{'part':<22}{'wall us':>10}{'cpu us':>10}")
    for name, figure in results.items():
        print(f"{name:<22}{figure['us']:>10.2f}{figure['cpu_us']:>10.2f}")
    overhead = results["whole_interceptor"]["us"] - results["bare_behavior"]["us"]
    ratios = {"interceptor_us_per_call": overhead}
    path = write_result("hot_path", results, ratios, {}, {"calls": args.calls})
    print(json.dumps(json.loads(path.read_text())["ratios"]))


if __name__ == "__main__":
    main()
