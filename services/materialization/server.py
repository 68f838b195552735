"""Materialization service entry point: settings → logging → stores and engine → server."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import sqlalchemy as sa
from pydantic import Field
from recstack.materialization.v1 import (
    materialization_service_pb2,
    materialization_service_pb2_grpc,
)

from services.materialization.adapters.entity_rows import PostgresEntityTables
from services.materialization.adapters.local_engine import LocalEngine
from services.materialization.adapters.offline_store import ParquetOfflineStore
from services.materialization.adapters.repository import postgres_unit_of_work
from services.materialization.adapters.source_databases import (
    DEFAULT_ROLE_TEMPLATE,
    SourceDatabases,
)
from services.materialization.export import TrainingSetExporter
from services.materialization.materializer import Materializer
from services.materialization.runner import JobRunner
from services.materialization.servicer import MaterializationServicer
from shared.bootstrap import open_database, run
from shared.db import advisory_lock, ping, to_libpq
from shared.embeddings import Embedder, PostgresEmbeddingCache, migrate_cache
from shared.grpc_server import RunningServer, ServiceRegistration, create_grpc_server
from shared.online_store.postgres import PostgresOnlineStore
from shared.paths import FileRoots
from shared.registry_client import RegistryClient
from shared.settings import ServiceSettings

SCHEMA = "materialization"
MIGRATIONS = Path(__file__).parent / "migrations"
# Of the shutdown grace, what is kept for open WatchJob streams to send their final message
# after the running jobs have stopped.
WATCH_FINAL_SECONDS = 1.0


class MaterializationSettings(ServiceSettings):
    service_name: str = "materialization"
    grpc_port: int = 50052
    # Jobs that run at once in this replica.
    job_workers: int = 2
    # A running job whose runner sent no heartbeat for this long is ended FAILED.
    job_lease_seconds: float = 60.0
    # How often an idle runner looks for queued jobs and due schedules.
    job_poll_seconds: float = 1.0
    # Rows per chunk: progress, cancellation and heartbeats happen between chunks.
    job_chunk_rows: int = 500_000
    # The login role POSTGRES sources without a url run as, per project (never the platform's).
    source_role_template: str = DEFAULT_ROLE_TEMPLATE
    # Bounds on a POSTGRES source: each statement's run time, and the rows one job may read.
    source_statement_timeout_seconds: float = Field(default=300.0, gt=0)
    source_max_rows: int = Field(default=50_000_000, ge=1)
    # On SIGTERM, running jobs stop at their next chunk boundary and open WatchJob streams end
    # within this; `make down` and the Kubernetes manifests wait longer before SIGKILL.
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)


@dataclass(frozen=True)
class MaterializationDeps:
    engine: sa.Engine
    online_store: PostgresOnlineStore
    registry: RegistryClient
    offline_store: ParquetOfflineStore
    exporter: TrainingSetExporter
    embedder: Embedder
    source_databases: SourceDatabases
    file_roots: FileRoots


def create_server(
    settings: MaterializationSettings, deps: MaterializationDeps
) -> tuple[RunningServer, int]:
    unit_of_work = partial(postgres_unit_of_work, deps.engine)
    runner = JobRunner(
        unit_of_work=unit_of_work,
        definitions=deps.registry,
        engine=LocalEngine(
            chunk_rows=settings.job_chunk_rows,
            source_databases=deps.source_databases,
            file_roots=deps.file_roots,
            embedder=deps.embedder,
        ),
        offline_store=deps.offline_store,
        online_store=deps.online_store,
        lease_seconds=settings.job_lease_seconds,
        poll_seconds=settings.job_poll_seconds,
        file_roots=deps.file_roots,
        redactions=settings.server_paths(),
    )
    materializer = Materializer(
        unit_of_work=unit_of_work,
        definitions=deps.registry,
        offline_store=deps.offline_store,
        online_store=deps.online_store,
        on_enqueue=runner.wake,
    )
    registration = ServiceRegistration(
        materialization_service_pb2_grpc.add_MaterializationServiceServicer_to_server,
        MaterializationServicer(materializer, deps.exporter),
        materialization_service_pb2.DESCRIPTOR.services_by_name["MaterializationService"].full_name,
    )
    running = create_grpc_server(
        settings, [registration], readiness_checks={"postgres": partial(ping, deps.engine)}
    )
    runner.start(settings.job_workers)

    def wind_down(deadline: float) -> None:
        # Jobs first, so each watch's final message shows its job ended (FAILED, INCOMPLETE).
        runner.stop(max(0.0, deadline - time.monotonic() - WATCH_FINAL_SECONDS))
        materializer.stop_watches()

    running.before_stop.append(wind_down)
    running.on_stop.append(deps.embedder.close)
    return running, running.port


def open_deps(settings: MaterializationSettings) -> MaterializationDeps:
    engine = open_database(settings, SCHEMA, MIGRATIONS)
    url = engine.url.render_as_string(False)
    conninfo = to_libpq(url)
    migrate_cache(url)
    offline_uri = settings.offline_store()
    file_roots = settings.file_roots()
    registry = RegistryClient(settings.registry_addr, client=settings.client_settings())
    credentials = settings.credentials()
    source_databases = SourceDatabases(
        url,
        role_template=settings.source_role_template,
        credentials=credentials,
        statement_timeout_s=settings.source_statement_timeout_seconds,
        max_rows=settings.source_max_rows,
    )
    return MaterializationDeps(
        engine=engine,
        online_store=PostgresOnlineStore(conninfo),
        registry=registry,
        # Replicas rewrite a partition one at a time, whichever replica runs the job.
        offline_store=ParquetOfflineStore(
            offline_uri, locks=lambda key: advisory_lock(engine, f"offline:{key}")
        ),
        exporter=TrainingSetExporter(
            registry,
            offline_uri,
            entity_tables=PostgresEntityTables(source_databases),
            file_roots=file_roots,
        ),
        embedder=Embedder(
            PostgresEmbeddingCache(conninfo),
            triton_address=settings.triton_addr,
            credentials=credentials,
            allowed_endpoints=settings.embedding_endpoints,
        ),
        source_databases=source_databases,
        file_roots=file_roots,
    )


def main() -> None:
    settings = MaterializationSettings()
    run(settings, lambda: create_server(settings, open_deps(settings))[0])


if __name__ == "__main__":
    main()
