"""PostgreSQL access every service shares: URL resolution, engines, transactions, databases.

Connection failures surface as `shared.errors.Unavailable` naming the server (password masked)
and what to do, so the gRPC edge answers UNAVAILABLE instead of INTERNAL.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import sqlalchemy
from sqlalchemy import Connection, Engine, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import NullPool

from shared.errors import ConfigurationError, ResourceExhausted, Unavailable
from shared.settings import ServiceSettings

DRIVER = "postgresql+psycopg"
CONNECT_TIMEOUT_S = 5
# Admin statements (CREATE/DROP DATABASE) run here: it exists on every server.
MAINTENANCE_DATABASE = "postgres"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# SQLSTATE class 08 is "connection exception"; 57P01-03 mean the server is shutting down or
# starting up (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def normalize_url(url: str) -> str:
    """Any PostgreSQL URL (`postgres://`, `postgresql://`, other driver) → the psycopg 3 one."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {mask_url(url)}")
    return parsed.set(drivername=DRIVER).render_as_string(hide_password=False)


def mask_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def database_url(server_url: str, name: str) -> str:
    """The URL of database `name` on the server of `server_url`."""
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def resolve_database_url(settings: ServiceSettings) -> str:
    """`settings.database_url`, checked to answer. A service never starts a database of its own:
    unset is a configuration error, so a production service cannot silently run on a throwaway
    server (the local stack, tests and benchmarks pass the URL of the server they start)."""
    if settings.database_url is None:
        raise ConfigurationError(
            "RECSTACK_DATABASE_URL is not set: point it at the PostgreSQL server this service "
            "stores its data in (for a local stack, `make up` starts one and sets it)"
        )
    url = normalize_url(settings.database_url.get_secret_value())
    engine = create_engine(url, pool_size=1, application_name="recstack-startup")
    try:
        ping(engine)
    finally:
        engine.dispose()
    return url


def create_engine(
    url: str, *, pool_size: int = 10, application_name: str = "recstack", schema: str | None = None
) -> Engine:
    """A pooled engine. `schema` first on the search path lets service SQL omit the schema."""
    options = f"-c search_path={_check_identifier(schema)},public" if schema else None
    connect_args = {"application_name": application_name, "connect_timeout": CONNECT_TIMEOUT_S}
    if options:
        connect_args["options"] = options
    return sqlalchemy.create_engine(
        normalize_url(url),
        pool_size=pool_size,
        # Bursts may open as many again; beyond that callers wait `pool_timeout`, then fail.
        max_overflow=pool_size,
        pool_timeout=10,
        # Checked on checkout: a restarted server or a dropped idle connection costs one retry,
        # not a failed request.
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def ping(engine: Engine) -> None:
    """Raise `Unavailable` unless the server answers; for start-up and health checks."""
    with transaction(engine) as conn:
        conn.execute(text("SELECT 1"))


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One unit of work: commits when the block ends normally, rolls back on any exception."""
    try:
        with engine.connect() as conn, conn.begin():
            yield conn
    except DBAPIError as exc:
        if is_connection_error(exc):
            raise unavailable(engine.url.render_as_string(), exc) from exc
        raise
    except PoolTimeoutError as exc:
        raise ResourceExhausted(
            "all database connections are busy; retry later or raise RECSTACK_DB_POOL_SIZE",
            reason="DATABASE_POOL_EXHAUSTED",
        ) from exc


@contextmanager
def advisory_lock(engine: Engine, name: str) -> Iterator[None]:
    """Hold a PostgreSQL session advisory lock named `name` for the block: one holder at a
    time across every process on the database."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
    except DBAPIError as exc:
        if is_connection_error(exc):
            raise unavailable(engine.url.render_as_string(), exc) from exc
        raise


def is_connection_error(exc: DBAPIError) -> bool:
    """True when the server could not be reached or went away, as opposed to a bad statement."""
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if not isinstance(orig, psycopg.OperationalError):
        return False
    # psycopg reports failures to connect with no SQLSTATE at all.
    return orig.sqlstate is None or orig.sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


def unavailable(url: str, exc: BaseException) -> Unavailable:
    cause = getattr(exc, "orig", None) or exc
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    masked = mask_url(url)
    return Unavailable(
        f"PostgreSQL at {masked} is unreachable ({detail}). Start that server or fix "
        "RECSTACK_DATABASE_URL.",
        reason="DATABASE_UNAVAILABLE",
        metadata={"database": masked},
    )


def create_database(server_url: str, name: str) -> str:
    """Create database `name` on the server of `server_url`; return its URL."""
    _admin(server_url, f"CREATE DATABASE {quote_identifier(name)}")
    return database_url(normalize_url(server_url), name)


def drop_database(server_url: str, name: str) -> None:
    """Drop database `name` if it exists, disconnecting its sessions (PostgreSQL 13+)."""
    _admin(server_url, f"DROP DATABASE IF EXISTS {quote_identifier(name)} WITH (FORCE)")


def _admin(server_url: str, statement: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction block, hence AUTOCOMMIT.
    url = database_url(normalize_url(server_url), MAINTENANCE_DATABASE)
    engine = sqlalchemy.create_engine(
        url,
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"application_name": "recstack-admin", "connect_timeout": CONNECT_TIMEOUT_S},
    )
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    except DBAPIError as exc:
        if is_connection_error(exc):
            raise unavailable(url, exc) from exc
        raise
    finally:
        engine.dispose()


def _check_identifier(name: str) -> str:
    """Names built into SQL text must be plain identifiers: no quoting games, no injection."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain lowercase SQL identifier of at most 63 chars: {name!r}")
    return name


def quote_identifier(name: str) -> str:
    """Double-quoted, after checking it is a plain identifier (quoting keeps keywords legal)."""
    return f'"{_check_identifier(name)}"'


def to_libpq(url: str) -> str:
    """The libpq form of a SQLAlchemy URL, for code that uses psycopg directly (hot paths)."""
    return (
        make_url(normalize_url(url))
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
