"""Session fixtures that run recstack services in-process on free ports, over real PostgreSQL.

Each fixture yields the service's gRPC address; tests talk to it only through generated stubs,
on channels from `connect` (the platform's channel factory with the session's client settings).

`pytest --secure-stack` starts every service with TLS (a throwaway CA) and bearer tokens on,
and points their own clients (and `connect`, and the CLI's environment) at the same CA and
token: `make test` runs the e2e tier a second time that way.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from infra.local.tritonserver import TritonServer
from services.materialization.server import MaterializationSettings
from services.materialization.server import create_server as create_materialization
from services.materialization.server import open_deps as open_materialization_deps
from services.recommend.server import RecommendSettings
from services.recommend.server import create_server as create_recommend
from services.recommend.server import open_deps as open_recommend_deps
from services.registry.server import MIGRATIONS as REGISTRY_MIGRATIONS
from services.registry.server import SCHEMA as REGISTRY_SCHEMA
from services.registry.server import RegistryDeps, RegistrySettings
from services.registry.server import create_server as create_registry
from services.serving.server import ServingSettings
from services.serving.server import create_server as create_serving
from services.serving.server import open_deps as open_serving_deps
from shared.channels import ClientSettings, open_channel
from shared.db import create_engine, to_libpq
from shared.migrations import upgrade
from shared.online_store.postgres import PostgresOnlineStore
from tests.openai_api import API_KEY, OTHER_SECRETS, FakeAPI, serve
from tests.security import SourceRoles, StackSecurity
from tests.workers import service_process, session_workers

SECURE_OPTION = "--secure-stack"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        SECURE_OPTION,
        action="store_true",
        default=False,
        help="run the in-process services with TLS and bearer-token authentication on",
    )


@pytest.fixture(scope="session")
def stack_security(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> StackSecurity:
    if request.config.getoption(SECURE_OPTION):
        return StackSecurity.generate(tmp_path_factory.mktemp("pki"))
    return StackSecurity()


@pytest.fixture(scope="session")
def embedding_api() -> Iterator[FakeAPI]:
    """An OpenAI-compatible API for the session's services; it records every request, so it
    also catches any secret sent to it. It answers with or without a key."""
    with serve() as api:
        api.require_key = False
        yield api


@pytest.fixture(scope="session")
def declared_credentials(embedding_api: FakeAPI) -> dict[str, dict[str, Any]]:
    """The credentials the session's serving and materialization services are declared:
    `test_api_key` is bound to `<embedding_api>/bound`; the others never to that server."""
    return {
        "test_api_key": {"secret": API_KEY, "endpoints": [f"{embedding_api.url}/bound"]},
        "elsewhere_key": {
            "secret": OTHER_SECRETS[0],
            "endpoints": ["https://embeddings.example.com/v1"],
        },
        # Declared to the registry as bound to `<embedding_api>/stale`: it was re-bound since.
        "stale_key": {"secret": OTHER_SECRETS[1], "endpoints": ["https://moved.example.com/v1"]},
    }


@pytest.fixture(scope="session")
def file_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Every project of the session may use pytest's temporary directories and the examples;
    the offline store (also a temporary directory) stays split by project all the same."""
    return {"*": [str(tmp_path_factory.getbasetemp()), str(EXAMPLES)]}


@pytest.fixture(scope="session")
def service_overrides(
    stack_security: StackSecurity,
    declared_credentials: dict[str, dict[str, Any]],
    file_roots: dict[str, list[str]],
    offline_store_dir: Path,
) -> dict[str, Any]:
    """Settings every in-process service gets on top of its own."""
    return {
        **stack_security.server_settings(),
        "credential": declared_credentials,
        "files": {"roots": file_roots},
        "offline_store_uri": str(offline_store_dir),
    }


@pytest.fixture(scope="session")
def registry_overrides(
    service_overrides: dict[str, Any],
    declared_credentials: dict[str, dict[str, Any]],
    embedding_api: FakeAPI,
) -> dict[str, Any]:
    """The registry's declarations: names and bindings only, no secrets (it sends none)."""
    credentials = {
        name: {"endpoints": declared["endpoints"]}
        for name, declared in declared_credentials.items()
    }
    credentials["stale_key"] = {"endpoints": [f"{embedding_api.url}/stale"]}
    return {**service_overrides, "credential": credentials}


@pytest.fixture(scope="session")
def client_settings(stack_security: StackSecurity) -> ClientSettings:
    return stack_security.client()


