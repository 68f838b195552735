"""The shared gRPC bootstrap on a real server: health, reflection, errors, auth, request ids."""

from __future__ import annotations

import contextlib
import os
import time

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from recstack.serving.v1 import serving_service_pb2 as pb
from recstack.serving.v1 import serving_service_pb2_grpc

from infra.local.ports import free_port
from shared.errors import InvalidArgument, NotFound
from shared.grpc_server import WORKER_HEADER, ServiceRegistration, create_grpc_server
from shared.request_context import request_id, seconds_remaining
from shared.settings import ServiceSettings

SERVICE = "recstack.serving.v1.FeatureServingService"


class ScriptedServicer(serving_service_pb2_grpc.FeatureServingServiceServicer):
    """Answers GetOnlineFeatures according to the project name, to exercise every path."""

    def GetOnlineFeatures(self, request, context):
        if request.project == "context":
            # What a call sees of its own context, and of anything an earlier call bound.
            leaked = structlog.contextvars.get_contextvars().get("bound_by_a_call", "")
            structlog.contextvars.bind_contextvars(bound_by_a_call=request_id())
            remaining = seconds_remaining()
            return pb.GetOnlineFeaturesResponse(
                feature_names=[request_id(), leaked, f"{remaining:.3f}"]
            )
        if request.project == "slow":
            time.sleep(0.05)
            return pb.GetOnlineFeaturesResponse()
        if request.project == "missing":
            raise NotFound("projects/missing does not exist")
        if request.project == "":
            raise InvalidArgument("project", "is required")
        if request.project == "crash":
            raise RuntimeError("boom")
        return pb.GetOnlineFeaturesResponse(feature_names=[request.project])


def _start(tmp_path, *, token_file=None, checks=None, **more):
    settings = ServiceSettings(
        grpc_port=0, auth_token_file=token_file, service_name="serving", **more
    )
    registration = ServiceRegistration(
        serving_service_pb2_grpc.add_FeatureServingServiceServicer_to_server,
        ScriptedServicer(),
        SERVICE,
    )
    return create_grpc_server(settings, [registration], readiness_checks=checks)


@pytest.fixture
def server(tmp_path):
    running = _start(tmp_path)
    yield running
    running.stop(0)


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


