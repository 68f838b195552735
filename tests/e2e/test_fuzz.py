"""Descriptor-driven fuzzing of every RPC of every service, through the real servers.

For each method found in the generated modules, Hypothesis builds requests from the request's
descriptor (tests/fuzz.py) and sends them to the session's in-process services. Properties:
no status is INTERNAL or UNKNOWN; every call answers within its deadline; the services stay
SERVING; and a request that failed changed neither the registry (its change log) nor the
materialization jobs. `RECSTACK_FUZZ_EXAMPLES` sets the examples per RPC (`make fuzz` runs
many more than `make test`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import FUZZ_PROJECT, Rpc, every_rpc, messages

EXAMPLES = int(os.environ.get("RECSTACK_FUZZ_EXAMPLES", "200"))
DEADLINE_S = 20.0
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
RPCS = every_rpc()
# A streamed request is a few messages.
STREAM_MESSAGES = 3


@pytest.fixture(scope="module")
def addresses(
    registry_address: str,
    materialization_address: str,
    serving_address: str,
    recommend_address: str,
) -> dict[str, str]:
    return {
        "recstack.registry.v1.RegistryService": registry_address,
        "recstack.materialization.v1.MaterializationService": materialization_address,
        "recstack.serving.v1.FeatureServingService": serving_address,
        "recstack.recommend.v1.RecommendService": recommend_address,
    }


@pytest.fixture(scope="module")
def state(database_url: str) -> Iterator[Callable[[], tuple[int, int, str]]]:
    """The registry's head revision, the number of jobs and their newest update."""
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))

    def read() -> tuple[int, int, str]:
        with engine.connect() as conn:
            head = conn.execute(sa.text("SELECT coalesce(max(revision), 0) FROM registry.changes"))
            jobs = conn.execute(
                sa.text(
                    "SELECT count(*), coalesce(max(create_time)::text, '') "
                    "FROM materialization.jobs WHERE project = :project"
                ),
                {"project": FUZZ_PROJECT},
            ).one()
            return int(head.scalar_one()), int(jobs[0]), str(jobs[1])

    yield read
    engine.dispose()


def test_every_service_of_the_contract_is_fuzzed(addresses: dict[str, str]) -> None:
    assert {rpc.service for rpc in RPCS} == set(addresses)
    assert len(RPCS) >= 60


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_no_request_reaches_internal(
    rpc: Rpc,
    addresses: dict[str, str],
    connect: Callable[[str], grpc.Channel],
    state: Callable[[], tuple[int, int, str]],
) -> None:
    channel = connect(addresses[rpc.service])
    call = _callable(channel, rpc)
    requests = messages(rpc.method.input_type)
    if rpc.method.client_streaming:
        requests = st.lists(requests, min_size=1, max_size=STREAM_MESSAGES)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=os.environ.get("RECSTACK_FUZZ_RANDOM", "") == "",
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests)
    def property_(request: object) -> None:
        before = state()
        code, details = _send(call, rpc, request)
        assert code not in FORBIDDEN, f"{rpc} answered {code.name}: {details}\n{request}"
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED or rpc.method.server_streaming, details
        if code != grpc.StatusCode.OK:
            assert state() == before, f"{rpc} failed with {code.name} but changed state"

    property_()
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=rpc.service), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def _callable(channel: grpc.Channel, rpc: Rpc) -> Callable[..., object]:
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(rpc.method.client_streaming, rpc.method.server_streaming)]
    return kind(
        rpc.path,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=rpc.response_class.FromString,
    )


def _send(call: Callable[..., object], rpc: Rpc, request: object) -> tuple[grpc.StatusCode, str]:
    payload = iter(request) if rpc.method.client_streaming else request  # type: ignore[call-overload]
    try:
        response = call(payload, timeout=DEADLINE_S)
        if rpc.method.server_streaming:
            # A job watch runs until the job ends: the first answers are enough.
            for index, _ in enumerate(response):  # type: ignore[attr-defined]
                if index >= 2:
                    response.cancel()  # type: ignore[attr-defined]
                    break
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK, ""
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""
