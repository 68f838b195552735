"""Serving as two worker processes on one port (RECSTACK_WORKERS=2, shared/workers.py): both
answer, one metrics scrape covers both, and SIGTERM drains both."""

from __future__ import annotations

import queue
import signal
import socket
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf import duration_pb2
from prometheus_client.parser import text_string_to_metric_families
from recstack.common.v1 import value_pb2
from recstack.registry.v1 import (
    entity_pb2,
    feature_view_pb2,
    project_pb2,
    registry_service_pb2_grpc,
)
from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

from infra.local.ports import free_port
from shared.channels import open_channel
from shared.grpc_server import WORKER_HEADER
from tests.workers import ServiceProcess, service_process

VT = value_pb2.ValueType
FV = feature_view_pb2.FeatureView
GET = "/recstack.serving.v1.FeatureServingService/GetOnlineFeatures"
# Each channel its own TCP connection: SO_REUSEPORT spreads connections, not calls.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
MAX_CHANNELS = 60


@pytest.fixture(scope="module")
def project(registry_address, connect):
    registry = registry_service_pb2_grpc.RegistryServiceStub(connect(registry_address))
    project_id = f"w_{uuid.uuid4().hex[:8]}"
    registry.CreateProject(
        rpb.CreateProjectRequest(project_id=project_id, project=project_pb2.Project())
    )
    registry.CreateEntity(
        rpb.CreateEntityRequest(
            parent=f"projects/{project_id}",
            entity_id="user",
            entity=entity_pb2.Entity(join_key="user_id", key_type=VT.VALUE_TYPE_INT64),
        )
    )
    fields = [("user_id", VT.VALUE_TYPE_INT64), ("score", VT.VALUE_TYPE_DOUBLE)]
    registry.CreateFeatureView(
        rpb.CreateFeatureViewRequest(
            parent=f"projects/{project_id}",
            feature_view_id="profile",
            feature_view=FV(
                entity="user",
                type=FV.TYPE_REAL_TIME,
                ttl=duration_pb2.Duration(seconds=3600),
                fields=[feature_view_pb2.FeatureField(name=n, value_type=t) for n, t in fields],
            ),
        )
    )
    return project_id


def _start(database_url, registry_address, service_overrides, client_settings, log_path, **more):
    values = {
        "database_url": database_url,
        "registry_addr": registry_address,
        "registry_cache_seconds": 0.0,
        "workers": 2,
        **service_overrides,
        **more,
    }
    return service_process("serving", values, log_path, client_settings)


