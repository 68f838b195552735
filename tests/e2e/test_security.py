"""Security regression tests against the four real services, in both runs of the e2e tier:
plain, and `--secure-stack` (TLS and bearer tokens on every service)."""

from __future__ import annotations

import grpc
import pytest
from recstack.materialization.v1 import materialization_service_pb2 as mpb
from recstack.materialization.v1 import materialization_service_pb2_grpc
from recstack.recommend.v1 import recommend_service_pb2 as cpb
from recstack.recommend.v1 import recommend_service_pb2_grpc
from recstack.registry.v1 import registry_service_pb2 as rpb
from recstack.registry.v1 import registry_service_pb2_grpc
from recstack.serving.v1 import serving_service_pb2 as spb
from recstack.serving.v1 import serving_service_pb2_grpc

from shared.channels import ClientSettings, open_channel
from shared.healthcheck import check


@pytest.fixture(scope="module")
def calls(registry_address, materialization_address, serving_address, recommend_address):
    """One cheap read per service: (address, call on a channel)."""
    return [
        (
            registry_address,
            lambda ch: registry_service_pb2_grpc.RegistryServiceStub(ch).ListProjects(
                rpb.ListProjectsRequest(), timeout=10
            ),
        ),
        (
            materialization_address,
            lambda ch: materialization_service_pb2_grpc.MaterializationServiceStub(ch).ListJobs(
                mpb.ListJobsRequest(parent="projects/none/featureViews/none"), timeout=10
            ),
        ),
        (
            serving_address,
            lambda ch: serving_service_pb2_grpc.FeatureServingServiceStub(ch).GetOnlineFeatures(
                spb.GetOnlineFeaturesRequest(project="none", features=["v:f"]), timeout=10
            ),
        ),
        (
            recommend_address,
            lambda ch: recommend_service_pb2_grpc.RecommendServiceStub(ch).ListScenes(
                cpb.ListScenesRequest(), timeout=10
            ),
        ),
    ]


def _code(address, client, call):
    with open_channel(address, client) as channel:
        try:
            call(channel)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_only_clients_with_the_stacks_ca_and_token_get_through(calls, stack_security):
    """Secure: plaintext and a wrong CA never connect, no or a wrong token is UNAUTHENTICATED,
    health stays open. Plain: every client gets through."""
    plaintext = ClientSettings(max_attempts=1)
    for address, call in calls:
        assert check(address, client=stack_security.client()) == "SERVING"
        # The stack's own credentials always pass authentication (NOT_FOUND etc. are answers).
        assert _code(address, stack_security.client(), call) not in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.UNAVAILABLE,
        )
        if not stack_security.enabled:
            assert _code(address, plaintext, call) != grpc.StatusCode.UNAUTHENTICATED
            continue
        assert _code(address, plaintext, call) == grpc.StatusCode.UNAVAILABLE
        assert check(address) == "UNREACHABLE"
        no_token = stack_security.client(token_file=None)
        assert _code(address, no_token, call) == grpc.StatusCode.UNAUTHENTICATED
