"""Registry service entry point: settings → logging → database → server."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import sqlalchemy as sa
from recstack.registry.v1 import registry_service_pb2, registry_service_pb2_grpc

from services.registry.adapters.repository import postgres_unit_of_work
from services.registry.registry import Registry
from services.registry.servicer import RegistryServicer
from shared.bootstrap import open_database, run
from shared.db import ping
from shared.grpc_server import RunningServer, ServiceRegistration, create_grpc_server
from shared.settings import ServiceSettings

SCHEMA = "registry"
MIGRATIONS = Path(__file__).parent / "migrations"


class RegistrySettings(ServiceSettings):
    service_name: str = "registry"
    grpc_port: int = 50051


@dataclass(frozen=True)
class RegistryDeps:
    engine: sa.Engine


def create_server(settings: RegistrySettings, deps: RegistryDeps) -> tuple[RunningServer, int]:
    registry = Registry(partial(postgres_unit_of_work, deps.engine))
    registration = ServiceRegistration(
        registry_service_pb2_grpc.add_RegistryServiceServicer_to_server,
        RegistryServicer(registry),
        registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    )
    running = create_grpc_server(
        settings, [registration], readiness_checks={"postgres": partial(ping, deps.engine)}
    )
    return running, running.port


def main() -> None:
    settings = RegistrySettings()

    def build() -> RunningServer:
        engine = open_database(settings, SCHEMA, MIGRATIONS)
        return create_server(settings, RegistryDeps(engine))[0]

    run(settings, build)


if __name__ == "__main__":
    main()