@pytest.fixture(scope="module")
def workers(database_url, registry_address, service_overrides, client_settings, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("workers") / "serving.log"
    metrics_port = free_port()
    with _start(
        database_url,
        registry_address,
        service_overrides,
        client_settings,
        log_path,
        metrics_port=metrics_port,
    ) as running:
        yield running, metrics_port


def _worker_pids(running: ServiceProcess) -> set[int]:
    return {event["pid"] for event in running.log_events("server_started")}


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _read(stub, project, key):
    request = spb.GetOnlineFeaturesRequest(
        project=project,
        features=["profile:score"],
        entity_keys=[value_pb2.Value(int64_value=key)],
    )
    response, call = stub.GetOnlineFeatures.with_call(request, timeout=10)
    worker = dict(call.trailing_metadata())[WORKER_HEADER]
    return response, int(worker)


def _channels_per_worker(address, client_settings, project, wanted):
    """Fresh channels until each worker pid in `wanted` served one: {pid: (channel, stub)}."""
    found, extra = {}, []
    for _ in range(MAX_CHANNELS):
        channel = open_channel(address, client_settings, options=OWN_CONNECTION)
        stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
        _response, pid = _read(stub, project, 1)
        if pid in found:
            extra.append(channel)
        else:
            found[pid] = (channel, stub)
        if set(found) >= wanted:
            break
    for channel in extra:
        channel.close()
    return found


def test_two_workers_share_the_port_and_both_answer(workers, project, client_settings):
    running, _metrics_port = workers
    pids = _worker_pids(running)
    assert len(pids) == 2
    # Both are children of the process that was started, the supervisor.
    assert {_parent(pid) for pid in pids} == {running.process.pid}
    with open_channel(running.address, client_settings) as channel:
        stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
        row = spb.FeatureRow(
            values={
                "user_id": value_pb2.Value(int64_value=1),
                "score": value_pb2.Value(double_value=0.25),
            }
        )
        row.event_time.FromDatetime(datetime.now(UTC))
        stub.WriteFeatures(
            spb.WriteFeaturesRequest(project=project, feature_view="profile", rows=[row])
        )
    found = _channels_per_worker(running.address, client_settings, project, pids)
    assert set(found) == pids
    for _channel, stub in found.values():
        # Each worker reads the same row from the store through its own pool and cache.
        response, _pid = _read(stub, project, 1)
        assert response.columns[0].values[0].double_value == 0.25
        assert list(response.columns[0].statuses) == [spb.FEATURE_STATUS_PRESENT]
    for channel, _stub in found.values():
        channel.close()


def test_one_scrape_covers_both_workers(workers, project, client_settings):
    running, metrics_port = workers
    pids = _worker_pids(running)
    before = _get_calls(metrics_port)
    found = _channels_per_worker(running.address, client_settings, project, pids)
    calls = 0
    for _channel, stub in found.values():
        for key in range(5):
            _read(stub, project, key)
            calls += 1
    # Every call that the search for both workers made counts too: one per channel opened.
    after = _get_calls(metrics_port)
    assert after - before >= calls + len(found)
    families = _scrape(metrics_port)
    live = {int(s.labels["pid"]) for s in families["recstack_worker_up"].samples if s.value == 1}
    assert live == pids
    for channel, _stub in found.values():
        channel.close()


def _scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _get_calls(port):
    family = _scrape(port)["recstack_rpc_duration_seconds"]
    return sum(
        sample.value
        for sample in family.samples
        if sample.name.endswith("_count")
        and sample.labels.get("method") == GET
        and sample.labels.get("code") == "OK"
    )


def test_sigterm_drains_both_workers(
    database_url, registry_address, service_overrides, client_settings, project, tmp_path
):
    with _start(
        database_url,
        registry_address,
        service_overrides,
        client_settings,
        tmp_path / "serving.log",
        shutdown_grace_seconds=10.0,
    ) as running:
        pids = _worker_pids(running)
        found = _channels_per_worker(running.address, client_settings, project, pids)
        assert set(found) == pids
        # One push stream open on each worker, its first batch sent.
        streams = []
        for pid, (_channel, stub) in found.items():
            batches: queue.Queue = queue.Queue()
            batches.put(_push(project, 100 + pid % 1000))
            future = stub.PushFeatures.future(iter(batches.get, None), timeout=30)
            streams.append((pid, batches, future))
        running.process.send_signal(signal.SIGTERM)
        # Both workers are stopping; their open calls may still finish.
        assert _wait_for(lambda: len(running.log_events("shutdown_requested")) >= 3)
        for pid, batches, _future in streams:
            batches.put(_push(project, 200 + pid % 1000))
            batches.put(None)
        for pid, _batches, future in streams:
            response = future.result(timeout=30)
            assert (response.batches, response.rows_written) == (2, 2)
            assert int(dict(future.trailing_metadata())[WORKER_HEADER]) == pid
        assert running.process.wait(30) == 0
        stopped = {event["pid"] for event in running.log_events("server_stopped")}
        assert stopped == pids
        for channel, _stub in found.values():
            channel.close()


def test_workers_stop_when_their_supervisor_is_killed(
    database_url, registry_address, service_overrides, client_settings, tmp_path
):
    """A supervisor killed outright (no SIGTERM to forward) leaves no worker on the port."""
    with _start(
        database_url, registry_address, service_overrides, client_settings, tmp_path / "s.log"
    ) as running:
        pids = _worker_pids(running)
        running.process.kill()
        running.process.wait(10)
        assert _wait_for(lambda: not any(_alive(pid) for pid in pids), timeout_s=20)
        stopped = {event["pid"] for event in running.log_events("server_stopped")}
        assert stopped == pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _push(project, key):
    row = spb.FeatureRow(
        values={
            "user_id": value_pb2.Value(int64_value=key),
            "score": value_pb2.Value(double_value=1.0),
        }
    )
    row.event_time.FromDatetime(datetime.now(UTC))
    return spb.PushFeaturesRequest(project=project, feature_view="profile", rows=[row])


def _wait_for(condition, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_port_in_use_is_refused_plainly(
    database_url, registry_address, service_overrides, client_settings, tmp_path
):
    """Workers share their port with each other only: one another process holds is refused."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {"database_url": database_url, "registry_addr": registry_address, "workers": 2}
        log_path = tmp_path / "busy.log"
        with (
            pytest.raises(RuntimeError, match="exited early"),
            service_process(
                "serving",
                {**values, **service_overrides},
                log_path,
                client_settings,
                port=busy.getsockname()[1],
            ),
        ):
            pass
    assert "cannot bind" in log_path.read_text()
