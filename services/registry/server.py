"""Registry service entry point: settings → logging → database, model server → server."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import sqlalchemy as sa
from pydantic import Field
from recstack.registry.v1 import registry_service_pb2, registry_service_pb2_grpc

from services.registry.adapters.deployer import ModelDeployer
from services.registry.adapters.repository import postgres_unit_of_work
from services.registry.adapters.triton_deployer import TritonDeployer
from services.registry.fg_check import FgConfigCheck, check_fg_config
from services.registry.models import DeploymentSettings, ModelRegistry
from services.registry.online_tables import OnlineTables
from services.registry.policy import DefinitionPolicy
from services.registry.registry import Registry
from services.registry.servicer import RegistryServicer
from shared.bootstrap import open_database, run
from shared.db import ping, to_libpq
from shared.grpc_server import RunningServer, ServiceRegistration, create_grpc_server
from shared.online_store import OnlineStore
from shared.online_store.postgres import PostgresOnlineStore
from shared.settings import ServiceSettings

SCHEMA = "registry"
MIGRATIONS = Path(__file__).parent / "migrations"


class RegistrySettings(ServiceSettings):
    service_name: str = "registry"
    grpc_port: int = 50051
    # Model versions are deployed to the Triton at `triton_addr`. A deploy also ends with the
    # request (`max_request_seconds`), whichever comes first.
    model_load_timeout_seconds: float = Field(default=120.0, gt=0)
    model_ready_timeout_seconds: float = Field(default=30.0, gt=0)
    # How long a version that is neither active nor the rollback target stays loaded; longer
    # than readers' registry refresh period plus their longest request.
    model_retire_grace_seconds: float = Field(default=60.0, ge=0)


@dataclass(frozen=True)
class RegistryDeps:
    engine: sa.Engine
    # Where feature-view versions get their online tables; None leaves tables to writers.
    online_store: OnlineStore | None = None
    # Where model versions are deployed; None: Triton at the settings' `triton_addr`.
    deployer: ModelDeployer | None = None
    # Checks a model version's FG config against its pinned features, on create and before
    # activation.
    fg_check: FgConfigCheck = check_fg_config


def create_server(settings: RegistrySettings, deps: RegistryDeps) -> tuple[RunningServer, int]:
    tables = OnlineTables(deps.online_store) if deps.online_store is not None else None
    registry = Registry(
        partial(postgres_unit_of_work, deps.engine),
        on_version_created=tables.version_created if tables else None,
        on_version_deleted=tables.version_deleted if tables else None,
        policy=DefinitionPolicy(
            settings.credentials(), tuple(settings.embedding_endpoints), settings.file_roots()
        ),
    )
    deployer = deps.deployer or TritonDeployer(
        settings.triton_addr, load_timeout_s=settings.model_load_timeout_seconds
    )
    models = ModelRegistry(
        partial(postgres_unit_of_work, deps.engine),
        deployer,
        fg_check=deps.fg_check,
        settings=DeploymentSettings(
            ready_timeout_s=settings.model_ready_timeout_seconds,
            retire_grace_s=settings.model_retire_grace_seconds,
        ),
    )
    registration = ServiceRegistration(
        registry_service_pb2_grpc.add_RegistryServiceServicer_to_server,
        RegistryServicer(registry, models),
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
        online_store = PostgresOnlineStore(to_libpq(engine.url.render_as_string(False)))
        return create_server(settings, RegistryDeps(engine, online_store))[0]

    run(settings, build)


if __name__ == "__main__":
    main()