@pytest.fixture(scope="session")
def connect(client_settings: ClientSettings) -> Iterator[Callable[[str], grpc.Channel]]:
    """`connect(address)`: a channel to a session service, closed at the end of the session."""
    channels: list[grpc.Channel] = []

    def open_(address: str) -> grpc.Channel:
        channel = open_channel(address, client_settings)
        channels.append(channel)
        return channel

    yield open_
    for channel in channels:
        channel.close()


@pytest.fixture(scope="session")
def cli_environment(stack_security: StackSecurity) -> Iterator[None]:
    """The in-process CLI reads its credentials from the environment: the session's."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in stack_security.cli_env().items():
            patch.setenv(key, value)
        yield


@pytest.fixture(scope="session")
def source_roles(database_url: str) -> Iterator[SourceRoles]:
    """Project roles for POSTGRES sources: cluster-wide names, unique to this session."""
    roles = SourceRoles(database_url, f"rs{secrets.token_hex(3)}_{{project}}")
    yield roles
    roles.drop_all()


@pytest.fixture(scope="session")
def registry_engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(database_url, pool_size=4)
    upgrade(engine, schema=REGISTRY_SCHEMA, script_location=REGISTRY_MIGRATIONS)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def registry_address(
    registry_engine: sa.Engine,
    database_url: str,
    triton_server: TritonServer,
    registry_overrides: dict[str, Any],
) -> Iterator[str]:
    """The registry; it deploys model versions to the session's Triton."""
    settings = RegistrySettings(
        grpc_port=0,
        database_url=database_url,
        triton_addr=triton_server.grpc_address,
        **registry_overrides,
    )
    online_store = PostgresOnlineStore(to_libpq(database_url))
    running, port = create_registry(settings, RegistryDeps(registry_engine, online_store))
    yield f"127.0.0.1:{port}"
    running.stop(0)
    online_store.close()


@pytest.fixture(scope="session")
def serving_address(
    database_url: str,
    registry_address: str,
    triton_server: TritonServer,
    service_overrides: dict[str, Any],
    client_settings: ClientSettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """Serving in this process; with RECSTACK_WORKERS above 1 in the test run's environment,
    serving as that many worker processes on one port (its own command, tests/workers.py)."""
    values = {
        "database_url": database_url,
        "registry_addr": registry_address,
        # Pushed review texts are embedded by the real model.
        "triton_addr": triton_server.grpc_address,
        "registry_cache_seconds": 0.0,
        **service_overrides,
    }
    workers = session_workers()
    if workers > 1:
        log_path = tmp_path_factory.mktemp("serving-workers") / "serving.log"
        with service_process(
            "serving", {**values, "workers": workers}, log_path, client_settings
        ) as running:
            yield running.address
        return
    settings = ServingSettings(grpc_port=0, workers=1, **values)
    deps = open_serving_deps(settings)
    running, port = create_serving(settings, deps)
    yield f"127.0.0.1:{port}"
    running.stop(0)
    deps.store.close()
    deps.registry.close()


@pytest.fixture(scope="session")
def offline_store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline store of the session's materialization service."""
    return tmp_path_factory.mktemp("offline")


@pytest.fixture(scope="session")
def materialization_address(
    database_url: str,
    registry_address: str,
    offline_store_dir: Path,
    triton_server: TritonServer,
    service_overrides: dict[str, Any],
    source_roles: SourceRoles,
) -> Iterator[str]:
    # One runner per test session: a second service on the same database would claim jobs
    # too, and write them to its own offline store.
    settings = MaterializationSettings(
        grpc_port=0,
        database_url=database_url,
        registry_addr=registry_address,
        triton_addr=triton_server.grpc_address,
        source_role_template=source_roles.template,
        **service_overrides,
    )
    deps = open_materialization_deps(settings)
    running, port = create_materialization(settings, deps)
    yield f"127.0.0.1:{port}"
    running.stop(0)
    deps.online_store.close()
    deps.registry.close()
    deps.engine.dispose()


@pytest.fixture(scope="session")
def recommend_address(
    database_url: str,
    registry_address: str,
    serving_address: str,
    triton_server: TritonServer,
    service_overrides: dict[str, Any],
) -> Iterator[str]:
    settings = RecommendSettings(
        grpc_port=0,
        database_url=database_url,
        registry_addr=registry_address,
        serving_addr=serving_address,
        triton_addr=triton_server.grpc_address,
        registry_cache_seconds=0.0,
        required_models=["ranker"],
        **service_overrides,
    )
    running, port = create_recommend(settings, open_recommend_deps(settings))
    yield f"127.0.0.1:{port}"
    running.stop(0)
