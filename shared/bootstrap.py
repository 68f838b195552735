"""What every service's `server.py` does around its own wiring."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
import structlog

from shared.db import create_engine, resolve_database_url
from shared.grpc_server import RunningServer, serve_forever
from shared.logging import configure_logging
from shared.migrations import upgrade
from shared.settings import ServiceSettings


def open_database(settings: ServiceSettings, schema: str, migrations: Path) -> sa.Engine:
    """A pooled engine on the service's database, its schema migrated to head."""
    url = resolve_database_url(settings)
    engine = create_engine(
        url, pool_size=settings.db_pool_size, application_name=f"recstack-{settings.service_name}"
    )
    upgrade(engine, schema=schema, script_location=migrations)
    return engine


def run(settings: ServiceSettings, build: Callable[[], RunningServer]) -> None:
    """Configure logging, build the server, serve until SIGTERM."""
    configure_logging(settings.log_level, service=settings.service_name)
    structlog.get_logger(__name__).info("starting", settings=settings.model_dump(mode="json"))
    serve_forever(settings, build())
