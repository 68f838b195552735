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

import pytest

from infra.local.postgres import any_server
from shared.db import create_database, drop_database, normalize_url

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
