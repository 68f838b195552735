"""The PostgreSQL foundation against real servers: embedded lifecycle, transactions,
migrations under concurrency, database admin, and unreachable-server errors."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import text

from infra.local.postgres import EmbeddedPostgres, free_port, temporary_embedded_server
from shared.db import (
    create_database,
    create_engine,
    drop_database,
    ping,
    resolve_database_url,
    transaction,
)
from shared.errors import ConfigurationError, Unavailable
from shared.migrations import advisory_lock_key, upgrade
from shared.settings import ServiceSettings

ENV_PY = "from shared.migrations import run_migrations_online\n\nrun_migrations_online()\n"
# Unqualified names: they must land in the schema being migrated. The sleep widens the window
# in which two starters overlap.
REVISION_0001 = """
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT pg_sleep(0.5)")
    op.execute("CREATE TABLE applied (id serial PRIMARY KEY)")
    op.execute("INSERT INTO applied DEFAULT VALUES")


def downgrade() -> None:
    op.execute("DROP TABLE applied")
"""


@pytest.fixture
def engine(database_url: str):
    engine = create_engine(database_url, pool_size=2, application_name="recstack-test")
    yield engine
    engine.dispose()


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(ENV_PY)
    (tmp_path / "versions" / "0001_create_applied.py").write_text(REVISION_0001)
    return tmp_path


def fresh_schema() -> str:
    return f"mig_{secrets.token_hex(4)}"


def execute(url_or_engine, sql: str) -> list:
    """The first column of every row `sql` returns (none for DDL)."""
    engine = (
        url_or_engine
        if isinstance(url_or_engine, sqlalchemy.Engine)
        else create_engine(url_or_engine, pool_size=1)
    )
    try:
        with transaction(engine) as conn:
            result = conn.execute(text(sql))
            return list(result.scalars()) if result.returns_rows else []
    finally:
        if engine is not url_or_engine:
            engine.dispose()


def scalar(url_or_engine, sql: str):
    (value,) = execute(url_or_engine, sql)
    return value


def test_embedded_server_starts_stops_and_restarts_on_its_data():
    with temporary_embedded_server() as server:
        run_dir = server.base_dir.parent
        run_dir_mode = run_dir.stat().st_mode

        started = time.monotonic()
        url = server.start()
        cold_s = time.monotonic() - started
        assert scalar(url, "SELECT version()").startswith("PostgreSQL 18.")
        execute(url, "CREATE TABLE marker AS SELECT 42 AS answer")

        again = EmbeddedPostgres(run_dir, port=free_port())
        assert again.start() == url, "a second start must reuse the running server"

        server.stop()
        assert server.running_port() is None
        engine = create_engine(url, pool_size=1)
        with pytest.raises(Unavailable):
            ping(engine)
        engine.dispose()

        started = time.monotonic()
        assert server.start() == url
        warm_s = time.monotonic() - started
        assert scalar(url, "SELECT answer FROM marker") == 42
        execute(url, "CREATE EXTENSION IF NOT EXISTS vector")
        print(f"embedded PostgreSQL start: cold {cold_s:.2f}s, warm {warm_s:.2f}s")
        assert cold_s < 15
        assert warm_s < 10

        # Only <run_dir>/pg changes hands; its parent keeps its owner and mode.
        assert run_dir.stat().st_mode == run_dir_mode
        if os.geteuid() == 0:
            assert server.base_dir.stat().st_uid != 0
            assert run_dir.stat().st_uid == 0


def test_transaction_commits_on_success_and_rolls_back_on_error(engine):
    with transaction(engine) as conn:
        conn.execute(text("CREATE TABLE uow (id int PRIMARY KEY)"))

    with pytest.raises(RuntimeError, match="boom"), transaction(engine) as conn:
        conn.execute(text("INSERT INTO uow VALUES (1)"))
        raise RuntimeError("boom")
    assert scalar(engine, "SELECT count(*) FROM uow") == 0

    with transaction(engine) as conn:
        conn.execute(text("INSERT INTO uow VALUES (2)"))
    assert scalar(engine, "SELECT count(*) FROM uow") == 1


def test_upgrade_creates_schema_and_version_table_and_is_idempotent(database_url, migrations_dir):
    schema = fresh_schema()
    upgrade(database_url, schema=schema, script_location=migrations_dir)
    upgrade(database_url, schema=schema, script_location=migrations_dir)

    tables = scalar(
        database_url,
        "SELECT string_agg(table_schema || '.' || table_name, ',' ORDER BY table_name) "
        f"FROM information_schema.tables WHERE table_schema = '{schema}'",
    )
    assert tables == f"{schema}.alembic_version,{schema}.applied"
    assert scalar(database_url, f"SELECT version_num FROM {schema}.alembic_version") == "0001"
    assert scalar(database_url, f"SELECT count(*) FROM {schema}.applied") == 1


def test_concurrent_upgrades_apply_each_revision_once(database_url, engine, migrations_dir):
    schema = fresh_schema()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def start_replica(target) -> None:
        try:
            barrier.wait()
            upgrade(target, schema=schema, script_location=migrations_dir)
        except BaseException as exc:
            errors.append(exc)

    # One replica passes a URL, the other an engine: both entry points take the same lock.
    threads = [threading.Thread(target=start_replica, args=(t,)) for t in (database_url, engine)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert scalar(database_url, f"SELECT count(*) FROM {schema}.applied") == 1
    assert scalar(database_url, f"SELECT version_num FROM {schema}.alembic_version") == "0001"


def test_drop_database_disconnects_open_sessions(postgres_server_url):
    name = f"recstack_test_drop_{secrets.token_hex(4)}"
    url = create_database(postgres_server_url, name)
    holder = create_engine(url, pool_size=1)
    conn = holder.connect()
    conn.execute(text("SELECT 1"))
    try:
        drop_database(postgres_server_url, name)
    finally:
        conn.invalidate()
        holder.dispose()
    exists = scalar(
        postgres_server_url, f"SELECT count(*) FROM pg_database WHERE datname = '{name}'"
    )
    assert exists == 0


def test_resolve_database_url_names_the_unreachable_host():
    port = free_port()
    settings = ServiceSettings(database_url=f"postgresql://app:s3cret@127.0.0.1:{port}/recstack")

    with pytest.raises(Unavailable) as caught:
        resolve_database_url(settings)

    assert f"127.0.0.1:{port}" in caught.value.message
    assert "s3cret" not in caught.value.message
    assert caught.value.reason == "DATABASE_UNAVAILABLE"


def test_resolve_database_url_without_url_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="RECSTACK_DATABASE_URL is not set"):
        resolve_database_url(ServiceSettings())


def test_a_service_without_a_database_url_stops_at_start_up_and_says_why():
    env = {key: value for key, value in os.environ.items() if not key.startswith("RECSTACK_")}
    result = subprocess.run(
        [sys.executable, "-m", "services.registry.server"],
        env={**env, "RECSTACK_GRPC_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "registry: cannot start: RECSTACK_DATABASE_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data to a system user")
def test_embedded_server_reports_a_run_dir_its_user_cannot_enter(tmp_path: Path):
    # pytest makes its temp dirs 0700: the server's system user cannot pass through them.
    run_dir = tmp_path / "run"
    modes = {parent: parent.stat().st_mode for parent in run_dir.parents}
    with pytest.raises(Unavailable, match="cannot enter /tmp/pytest-of-") as caught:
        EmbeddedPostgres(run_dir, port=free_port()).start()
    assert "RECSTACK_DATABASE_URL" in caught.value.message
    assert {p: p.stat().st_mode for p in run_dir.parents} == modes, "report, never chmod"


def test_upgrade_gives_up_on_a_lock_held_too_long(database_url, engine, migrations_dir):
    schema = fresh_schema()
    with engine.connect() as other_replica:
        other_replica.execute(
            text("SELECT pg_advisory_lock(:key)"), {"key": advisory_lock_key(schema)}
        )
        with pytest.raises(Unavailable, match=f"migrating schema {schema}") as caught:
            upgrade(database_url, schema=schema, script_location=migrations_dir, lock_timeout_s=0.3)
        other_replica.execute(text("SELECT pg_advisory_unlock_all()"))
    assert caught.value.reason == "MIGRATION_LOCK_TIMEOUT"
