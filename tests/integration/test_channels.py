"""The client-channel factory against real servers: TLS, tokens, deadlines, retries, the CLI."""

from __future__ import annotations

import threading

import grpc
import pytest
from recstack.serving.v1 import serving_service_pb2 as pb
from recstack.serving.v1 import serving_service_pb2_grpc

from cli.connection import CliSettings, Connection, Service
from cli.errors import UsageError
from shared.channels import ClientSettings, open_channel
from shared.errors import ConfigurationError, Internal, Unavailable
from shared.grpc_server import ServiceRegistration, create_grpc_server
from shared.healthcheck import check
from shared.settings import ServiceSettings
from tests.security import StackSecurity

SERVICE = "recstack.serving.v1.FeatureServingService"


class Recorder(serving_service_pb2_grpc.FeatureServingServiceServicer):
    """Answers by project: `unavailable-N` fails N times, `internal` always; records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None, str]] = []
        self._lock = threading.Lock()

    def GetOnlineFeatures(self, request, context):
        metadata = dict(context.invocation_metadata())
        with self._lock:
            self.calls.append(
                (request.project, context.time_remaining(), metadata.get("authorization", ""))
            )
            seen = sum(1 for project, _, _ in self.calls if project == request.project)
        failures = request.project.removeprefix("unavailable-")
        if failures != request.project and seen <= int(failures):
            raise Unavailable("not yet")
        if request.project == "internal":
            raise Internal("broken")
        return pb.GetOnlineFeaturesResponse(feature_names=[request.project])


@pytest.fixture(scope="module")
def security(tmp_path_factory):
    return StackSecurity.generate(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(security):
    recorder = Recorder()
    settings = ServiceSettings(grpc_port=0, service_name="serving", **security.server_settings())
    registration = ServiceRegistration(
        serving_service_pb2_grpc.add_FeatureServingServiceServicer_to_server, recorder, SERVICE
    )
    running = create_grpc_server(settings, [registration])
    yield f"127.0.0.1:{running.port}", recorder
    running.stop(0)


def _call(channel, project, **kwargs):
    stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
    return stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(project=project), **kwargs)


def test_tls_and_the_token_file_reach_the_server(server, security):
    address, recorder = server
    with open_channel(address, security.client()) as channel:
        assert list(_call(channel, "ok").feature_names) == ["ok"]
    assert recorder.calls[-1][2] == f"Bearer {security.token}"


def test_a_call_without_a_deadline_gets_the_default_one(server, security):
    address, recorder = server
    with open_channel(address, security.client(timeout_seconds=7.0)) as channel:
        _call(channel, "default")
        _call(channel, "own", timeout=2.0)
    remaining = {project: seconds for project, seconds, _ in recorder.calls}
    assert 6.0 < remaining["default"] < 7.5
    assert remaining["own"] < 2.5


def test_unavailable_is_retried_and_nothing_else(server, security):
    address, recorder = server
    with open_channel(address, security.client(max_attempts=3)) as channel:
        assert list(_call(channel, "unavailable-2").feature_names) == ["unavailable-2"]
        with pytest.raises(grpc.RpcError) as caught:
            _call(channel, "internal")
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.RpcError) as caught:
            _call(channel, "unavailable-5")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    attempts = [project for project, _, _ in recorder.calls]
    assert attempts.count("unavailable-2") == 3
    assert attempts.count("internal") == 1
    assert attempts.count("unavailable-5") == 3


def test_clients_without_the_ca_or_the_token_are_refused(server, security, tmp_path):
    address, _ = server
    plaintext = ClientSettings(max_attempts=1)
    other_ca = StackSecurity.generate(tmp_path).client(token_file=security.token_file)
    wrong_token = tmp_path / "wrong.txt"
    wrong_token.write_text("not-the-token\n")
    for client, code in (
        (plaintext, grpc.StatusCode.UNAVAILABLE),
        (other_ca.model_copy(update={"max_attempts": 1}), grpc.StatusCode.UNAVAILABLE),
        (security.client(token_file=None), grpc.StatusCode.UNAUTHENTICATED),
        (security.client(token_file=wrong_token), grpc.StatusCode.UNAUTHENTICATED),
    ):
        with open_channel(address, client) as channel, pytest.raises(grpc.RpcError) as caught:
            _call(channel, "x", timeout=5)
        assert caught.value.code() == code, client
    # Health stays open to probes that hold the CA but no token.
    assert check(address, client=security.client(token_file=None)) == "SERVING"
    assert check(address) == "UNREACHABLE"


def test_unreadable_files_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read the token file"):
        open_channel("127.0.0.1:1", ClientSettings(token_file=tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("\n\n")
    with pytest.raises(ConfigurationError, match="holds no token"):
        open_channel("127.0.0.1:1", ClientSettings(token_file=empty))
    with pytest.raises(ConfigurationError, match="cannot read the TLS CA file"):
        open_channel("127.0.0.1:1", ClientSettings(tls_ca_file=tmp_path / "missing.pem"))


def test_services_send_the_first_token_of_their_own_token_file(security):
    settings = ServiceSettings(auth_token_file=security.token_file)
    assert settings.client_settings().token_file == security.token_file
    explicit = ServiceSettings(
        auth_token_file=security.token_file, client={"token_file": "/run/other"}
    )
    assert str(explicit.client_settings().token_file) == "/run/other"


def test_the_cli_connects_with_its_token_file_and_ca(server, security, monkeypatch):
    address, recorder = server
    monkeypatch.setenv("RECSTACK_AUTH_TOKEN_FILE", str(security.token_file))
    monkeypatch.setenv("RECSTACK_TLS_CA_FILE", str(security.ca_file))
    serving = Service(
        "serving",
        "--serving",
        "RECSTACK_SERVING_ADDR",
        serving_service_pb2_grpc.FeatureServingServiceStub,
    )
    with Connection(CliSettings(), address, serving) as connection:
        response = connection.call("GetOnlineFeatures", pb.GetOnlineFeaturesRequest(project="cli"))
    assert list(response.feature_names) == ["cli"]
    assert recorder.calls[-1][2] == f"Bearer {security.token}"
    monkeypatch.setenv("RECSTACK_AUTH_TOKEN_FILE", str(security.token_file.with_name("nope")))
    with pytest.raises(UsageError, match="cannot read the token file"):
        Connection(CliSettings(), address, serving)
