"""Upstream statuses keep their meaning: serving whose registry refuses its token answers
INTERNAL (not a retryable UNAVAILABLE), naming the registry's answer."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

from services.registry.server import RegistryDeps, RegistrySettings
from services.registry.server import create_server as create_registry
from services.serving.server import ServingSettings
from services.serving.server import create_server as create_serving
from services.serving.server import open_deps as open_serving_deps
from shared.channels import ClientSettings, open_channel


@pytest.fixture(scope="module")
def secured_registry(registry_engine, database_url, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "registry.txt"
    tokens.write_text("the-registry-token\n")
    settings = RegistrySettings(grpc_port=0, database_url=database_url, auth_token_file=tokens)
    running, port = create_registry(settings, RegistryDeps(registry_engine))
    yield f"127.0.0.1:{port}", tokens
    running.stop(0)


def _serving(database_url, registry_address, token_file):
    settings = ServingSettings(
        grpc_port=0,
        database_url=database_url,
        registry_addr=registry_address,
        registry_cache_seconds=0.0,
        client={"token_file": token_file, "max_attempts": 1},
    )
    deps = open_serving_deps(settings)
    running, port = create_serving(settings, deps)
    return running, deps, f"127.0.0.1:{port}"


def _read(address):
    with open_channel(address, ClientSettings(max_attempts=1)) as channel:
        stub = serving_service_pb2_grpc.FeatureServingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetOnlineFeatures(
                spb.GetOnlineFeaturesRequest(project="nowhere", features=["v:f"]), timeout=10
            )
    return caught.value


def _reason(error):
    for detail in rpc_status.from_call(error).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason, dict(info.metadata)
    return "", {}


@pytest.mark.parametrize(
    ("token", "code", "reason"),
    [
        ("the-registry-token", grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        ("a-wrong-token", grpc.StatusCode.INTERNAL, "UPSTREAM_UNAUTHENTICATED"),
    ],
)
def test_serving_keeps_the_meaning_of_the_registrys_answer(
    secured_registry, database_url, tmp_path, token, code, reason
):
    address, _ = secured_registry
    token_file = tmp_path / "token.txt"
    token_file.write_text(token)
    running, deps, serving = _serving(database_url, address, token_file)
    try:
        error = _read(serving)
    finally:
        running.stop(0)
        deps.store.close()
        deps.registry.close()
    assert error.code() == code, error.details()
    got_reason, metadata = _reason(error)
    assert got_reason == reason
    if code == grpc.StatusCode.INTERNAL:
        assert "answered UNAUTHENTICATED" in error.details()
        assert metadata["upstream_code"] == "UNAUTHENTICATED"
        assert "a-wrong-token" not in error.details()
