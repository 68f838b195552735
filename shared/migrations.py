"""Alembic migrations, one history per service schema, run programmatically at start-up.

A service keeps `services/<svc>/migrations/`:

    env.py          from shared.migrations import run_migrations_online
                    run_migrations_online()
    script.py.mako  a relative symlink to ../../../shared/migrations_template/script.py.mako
                    (read only when generating a revision; alembic looks for it in this folder)
    versions/       <rev>_<slug>.py

and calls `upgrade(url, schema="<svc schema>", script_location=<that folder>)` before serving.
Migrations may use unqualified names: the search path starts with the service schema.
Alembic's version table lives in that schema too, so each schema has its own history.

    python -m shared.migrations revision services/registry/migrations -m "create projects"
    python -m shared.migrations upgrade services/registry/migrations --schema registry [--url URL]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import psycopg
import sqlalchemy
from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from shared.db import (
    CONNECT_TIMEOUT_S,
    is_connection_error,
    normalize_url,
    quote_identifier,
    resolve_database_url,
    unavailable,
)
from shared.errors import ConfigurationError, DomainError, Unavailable
from shared.settings import ServiceSettings

TEMPLATE_DIR = Path(__file__).resolve().parent / "migrations_template"
_LOCK_NAMESPACE = "recstack.migrations"


def upgrade(
    engine_or_url: Engine | str,
    *,
    schema: str,
    script_location: Path,
    revision: str = "head",
    lock_timeout_s: float = 60.0,
) -> None:
    """Create `schema` if missing and upgrade it to `revision`, one starter at a time.

    Replicas starting together queue on an advisory lock; the first migrates, the rest find
    the schema at head. `lock_timeout_s` bounds that wait and any lock a migration waits for.
    """
    url = (
        engine_or_url.url
        if isinstance(engine_or_url, Engine)
        else sqlalchemy.make_url(normalize_url(engine_or_url))
    )
    # A connection of its own, closed at the end: the session-level lock and settings die with
    # it instead of returning to a pool.
    engine = sqlalchemy.create_engine(
        url,
        poolclass=NullPool,
        connect_args={
            "application_name": f"recstack-migrate-{schema}",
            "connect_timeout": CONNECT_TIMEOUT_S,
        },
    )
    try:
        with engine.connect() as conn:
            _lock_and_create_schema(conn, schema, lock_timeout_s)
            command.upgrade(_alembic_config(script_location, conn, schema), revision)
    except DBAPIError as exc:
        if is_connection_error(exc):
            raise unavailable(str(url), exc) from exc
        if isinstance(exc.orig, psycopg.errors.LockNotAvailable):
            raise Unavailable(
                f"migrating schema {schema}: waited {lock_timeout_s:g}s for a lock held by "
                "another instance or a long query; retry, or find the blocker in pg_stat_activity",
                reason="MIGRATION_LOCK_TIMEOUT",
            ) from exc
        raise
    finally:
        engine.dispose()


def run_migrations_online() -> None:
    """The body of every service's `env.py`: migrate on the connection `upgrade()` prepared."""
    attributes = context.config.attributes
    if "connection" not in attributes:
        raise RuntimeError(
            "run migrations with shared.migrations.upgrade() or `python -m shared.migrations "
            "upgrade`, not the alembic CLI: they take the lock and pick the schema"
        )
    context.configure(
        connection=attributes["connection"], version_table_schema=attributes["schema"]
    )
    with context.begin_transaction():
        context.run_migrations()


def advisory_lock_key(schema: str) -> int:
    """A stable signed 64-bit key per schema, namespaced so other users of advisory locks in
    the same database do not collide with ours."""
    digest = hashlib.sha256(f"{_LOCK_NAMESPACE}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock_and_create_schema(conn: Connection, schema: str, lock_timeout_s: float) -> None:
    quoted = quote_identifier(schema)
    set_session = text("SELECT set_config(:name, :value, false)")
    conn.execute(set_session, {"name": "lock_timeout", "value": f"{int(lock_timeout_s * 1000)}ms"})
    conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": advisory_lock_key(schema)})
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
    conn.execute(set_session, {"name": "search_path", "value": f"{quoted}, public"})
    # Alembic then opens (and commits) its own transaction: DDL of all pending revisions
    # commits together or not at all.
    conn.commit()


def _alembic_config(
    script_location: Path, connection: Connection | None = None, schema: str | None = None
) -> Config:
    config = Config(attributes={"connection": connection, "schema": schema} if connection else {})
    # Config values go through configparser interpolation: a literal % must be doubled.
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.migrations")
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("upgrade", help="upgrade a schema to head (what services do at start)")
    up.add_argument("script_location", type=Path)
    up.add_argument("--schema", required=True)
    up.add_argument("--url", help="default: RECSTACK_DATABASE_URL")
    rev = sub.add_parser("revision", help="write a new empty revision file")
    rev.add_argument("script_location", type=Path)
    rev.add_argument("-m", "--message", required=True)
    args = parser.parse_args(argv)
    try:
        if args.action == "upgrade":
            url = args.url or resolve_database_url(ServiceSettings())
            upgrade(url, schema=args.schema, script_location=args.script_location)
        else:
            command.revision(_alembic_config(args.script_location), message=args.message)
    except DomainError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
