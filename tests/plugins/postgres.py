"""pytest plugin: one PostgreSQL server per test session, and a fresh database on it.

`postgres_server_url` picks the server:
1. `RECSTACK_TEST_DATABASE_SERVER`: a server URL, or `embedded` to force the embedded
   PostgreSQL 18 (it has pgvector; the CI machines' PostgreSQL 15 does not);
2. else PostgreSQL on 127.0.0.1:5432 as user `postgres` (CI), if it answers within about 1 s;
3. else the embedded server, under a temporary run dir on a free port, stopped at the end.

`database_url` is a database `recstack_test_<hex>` created on that server for the session and
dropped after it, whatever connections are still open.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from infra.local.postgres import any_server
from shared.db import create_database, create_engine, drop_database, normalize_url
from shared.migrations import upgrade

SERVER_ENV = "RECSTACK_TEST_DATABASE_SERVER"


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    choice = os.environ.get(SERVER_ENV, "").strip()
    explicit = normalize_url(choice) if choice and choice != "embedded" else ""
    with any_server(explicit, embedded=choice == "embedded") as url:
        yield url


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    name = f"recstack_test_{secrets.token_hex(6)}"
    url = create_database(postgres_server_url, name)
    try:
        yield url
    finally:
        drop_database(postgres_server_url, name)


@contextmanager
def migrated_engine(
    server_url: str, schema: str, migrations: Path, *, prefix: str = "scratch", pool_size: int = 2
) -> Iterator[sa.Engine]:
    """An engine on a database of its own, migrated to one service's schema, dropped after:
    for tests a session's running service must not see (it would claim or serve their rows)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    engine = create_engine(create_database(server_url, name), pool_size=pool_size)
    try:
        upgrade(engine, schema=schema, script_location=migrations)
        yield engine
    finally:
        engine.dispose()
        drop_database(server_url, name)
