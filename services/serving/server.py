"""Serving service entry point: settings → logging → online store → server."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from pydantic import Field

from services.serving.features import FeatureServer
from services.serving.metrics import default_metrics
from services.serving.servicer import SERVICE, FeatureServingServicer, add_to_server
from shared.bootstrap import run
from shared.db import resolve_database_url, to_libpq
from shared.embeddings import Embedder, PostgresEmbeddingCache, migrate_cache
from shared.grpc_server import RunningServer, ServiceRegistration, create_grpc_server
from shared.online_store.postgres import PostgresOnlineStore
from shared.registry_client import RegistryClient
from shared.settings import ServiceSettings, available_cores


class ServingSettings(ServiceSettings):
    service_name: str = "serving"
    grpc_port: int = 50053
    # One server process per core this process may use (shared/workers.py).
    workers: int = Field(default_factory=available_cores, ge=1, le=256)
    # Latest feature-view definitions are re-read at most this often.
    registry_cache_seconds: float = 5.0
    # A request shape's resolved feature refs are re-checked against those definitions at
    # most this often (never more than `registry_cache_seconds`).
    resolved_refs_seconds: float = 1.0


@dataclass(frozen=True)
class ServingDeps:
    store: PostgresOnlineStore
    registry: RegistryClient
    embedder: Embedder


def create_server(settings: ServingSettings, deps: ServingDeps) -> tuple[RunningServer, int]:
    features = FeatureServer(
        deps.store,
        deps.registry,
        observer=default_metrics(),
        definitions_seconds=min(settings.resolved_refs_seconds, settings.registry_cache_seconds),
        embedder=deps.embedder,
    )
    registration = ServiceRegistration(
        add_to_server, FeatureServingServicer(features), SERVICE.full_name
    )
    running = create_grpc_server(
        settings, [registration], readiness_checks={"postgres": partial(deps.store.ping)}
    )
    running.on_stop.append(deps.embedder.close)
    return running, running.port


def open_deps(settings: ServingSettings) -> ServingDeps:
    url = resolve_database_url(settings)
    migrate_cache(url)
    store = PostgresOnlineStore(to_libpq(url), max_size=settings.db_pool_size)
    registry = RegistryClient(
        settings.registry_addr,
        client=settings.client_settings(),
        refresh_seconds=settings.registry_cache_seconds,
    )
    embedder = Embedder(
        PostgresEmbeddingCache(to_libpq(url)),
        triton_address=settings.triton_addr,
        credentials=settings.credentials(),
        allowed_endpoints=settings.embedding_endpoints,
    )
    return ServingDeps(store, registry, embedder)


def main() -> None:
    settings = ServingSettings()
    run(settings, lambda: create_server(settings, open_deps(settings))[0])


if __name__ == "__main__":
    main()
