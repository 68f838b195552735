"""A PostgreSQL restart under load, on an embedded server the test starts (never the machine's
shared one): while it is down, calls fail fast with UNAVAILABLE and health turns NOT_SERVING
within a second; once it is back, no call fails."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recstack.registry.v1 import registry_service_pb2 as pb
from recstack.registry.v1 import registry_service_pb2_grpc

from infra.local.postgres import temporary_embedded_server
from services.registry.server import (
    MIGRATIONS,
    SCHEMA,
    RegistryDeps,
    RegistrySettings,
    create_server,
)
from shared.channels import ClientSettings, open_channel
from shared.db import create_engine, to_libpq
from shared.errors import Unavailable
from shared.feature_views import Feature, ViewSchema
from shared.migrations import upgrade
from shared.online_store.postgres import PostgresOnlineStore
from shared.values import VT

VIEW = ViewSchema("p", "v", 1, "k", VT.VALUE_TYPE_INT64, (Feature("x", VT.VALUE_TYPE_DOUBLE),))
DOWN_SECONDS = 3.0


def test_calls_fail_fast_while_postgres_is_down_and_none_fails_once_it_is_back():
    with temporary_embedded_server() as server:
        url = server.start()
        engine = create_engine(url, pool_size=2)
        upgrade(engine, schema=SCHEMA, script_location=MIGRATIONS)
        store = PostgresOnlineStore(to_libpq(url))
        store.ensure_table(VIEW)
        store.write(VIEW, [(1, 0.5, datetime.now(UTC))])
        settings = RegistrySettings(grpc_port=0, database_url=url, triton_addr="127.0.0.1:9")
        running, port = create_server(settings, RegistryDeps(engine, store))
        channel = open_channel(f"127.0.0.1:{port}", ClientSettings(max_attempts=1))
        registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        results: list[tuple[float, str, float]] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                for name, call in (
                    ("read", lambda: store.read([(VIEW, ["x"])], [1])),
                    ("list", lambda: registry.ListProjects(pb.ListProjectsRequest(), timeout=5)),
                ):
                    started = time.monotonic()
                    try:
                        call()
                        outcome = "ok"
                    except Unavailable:
                        outcome = "unavailable"
                    except grpc.RpcError as error:
                        outcome = error.code().name
                    results.append((started, f"{name}:{outcome}", time.monotonic() - started))
                time.sleep(0.02)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            time.sleep(0.5)
            server.stop()
            stopped_at = time.monotonic()
            not_serving_after = _wait_for(health, health_pb2.HealthCheckResponse.NOT_SERVING)
            time.sleep(DOWN_SECONDS)
            restarting_at = time.monotonic()
            server.start()
            back_at = time.monotonic()
            serving_after = _wait_for(health, health_pb2.HealthCheckResponse.SERVING)
            time.sleep(1.5)
        finally:
            stop.set()
            worker.join()
            channel.close()
            running.stop(0)
            store.close()
            engine.dispose()
        down = [r for r in results if stopped_at < r[0] < restarting_at]
        assert down and all(not r[1].endswith(":ok") for r in down)
        assert {r[1] for r in down} <= {"read:unavailable", "list:UNAVAILABLE"}
        assert max(r[2] for r in down) < 1.0, "calls wait on the pool while the server is down"
        assert not_serving_after < 1.5
        # Once a call has succeeded again, every later call succeeds.
        after = [r for r in results if r[0] > back_at]
        first_ok = next(i for i, r in enumerate(after) if r[1].endswith(":ok"))
        assert [r for r in after[first_ok + 2 :] if not r[1].endswith(":ok")] == []
        assert serving_after < 2.0


def _wait_for(health: health_pb2_grpc.HealthStub, status: int) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 10:
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
        if answer == status:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"health never became {status}")
