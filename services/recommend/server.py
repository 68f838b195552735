"""Recommend service entry point: settings → logging → adapters → server.

`create_server` takes every adapter in `RecommendDeps`, so tests build the service on their
own database, online store, registry, model server and user-feature reader (fakes or real)
and bind port 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from pydantic import Field
from recstack.recommend.v1 import recommend_service_pb2, recommend_service_pb2_grpc

from services.recommend.adapters.online_user_features import OnlineStoreUserFeatures
from services.recommend.adapters.registry import RegistryDefinitions
from services.recommend.adapters.repository import SCHEMA, postgres_unit_of_work
from services.recommend.adapters.serving_client import ServingUserFeatures
from services.recommend.catalog import Catalog
from services.recommend.item_cache import ItemCache
from services.recommend.pipeline import Definitions, StageDeps, StageRegistry
from services.recommend.recommender import Recommender
from services.recommend.references import check_references
from services.recommend.servicer import RecommendServicer
from services.recommend.stages import PipelineCache, default_stage_registry
from services.recommend.user_features import UserFeatureReader
from shared.bootstrap import open_database, run
from shared.db import ping, to_libpq
from shared.grpc_server import RunningServer, ServiceRegistration, create_grpc_server
from shared.model_server import ModelServer, TritonModelServer, check_models_ready
from shared.online_store import OnlineStore
from shared.online_store.postgres import PostgresOnlineStore
from shared.registry_client import RegistryClient
from shared.settings import ServiceSettings, available_cores

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE = recommend_service_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name


class RecommendSettings(ServiceSettings):
    service_name: str = "recommend"
    grpc_port: int = 50054
    # One server process per core this process may use (shared/workers.py); each keeps its
    # own item cache, so memory grows with the workers.
    workers: int = Field(default_factory=available_cores, ge=1, le=256)
    # Cached item features: the rows written since the last refresh are read this often ...
    item_cache_incremental_seconds: float = Field(default=2.0, gt=0)
    # ... and every row this often (deletions, TTL expiry, writes that committed late).
    item_cache_full_seconds: float = Field(default=300.0, gt=0)
    # Scenes and experiments are served from memory; another replica's write to them is seen
    # within this many seconds (this replica's at once).
    scene_cache_seconds: float = Field(default=1.0, ge=0)
    # Per inference call; Triton answers a 500-item ranking in about a millisecond on CPU.
    triton_timeout_seconds: float = Field(default=2.0, gt=0)
    # Where user features are read: straight from the online store this service already
    # holds (one round trip), or through the serving service's GetOnlineFeatures (a gRPC hop
    # more; for deployments that keep recommend off the store's user tables).
    user_features_source: Literal["online_store", "serving"] = "online_store"
    # Per user-feature read from the serving service.
    serving_timeout_seconds: float = Field(default=2.0, gt=0)
    # Latest registry definitions are re-read at most this often.
    registry_cache_seconds: float = Field(default=5.0, ge=0)
    # Models that must be loaded before the service reports SERVING (JSON list in the env).
    required_models: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class RecommendDeps:
    """The adapters the service runs on; `server.py` opens real ones, tests may pass fakes."""

    engine: sa.Engine
    online_store: OnlineStore
    registry: Definitions
    model_server: ModelServer
    user_features: UserFeatureReader
    # None: the built-in stages. Tests and plugins pass a registry with more.
    stages: StageRegistry | None = None
    # Run after the server stops (closing clients the caller handed over).
    on_stop: tuple[Callable[[], None], ...] = ()


def create_server(settings: RecommendSettings, deps: RecommendDeps) -> tuple[RunningServer, int]:
    """Build the service on `deps`, bind `settings.grpc_port` (0: a free port) and start it."""
    stages = deps.stages or default_stage_registry()
    cache = ItemCache(
        deps.online_store,
        deps.registry,
        incremental_seconds=settings.item_cache_incremental_seconds,
        full_seconds=settings.item_cache_full_seconds,
    )
    stage_deps = StageDeps(cache, deps.user_features, deps.model_server, deps.registry)
    catalog = Catalog(
        partial(postgres_unit_of_work, deps.engine),
        stages,
        refresh_seconds=settings.scene_cache_seconds,
        check_references=partial(check_references, stages=stages, definitions=deps.registry),
    )
    recommender = Recommender(catalog, PipelineCache(stages, stage_deps))
    registration = ServiceRegistration(
        recommend_service_pb2_grpc.add_RecommendServiceServicer_to_server,
        RecommendServicer(catalog, recommender),
        SERVICE,
    )
    readiness = {
        "postgres": partial(ping, deps.engine),
        "triton": partial(check_models_ready, deps.model_server, settings.required_models),
    }
    running = create_grpc_server(settings, [registration], readiness_checks=readiness)
    cache.start(warm=recommender.item_views_in_use)
    running.on_stop += [cache.stop, *deps.on_stop]
    return running, running.port


def open_deps(settings: RecommendSettings) -> RecommendDeps:
    """Real adapters: PostgreSQL (migrated), the registry, serving and Triton."""
    engine = open_database(settings, SCHEMA, MIGRATIONS)
    store = PostgresOnlineStore(
        to_libpq(engine.url.render_as_string(hide_password=False)),
        max_size=settings.db_pool_size,
    )
    client = settings.client_settings()
    registry = RegistryDefinitions(
        RegistryClient(
            settings.registry_addr, client=client, refresh_seconds=settings.registry_cache_seconds
        )
    )
    model_server = TritonModelServer(settings.triton_addr, settings.triton_timeout_seconds)
    user_features = _user_features(settings, store, registry)
    return RecommendDeps(
        engine,
        store,
        registry,
        model_server,
        user_features,
        on_stop=(
            user_features.close,
            model_server.close,
            registry.close,
            store.close,
            engine.dispose,
        ),
    )


def _user_features(
    settings: RecommendSettings, store: OnlineStore, registry: RegistryDefinitions
) -> OnlineStoreUserFeatures | ServingUserFeatures:
    if settings.user_features_source == "serving":
        return ServingUserFeatures(
            settings.serving_addr,
            client=settings.client_settings(),
            timeout_seconds=settings.serving_timeout_seconds,
        )
    return OnlineStoreUserFeatures(store, registry, plan_seconds=settings.registry_cache_seconds)


def main() -> None:
    settings = RecommendSettings()
    run(settings, lambda: create_server(settings, open_deps(settings))[0])


if __name__ == "__main__":
    main()
