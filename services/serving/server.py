"""Serving service entry point: settings → logging → online store → server."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from recstack.serving.v1 import serving_service_pb2, serving_service_pb2_grpc

from services.serving.features import FeatureServer
from services.serving.servicer import FeatureServingServicer
from shared.bootstrap import run
from shared.db import resolve_database_url, to_libpq
from shared.grpc_server import RunningServer, ServiceRegistration, create_grpc_server
from shared.online_store.postgres import PostgresOnlineStore
from shared.registry_client import RegistryClient
from shared.settings import ServiceSettings


class ServingSettings(ServiceSettings):
    service_name: str = "serving"
    grpc_port: int = 50053
    # Latest feature-view definitions are re-read at most this often.
    registry_cache_seconds: float = 5.0


@dataclass(frozen=True)
class ServingDeps:
    store: PostgresOnlineStore
    registry: RegistryClient


def create_server(settings: ServingSettings, deps: ServingDeps) -> tuple[RunningServer, int]:
    servicer = FeatureServingServicer(FeatureServer(deps.store, deps.registry))
    registration = ServiceRegistration(
        serving_service_pb2_grpc.add_FeatureServingServiceServicer_to_server,
        servicer,
        serving_service_pb2.DESCRIPTOR.services_by_name["FeatureServingService"].full_name,
    )
    running = create_grpc_server(
        settings, [registration], readiness_checks={"postgres": partial(deps.store.ping)}
    )
    return running, running.port


def open_deps(settings: ServingSettings) -> ServingDeps:
    url = resolve_database_url(settings)
    store = PostgresOnlineStore(to_libpq(url), max_size=settings.db_pool_size)
    registry = RegistryClient(
        settings.registry_addr, refresh_seconds=settings.registry_cache_seconds
    )
    return ServingDeps(store, registry)


def main() -> None:
    settings = ServingSettings()
    run(settings, lambda: create_server(settings, open_deps(settings))[0])


if __name__ == "__main__":
    main()
