"""Pure helpers of the PostgreSQL foundation: URLs, identifiers, error classification."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy.exc import DBAPIError

from infra.local.postgres import REPO_ROOT, EmbeddedPostgres, resolve_run_dir
from shared.db import (
    create_engine,
    database_url,
    is_connection_error,
    mask_url,
    normalize_url,
    quote_identifier,
    to_libpq,
    unavailable,
)
from shared.migrations import advisory_lock_key


@pytest.mark.parametrize(
    "url",
    [
        "postgres://app:pw@db:5432/recstack",
        "postgresql://app:pw@db:5432/recstack",
        "postgresql+psycopg2://app:pw@db:5432/recstack",
        "postgresql+psycopg://app:pw@db:5432/recstack",
    ],
)
def test_normalize_url_selects_psycopg3_and_keeps_the_rest(url):
    assert normalize_url(url) == "postgresql+psycopg://app:pw@db:5432/recstack"


def test_normalize_url_keeps_query_and_escaped_password():
    url = "postgresql://app:p%40ss@db/recstack?sslmode=require"
    assert normalize_url(url) == "postgresql+psycopg://app:p%40ss@db/recstack?sslmode=require"


def test_normalize_url_rejects_other_databases_without_echoing_the_password():
    with pytest.raises(ValueError, match="not a PostgreSQL URL") as caught:
        normalize_url("mysql://app:hunter2@db/recstack")
    assert "hunter2" not in str(caught.value)


def test_to_libpq_gives_a_uri_psycopg_parses():
    uri = to_libpq("postgresql+psycopg://app:p%40ss@db:5433/recstack?sslmode=require")
    assert uri == "postgresql://app:p%40ss@db:5433/recstack?sslmode=require"
    params = psycopg.conninfo.conninfo_to_dict(uri)
    assert params["password"] == "p@ss"
    assert params["sslmode"] == "require"


def test_mask_url_hides_only_the_password():
    assert mask_url("postgresql://app:hunter2@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert mask_url("postgresql://app@db/x") == "postgresql://app@db/x"


def test_database_url_swaps_the_database_and_keeps_credentials():
    url = database_url("postgresql+psycopg://app:pw@db:5433/postgres?sslmode=require", "t1")
    assert url == "postgresql+psycopg://app:pw@db:5433/t1?sslmode=require"


@pytest.mark.parametrize("name", ["registry", "_x1", "recstack_test_0a1b", "a" * 63])
def test_quote_identifier_accepts_plain_names(name):
    assert quote_identifier(name) == f'"{name}"'


@pytest.mark.parametrize("name", ["", "Registry", "1abc", 'a"b', "x; DROP TABLE t", "a" * 64])
def test_quote_identifier_rejects_anything_else(name):
    with pytest.raises(ValueError, match="identifier"):
        quote_identifier(name)


def test_create_engine_uses_psycopg3_and_puts_the_schema_first():
    engine = create_engine("postgresql://app@db/recstack", pool_size=3, schema="online")
    try:
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.pool.size() == 3
    finally:
        engine.dispose()
    with pytest.raises(ValueError):
        create_engine("postgresql://app@db/recstack", schema="on line")


def wrapped(orig: Exception, *, invalidated: bool = False) -> DBAPIError:
    return DBAPIError("SELECT 1", {}, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize(
    ("orig", "expected"),
    [
        (psycopg.OperationalError("connection refused"), True),
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.ConnectionFailure("gone"), True),
        (psycopg.errors.CannotConnectNow("starting up"), True),
        (psycopg.errors.SerializationFailure("retry"), False),
        (psycopg.errors.LockNotAvailable("lock timeout"), False),
        (psycopg.errors.UniqueViolation("duplicate"), False),
    ],
)
def test_is_connection_error_separates_outages_from_bad_statements(orig, expected):
    assert is_connection_error(wrapped(orig)) is expected


def test_a_dropped_connection_counts_as_an_outage():
    assert is_connection_error(wrapped(psycopg.DatabaseError("eof"), invalidated=True))


def test_unavailable_names_the_server_and_the_fix_but_not_the_password():
    error = unavailable(
        "postgresql+psycopg://app:hunter2@db.internal:6543/recstack",
        wrapped(psycopg.OperationalError("connection refused\nmore detail")),
    )
    assert "db.internal:6543" in error.message
    assert "connection refused" in error.message
    assert "RECSTACK_DATABASE_URL" in error.message
    assert "hunter2" not in error.message
    assert error.code == "UNAVAILABLE"
    assert error.reason == "DATABASE_UNAVAILABLE"


def test_run_dir_defaults_to_the_repository_root():
    assert resolve_run_dir(None) == REPO_ROOT / ".run"
    assert resolve_run_dir(Path(".run")) == REPO_ROOT / ".run"
    assert resolve_run_dir(Path("/srv/run")) == Path("/srv/run")
    assert (REPO_ROOT / "pyproject.toml").exists()


def test_embedded_layout_and_url():
    server = EmbeddedPostgres(Path("/srv/run"), port=6000)
    assert server.data_dir == Path("/srv/run/pg/data")
    assert server.url == "postgresql+psycopg://postgres@127.0.0.1:6000/postgres"


def test_advisory_lock_key_is_stable_per_schema_and_fits_bigint():
    key = advisory_lock_key("registry")
    assert key == advisory_lock_key("registry")
    assert key != advisory_lock_key("online")
    assert -(2**63) <= key < 2**63
