"""Model versions through the real registry service, deployed to the real Triton.

Each test registers its own project's model versions, writes their artifacts into the
session's trained-model repository the way training does (`training.artifacts`), and drives
deployment through the registry's gRPC API only; Triton is asked directly only to check
what is loaded and to score.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from recstack.registry.v1 import model_pb2, registry_service_pb2_grpc
from recstack.registry.v1 import registry_service_pb2 as pb

from infra.local.ports import free_port
from services.registry.server import RegistryDeps, RegistrySettings
from services.registry.server import create_server as create_registry
from shared.channels import open_channel
from shared.errors import FailedPrecondition, NotFound
from shared.model_server import TritonModelServer
from shared.registry_client import RegistryClient
from tests.models import V2_INPUTS, batch, expected_scores
from tests.registered_models import FG, FG_WITH_HOUR, RegisteredModel

State = model_pb2.ModelVersion.State
SCORE_OUTPUTS = ["probs_ctr", "probs_cvr"]
pytestmark = pytest.mark.usefixtures("unload_trained_models")


@pytest.fixture(scope="module")
def stub(registry_address, connect):
    with connect(registry_address) as channel:
        yield registry_service_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def triton(triton_server) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(triton_server.grpc_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def model_server(triton_server) -> Iterator[TritonModelServer]:
    with TritonModelServer(triton_server.grpc_address, timeout_s=10.0) as server:
        yield server


@pytest.fixture
def model(stub, trained_model_repository) -> RegisteredModel:
    return RegisteredModel(stub, trained_model_repository)


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _reason(error: grpc.RpcError) -> str:
    for detail in rpc_status.from_call(error).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def _scores(model_server, version, seed=7) -> tuple[dict, dict]:
    spec = version.signature
    inputs = batch(spec, 16, seed)
    got = model_server.infer(version.triton_model_name, inputs, SCORE_OUTPUTS, version="1")
    return got, expected_scores(spec, inputs, seed=version.version)


def test_register_deploy_activate_a_second_version_and_roll_back(model, triton, model_server):
    first = model.add_version()
    assert (first.version, first.state) == (1, State.STATE_REGISTERED)
    assert first.triton_model_name == f"{model.project}__ranker__v1"

    deployed = model.deploy(first)
    assert deployed.state == State.STATE_DEPLOYED
    assert triton.is_model_ready(first.triton_model_name, "1")
    activated = model.activate(first)
    assert (activated.model.active_version, activated.model_version.state) == (
        1,
        State.STATE_ACTIVE,
    )

    # The second version's FG adds a context feature: another input signature, loaded beside
    # the first (each version is its own Triton model).
    second = model.add_version(V2_INPUTS, FG_WITH_HOUR)
    activated = model.activate(second, model.get().etag)
    assert activated.model.active_version == 2
    assert list(activated.model.rollback_versions) == [1]
    assert model.states() == {2: "ACTIVE", 1: "DEPLOYED"}
    for version in (first, second):
        got, want = _scores(model_server, model.version(version.version))
        for output in SCORE_OUTPUTS:
            np.testing.assert_allclose(got[output], want[output], rtol=1e-5, atol=1e-6)

    rolled_back = model.rollback()
    assert rolled_back.model.active_version == 1
    assert rolled_back.model_version.state == State.STATE_ACTIVE
    assert model.states() == {2: "DEPLOYED", 1: "ACTIVE"}
    assert triton.is_model_ready(second.triton_model_name, "1")
    error = _error(model.rollback)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(error) == "NO_PREVIOUS_VERSION"


def test_rollback_with_no_previous_version_is_failed_precondition(model):
    error = _error(model.rollback)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no previous version" in error.details()


def test_fg_config_naming_a_feature_the_set_lacks_is_invalid_argument(model):
    fg = {"features": [*FG["features"][:2], {**FG["features"][2], "expression": "user:height"}]}
    error = _error(lambda: model.add_version(fg=fg, write=False))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = [
        violation.field
        for detail in rpc_status.from_call(error).details
        if detail.Unpack(bad_request := error_details_pb2.BadRequest())
        for violation in bad_request.field_violations
    ]
    assert violations == ["model_version.fg_config.features[2].expression"]
    assert "input user:height is not a feature" in error.details()
    assert model.get().last_version == 0


def test_a_version_whose_artifact_is_missing_fails(model):
    version = model.add_version(write=False)
    error = _error(lambda: model.deploy(version))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(error) == "MODEL_LOAD_FAILED"
    failed = model.version(1)
    assert failed.state == State.STATE_FAILED
    assert failed.state_message.startswith(
        f"Triton could not load it: failed to load '{version.triton_model_name}'"
    )
    assert error.details() == f"{version.name}: {failed.state_message}"


def test_a_signature_mismatch_fails_deploy_and_activation(model, triton):
    version = model.add_version(artifact_inputs=V2_INPUTS)
    for call in (model.deploy, model.activate):
        error = _error(lambda call=call: call(version))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _reason(error) == "SIGNATURE_MISMATCH"
        assert "input 'hour' is not in the signature" in error.details()
    failed = model.version(1)
    assert failed.state == State.STATE_FAILED
    assert "input 'hour' is not in the signature" in failed.state_message
    assert model.get().active_version == 0
    assert not triton.is_model_ready(version.triton_model_name)


@pytest.fixture(scope="module")
def unreachable_triton_registry(registry_engine, database_url) -> Iterator[str]:
    """A registry on the same database whose Triton address has nothing listening."""
    settings = RegistrySettings(
        grpc_port=0, database_url=database_url, triton_addr=f"127.0.0.1:{free_port()}"
    )
    running, port = create_registry(settings, RegistryDeps(registry_engine))
    with open_channel(f"127.0.0.1:{port}") as channel:
        yield registry_service_pb2_grpc.RegistryServiceStub(channel)
    running.stop(0)


def test_deploy_while_triton_is_unreachable_changes_nothing(model, unreachable_triton_registry):
    first, second = model.add_version(), model.add_version()
    model.activate(first)
    before = model.get()
    for call in (
        lambda: unreachable_triton_registry.DeployModelVersion(
            pb.DeployModelVersionRequest(name=second.name)
        ),
        lambda: unreachable_triton_registry.ActivateModelVersion(
            pb.ActivateModelVersionRequest(name=second.name)
        ),
    ):
        error = _error(call)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "unreachable" in error.details()
    assert model.get() == before
    assert model.states() == {2: "REGISTERED", 1: "ACTIVE"}


def test_concurrent_activations_leave_exactly_one_active(model):
    versions = [model.add_version() for _ in range(3)]
    with ThreadPoolExecutor(len(versions)) as pool:
        list(pool.map(model.deploy, versions))
    order = [versions[i % 3] for i in range(9)]
    random.Random(13).shuffle(order)
    barrier = threading.Barrier(len(order))

    def activate(version) -> grpc.StatusCode:
        barrier.wait()
        try:
            model.activate(version)
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(len(order)) as pool:
        codes = list(pool.map(activate, order))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED}
    assert grpc.StatusCode.OK in codes
    states = model.states()
    active = [number for number, state in states.items() if state == "ACTIVE"]
    assert len(active) == 1
    assert model.get().active_version == active[0]
    assert sorted(states.values()) == ["ACTIVE", "DEPLOYED", "DEPLOYED"]


@pytest.fixture(scope="module")
def eager_retiring_registry(registry_engine, database_url, triton_server) -> Iterator[str]:
    """A registry that retires idle versions at once (no grace) on the session's Triton."""
    settings = RegistrySettings(
        grpc_port=0,
        database_url=database_url,
        triton_addr=triton_server.grpc_address,
        model_retire_grace_seconds=0,
    )
    running, port = create_registry(settings, RegistryDeps(registry_engine))
    with open_channel(f"127.0.0.1:{port}") as channel:
        yield registry_service_pb2_grpc.RegistryServiceStub(channel)
    running.stop(0)


