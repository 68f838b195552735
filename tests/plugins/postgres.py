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
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from shared.db import create_database, drop_database, normalize_url
from shared.local.postgres import EmbeddedPostgres

SERVER_ENV = "RECSTACK_TEST_DATABASE_SERVER"
LOCAL_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    choice = os.environ.get(SERVER_ENV, "").strip()
    if choice and choice != "embedded":
        yield normalize_url(choice)
    elif not choice and _local_server_answers():
        yield LOCAL_SERVER_URL
    else:
        with temporary_embedded_server() as server:
            yield server.start()


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    name = f"recstack_test_{secrets.token_hex(6)}"
    url = create_database(postgres_server_url, name)
    try:
        yield url
    finally:
        drop_database(postgres_server_url, name)


@contextmanager
def temporary_embedded_server() -> Iterator[EmbeddedPostgres]:
    """An embedded server (not yet started) in a new run dir; stopped and deleted on exit."""
    run_dir = Path(tempfile.mkdtemp(prefix="recstack-test-run-"))
    # mkdtemp makes it 0700; the server's system user (when we are root) must pass through it.
    run_dir.chmod(0o755)
    server = EmbeddedPostgres(run_dir, port=free_port())
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _local_server_answers() -> bool:
    # TCP probe first: libpq's connect_timeout cannot be under 2 s, and a closed port should
    # cost nothing.
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=2
        ) as conn:
            conn.execute("SELECT 1")
    except (OSError, psycopg.Error):
        return False
    return True