def test_health_serving_for_every_name(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [response] = list(stub.ServerReflectionInfo(iter([request])))
    names = {service.name for service in response.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_domain_error_becomes_status_with_error_info(channel):
    stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(project="missing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_details_pb2.ErrorInfo()
    status = rpc_status.from_call(caught.value)
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("NOT_FOUND", "recstack.serving")


def test_invalid_argument_names_the_field(channel):
    stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(project=""))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    status = rpc_status.from_call(caught.value)
    assert status.details[1].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "project"


def test_unexpected_error_is_internal_with_request_id(channel):
    stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(project="crash"), metadata=[("x-request-id", "req-42")]
        )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "req-42" in caught.value.details()
    assert "boom" not in caught.value.details()


def test_request_id_is_echoed_in_trailers(channel):
    stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
    _, call = stub.GetOnlineFeatures.with_call(
        pb.GetOnlineFeaturesRequest(project="ok"), metadata=[("x-request-id", "abc")]
    )
    assert ("x-request-id", "abc") in call.trailing_metadata()


def test_a_failed_call_keeps_its_request_id_and_worker_in_trailers(channel):
    stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
    for project in ("missing", "crash"):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetOnlineFeatures(
                pb.GetOnlineFeaturesRequest(project=project), metadata=[("x-request-id", "r-9")]
            )
        trailers = caught.value.trailing_metadata()
        assert ("x-request-id", "r-9") in trailers
        assert (WORKER_HEADER, str(os.getpid())) in trailers
        # The rich status still travels with them.
        assert (rpc_status.from_call(caught.value) is not None) == (project == "missing")


def test_trailers_name_the_serving_process(channel):
    stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
    _, call = stub.GetOnlineFeatures.with_call(pb.GetOnlineFeaturesRequest(project="ok"))
    assert (WORKER_HEADER, str(os.getpid())) in call.trailing_metadata()


def test_each_call_has_its_own_context(tmp_path):
    """Request id and deadline are the call's; what one call binds never reaches the next,
    even on the same thread (one worker thread here)."""
    running = _start(tmp_path, max_workers=1, max_request_seconds=7.0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
            request = pb.GetOnlineFeaturesRequest(project="context")
            first = stub.GetOnlineFeatures(request, metadata=[("x-request-id", "first")])
            second = stub.GetOnlineFeatures(
                request, metadata=[("x-request-id", "second")], timeout=2.0
            )
    finally:
        running.stop(0)
    assert first.feature_names[:2] == ["first", ""]
    assert second.feature_names[:2] == ["second", ""]
    # The server's cap without a client deadline, the client's deadline with one.
    assert 6.0 < float(first.feature_names[2]) <= 7.0
    # (The grpc-timeout header rounds the client's 2 s up a little.)
    assert 1.0 < float(second.feature_names[2]) <= 2.1
    assert seconds_remaining() is None and request_id() == ""


def _rpc_lines(tmp_path, calls, **settings):
    running = _start(tmp_path, **settings)
    try:
        with (
            structlog.testing.capture_logs() as logged,
            grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
            for project in calls:
                with contextlib.suppress(grpc.RpcError):
                    stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(project=project))
    finally:
        running.stop(0)
    return [line for line in logged if line["event"] == "rpc"]


def test_access_lines_are_sampled_but_failed_and_slow_calls_always_logged(tmp_path):
    lines = _rpc_lines(
        tmp_path,
        ["ok"] * 50 + ["missing", "slow"],
        access_log_sample=0.0,
        slow_rpc_seconds=0.04,
    )
    assert [(line["code"], line["log_level"]) for line in lines] == [
        ("NOT_FOUND", "warning"),
        ("OK", "info"),
    ]
    assert lines[1]["duration_ms"] >= 40


def test_a_sample_of_one_logs_every_call(tmp_path):
    lines = _rpc_lines(tmp_path, ["ok"] * 20, access_log_sample=1.0)
    assert len(lines) == 20


def test_bearer_token_required_except_for_health(tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text("s3cret\nother\n")
    running = _start(tmp_path, token_file=token_file)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
            request = pb.GetOnlineFeaturesRequest(project="ok")
            for metadata in (
                [],
                [("authorization", "Bearer wrong")],
                [("authorization", "s3cret")],
            ):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.GetOnlineFeatures(request, metadata=metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.GetOnlineFeatures(request, metadata=[("authorization", "Bearer other")])
            assert list(ok.feature_names) == ["ok"]
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == 1
    finally:
        running.stop(0)


def test_failing_dependency_turns_health_not_serving(tmp_path):
    def database_down() -> None:
        raise ConnectionError("down")

    running = _start(tmp_path, checks={"postgres": database_down})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE)).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        running.stop(0)


def test_shutdown_turns_health_not_serving(tmp_path):
    running = _start(tmp_path)
    running.health.shutdown()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest()).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        running.server.stop(0)


def test_metrics_endpoint_counts_rpcs_and_errors(tmp_path):
    import urllib.request

    metrics_port = free_port()
    settings = ServiceSettings(grpc_port=0, metrics_port=metrics_port, service_name="serving")
    registration = ServiceRegistration(
        serving_service_pb2_grpc.add_FeatureServingServiceServicer_to_server,
        ScriptedServicer(),
        SERVICE,
    )
    running = create_grpc_server(settings, [registration])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
            stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(project="ok"))
            with pytest.raises(grpc.RpcError):
                stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(project="missing"))
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        method = "/recstack.serving.v1.FeatureServingService/GetOnlineFeatures"
        assert f'recstack_rpc_duration_seconds_count{{code="OK",method="{method}"' in text
        assert f'recstack_rpc_errors_total{{code="NOT_FOUND",method="{method}"' in text
    finally:
        running.stop(0)


def test_tls_server_accepts_only_tls_clients(tmp_path):
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    settings = ServiceSettings(
        grpc_port=0, service_name="serving", tls={"cert_file": cert, "key_file": key}
    )
    registration = ServiceRegistration(
        serving_service_pb2_grpc.add_FeatureServingServiceServicer_to_server,
        ScriptedServicer(),
        SERVICE,
    )
    running = create_grpc_server(settings, [registration])
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{running.port}", credentials) as channel:
            stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
            response = stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(project="tls"), timeout=5)
            assert list(response.feature_names) == ["tls"]
        with grpc.insecure_channel(f"localhost:{running.port}") as channel:
            stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(project="x"), timeout=2)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)