def test_versions_beyond_the_rollback_target_are_retired_and_reloaded(
    model, eager_retiring_registry, triton
):
    model.stub = eager_retiring_registry
    versions = [model.add_version() for _ in range(3)]
    with ThreadPoolExecutor(len(versions)) as pool:
        list(pool.map(model.deploy, versions))
    for version in versions:
        model.activate(version)
    assert model.states() == {3: "ACTIVE", 2: "DEPLOYED", 1: "RETIRED"}
    assert not triton.is_model_ready(versions[0].triton_model_name)
    model.rollback()
    # The version rolled back from is retired at once; the new rollback target stays retired
    # until a rollback needs it.
    assert model.states() == {3: "RETIRED", 2: "ACTIVE", 1: "RETIRED"}
    assert not triton.is_model_ready(versions[2].triton_model_name)
    assert model.rollback().model.active_version == 1
    assert model.states() == {3: "RETIRED", 2: "RETIRED", 1: "ACTIVE"}
    assert triton.is_model_ready(versions[0].triton_model_name)


def test_registry_client_reads_the_active_version(model, registry_address):
    client = RegistryClient(registry_address, refresh_seconds=0)
    with pytest.raises(FailedPrecondition, match="has no active version"):
        client.active_model_version(model.project, "ranker")
    with pytest.raises(NotFound):
        client.active_model_version(model.project, "nope")
    first = model.add_version()
    head = model.stub.ListChanges(pb.ListChangesRequest(page_size=1)).head_revision
    model.activate(first)
    changes = model.stub.ListChanges(pb.ListChangesRequest(since_revision=head)).changes
    # Activation wrote the version and the model, so both names reach cached readers.
    assert {first.name, model.name} <= {change.name for change in changes}
    assert client.active_model_version(model.project, "ranker").version == 1
    assert client.model(model.project, "ranker").active_version == 1
    assert client.model_version(model.project, "ranker", 1).state == State.STATE_ACTIVE
    client.close()


