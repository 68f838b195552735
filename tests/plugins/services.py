"""Session fixtures that run recstack services in-process on free ports, over real PostgreSQL.

Each fixture yields the service's gRPC address; tests talk to it only through generated stubs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
from shared.db import create_engine, to_libpq
from shared.migrations import upgrade
from shared.online_store.postgres import PostgresOnlineStore


@pytest.fixture(scope="session")
def registry_engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(database_url, pool_size=4)
    upgrade(engine, schema=REGISTRY_SCHEMA, script_location=REGISTRY_MIGRATIONS)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def registry_address(
    registry_engine: sa.Engine, database_url: str, triton_server: TritonServer
) -> Iterator[str]:
    """The registry; it deploys model versions to the session's Triton."""
    settings = RegistrySettings(
        grpc_port=0, database_url=database_url, triton_addr=triton_server.grpc_address
    )
    online_store = PostgresOnlineStore(to_libpq(database_url))
    running, port = create_registry(settings, RegistryDeps(registry_engine, online_store))
    yield f"127.0.0.1:{port}"
    running.stop(0)
    online_store.close()


@pytest.fixture(scope="session")
def serving_address(
    database_url: str, registry_address: str, triton_server: TritonServer
) -> Iterator[str]:
    settings = ServingSettings(
        grpc_port=0,
        database_url=database_url,
        registry_addr=registry_address,
        # Pushed review texts are embedded by the real model.
        triton_addr=triton_server.grpc_address,
        registry_cache_seconds=0.0,
    )
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
    database_url: str, registry_address: str, offline_store_dir: Path, triton_server: TritonServer
) -> Iterator[str]:
    # One runner per test session: a second service on the same database would claim jobs
    # too, and write them to its own offline store.
    settings = MaterializationSettings(
        grpc_port=0,
        database_url=database_url,
        registry_addr=registry_address,
        offline_store_uri=str(offline_store_dir),
        triton_addr=triton_server.grpc_address,
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
    database_url: str, registry_address: str, serving_address: str, triton_server: TritonServer
) -> Iterator[str]:
    settings = RecommendSettings(
        grpc_port=0,
        database_url=database_url,
        registry_addr=registry_address,
        serving_addr=serving_address,
        triton_addr=triton_server.grpc_address,
        registry_cache_seconds=0.0,
        required_models=["ranker"],
    )
    running, port = create_recommend(settings, open_recommend_deps(settings))
    yield f"127.0.0.1:{port}"
    running.stop(0)
