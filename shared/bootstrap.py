"""What every service's `server.py` does around its own wiring."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
import structlog

from shared.db import create_engine, resolve_database_url
from shared.errors import ConfigurationError
from shared.grpc_server import RunningServer, serve_forever
from shared.logging import configure_logging
from shared.migrations import upgrade
from shared.settings import ServiceSettings
from shared.workers import stop_with_supervisor, supervise, supervises


def open_database(settings: ServiceSettings, schema: str, migrations: Path) -> sa.Engine:
    """A pooled engine on the service's database, its schema migrated to head."""
    url = resolve_database_url(settings)
    engine = create_engine(
        url, pool_size=settings.db_pool_size, application_name=f"recstack-{settings.service_name}"
    )
    upgrade(engine, schema=schema, script_location=migrations)
    return engine


def run(settings: ServiceSettings, build: Callable[[], RunningServer]) -> None:
    """Configure logging, build the server, serve until SIGTERM; exit 2 on bad settings.

    With `settings.workers` above 1 this process supervises that many workers on one port
    instead (shared/workers.py), each of which runs this same function as one server.
    """
    configure_logging(settings.log_level, service=settings.service_name)
    log = structlog.get_logger(__name__)
    log.info("starting", settings=settings.model_dump(mode="json"))
    if supervises(settings):
        try:
            code = supervise(settings)
        except OSError as exc:
            log.error("cannot_start", error=str(exc))
            print(f"{settings.service_name}: cannot start: {exc}", file=sys.stderr)
            code = 1
        raise SystemExit(code)
    if settings.worker_index is not None:
        stop_with_supervisor()
    try:
        running = build()
    except ConfigurationError as exc:
        log.error("configuration_error", error=str(exc))
        # Also plainly on stderr: a person starting the service reads this line, not JSON.
        print(f"{settings.service_name}: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    serve_forever(settings, running)