def test_a_looping_client_sees_no_failure_while_versions_switch(
    model, registry_address, model_server
):
    """Each call resolves the active version through the cached client, then scores on it."""
    first, second = model.add_version(), model.add_version(V2_INPUTS, FG_WITH_HOUR)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(model.deploy, [first, second]))
    model.activate(first)
    client = RegistryClient(registry_address, refresh_seconds=0.05)
    stop = threading.Event()
    served: list[int] = []
    failures: list[str] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                version = client.active_model_version(model.project, "ranker")
                got, want = _scores(model_server, version, seed=len(served))
                np.testing.assert_allclose(
                    got["probs_ctr"], want["probs_ctr"], rtol=1e-5, atol=1e-6
                )
                served.append(version.version)
            except Exception as error:  # every kind of failure counts
                failures.append(f"{type(error).__name__}: {error}")

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        steps = [(lambda: model.activate(second), 2), (model.rollback, 1)]
        for step, expected in [*steps, steps[0]]:
            step()
            # Until the client has served on the new version for a while.
            deadline = time.monotonic() + 10
            while served[-20:] != [expected] * 20 and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        stop.set()
        worker.join()
        client.close()
    assert failures == []
    assert served[-1] == 2
    switches = sum(1 for a, b in itertools.pairwise(served) if a != b)
    assert switches == 3


def test_triton_runs_the_warmup_samples_at_load(model, triton):
    """A truncated warmup sample fails the load: Triton reads the files write_version wrote."""
    version = model.add_version()
    (model.repository / version.triton_model_name / "warmup" / "genres").write_bytes(b"\0" * 5)
    error = _error(lambda: model.deploy(version))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "warmup setting expects 24 bytes" in model.version(1).state_message
    # A version that failed to load leaves the server, and the other models, ready.
    assert triton.is_server_ready()
    assert triton.is_model_ready("ranker")
