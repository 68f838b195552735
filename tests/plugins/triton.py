"""pytest plugin: one real tritonserver per test session, on the repository's model repository.

`triton_server` (re)builds the ONNX models (idempotent: unchanged files are not rewritten),
starts the `tritonserver` binary from `make setup` on free loopback ports, waits until every
built model is ready, and stops it at the end. Nothing is skipped: without the binary the
fixture fails and says how to install it. `triton_model_server` is a `TritonModelServer`
client connected to it.

`trained_model_repository` is a second, initially empty model repository of the same server,
where tests write model versions (`training.artifacts.write_version`) for the registry to
deploy at run time; a module that deploys uses `unload_trained_models` to unload them when it
is done (each loaded version holds a Python-backend process).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as triton_grpc

from infra.local.tritonserver import (
    DEFAULT_MODEL_REPOSITORY,
    REPO_ROOT,
    TritonServer,
    TritonServerError,
)
from shared.model_server import TritonModelServer

BUILD_MODELS = REPO_ROOT / "infra" / "triton" / "build_models.py"
# Generous: the first start on a cold machine imports onnxruntime in the backend venv.
READY_TIMEOUT_S = 90.0
# Integration tests run in parallel threads; a shared 2-core machine can be slow.
CLIENT_TIMEOUT_S = 10.0


def build_models() -> None:
    result = subprocess.run(
        [sys.executable, str(BUILD_MODELS), str(DEFAULT_MODEL_REPOSITORY)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"building the Triton models failed ({BUILD_MODELS}):\n{result.stdout}{result.stderr}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def trained_model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trained_models")


@pytest.fixture(scope="session")
def triton_server(
    tmp_path_factory: pytest.TempPathFactory, trained_model_repository: Path
) -> Iterator[TritonServer]:
    build_models()
    log_path = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = TritonServer([DEFAULT_MODEL_REPOSITORY, trained_model_repository], log_path=log_path)
    try:
        server.start()
        server.wait_ready(READY_TIMEOUT_S)
    except TritonServerError as exc:
        server.stop()
        pytest.fail(f"tritonserver did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton_model_server(triton_server: TritonServer) -> Iterator[TritonModelServer]:
    with TritonModelServer(triton_server.grpc_address, timeout_s=CLIENT_TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="module")
def unload_trained_models(
    triton_server: TritonServer, trained_model_repository: Path
) -> Iterator[None]:
    yield
    client = triton_grpc.InferenceServerClient(triton_server.grpc_address)
    try:
        for path in trained_model_repository.iterdir():
            if client.is_model_ready(path.name):
                client.unload_model(path.name)
    finally:
        client.close()
