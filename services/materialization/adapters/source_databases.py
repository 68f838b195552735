"""Where a POSTGRES source's query runs, and as whom: never as the platform's own role.

A source without a url reads the platform's database as the project's own login role,
`role_template.format(project=...)` (default `recstack_src_{project}`): a role the operator
created and granted only that project's data (README, "Running it securely"). Its password,
if the server wants one, is the secret of a declared credential of the role's name. A source
with a url reads that database as the url's user, with the password of the credential the
source references, checked again here against the credential's binding.

Every connection is read-only, refuses to run as a superuser (or a role that bypasses row
security, or the platform's own role), and bounds each statement's run time on the server
(`statement_timeout`) and, since a query may change that setting itself, on the client, by
cancelling a statement that overruns.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from services.materialization.jobs import PostgresSourceSpec
from shared.credentials import Credentials, Endpoint
from shared.db import to_libpq
from shared.errors import FailedPrecondition, InvalidArgument, Unavailable, quoted

APPLICATION_NAME = "recstack-materialization-source"
DEFAULT_ROLE_TEMPLATE = "recstack_src_{project}"
_MAX_ROLE_LENGTH = 63


@dataclass(frozen=True)
class SourceDatabases:
    """How POSTGRES sources connect; `platform_url` is the platform's database."""

    platform_url: str
    role_template: str = DEFAULT_ROLE_TEMPLATE
    credentials: Credentials = field(default_factory=Credentials)
    statement_timeout_s: float = 300.0
    # Rows one job (one window) may read from a source; beyond, the job fails.
    max_rows: int = 50_000_000

    def role(self, project: str) -> str:
        role = self.role_template.format(project=project)
        if len(role) > _MAX_ROLE_LENGTH:
            raise FailedPrecondition(
                f"the source role for project {quoted(project)} would be {len(role)} characters "
                "long; PostgreSQL allows 63: shorten RECSTACK_SOURCE_ROLE_TEMPLATE",
                reason="SOURCE_ROLE_INVALID",
            )
        return role

    def conninfo(self, project: str, source: PostgresSourceSpec) -> str:
        if not source.url:
            role = self.role(project)
            declared = role in self.credentials.names
            password = (
                self.credentials.secret_for(
                    role, _url_of(self.platform_url, role), project, f"source role {role}"
                )
                if declared
                else None
            )
            base = conninfo_to_dict(to_libpq(self.platform_url))
            base.pop("password", None)
            return make_conninfo(**{**base, "user": role, "password": password})
        try:
            Endpoint.parse(source.url, "url")
        except InvalidArgument as exc:
            raise FailedPrecondition(
                f"the POSTGRES source url: {exc.description}", reason=exc.reason
            ) from None
        if not source.credential:
            raise FailedPrecondition(
                "the POSTGRES source has a url but no credential: recreate it referencing the "
                "credential the operator declared for that database",
                reason="CREDENTIAL_REQUIRED",
            )
        password = self.credentials.secret_for(
            source.credential, source.url, project, "the POSTGRES source"
        )
        return make_conninfo(to_libpq(source.url), password=password)

    @contextmanager
    def connect(self, project: str, source: PostgresSourceSpec) -> Iterator[Guarded]:
        conninfo = self.conninfo(project, source)
        try:
            connection = psycopg.connect(conninfo, application_name=APPLICATION_NAME)
        except psycopg.OperationalError as exc:
            # psycopg's text names host, port and user, never the password.
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise Unavailable(
                f"cannot connect to the POSTGRES source database: {detail[:300]}",
                reason="SOURCE_DATABASE_UNAVAILABLE",
            ) from None
        with connection:
            # A source query must never write, whatever it says.
            connection.read_only = True
            _refuse_privileged(connection, self.platform_url)
            timeout_ms = int(self.statement_timeout_s * 1000)
            connection.execute(f"SET statement_timeout = {timeout_ms}")
            # Naive `timestamp` columns then read as UTC, as naive times in files do.
            connection.execute("SET TIME ZONE 'UTC'")
            yield Guarded(connection, self.statement_timeout_s)


class Guarded:
    """A source connection whose statements are cancelled from the client when they overrun
    (the query itself may have changed `statement_timeout`)."""

    def __init__(self, connection: psycopg.Connection[Any], timeout_s: float) -> None:
        self.connection = connection
        self._timeout_s = timeout_s

    @contextmanager
    def watched(self) -> Iterator[None]:
        timer = threading.Timer(self._timeout_s, self.connection.cancel_safe)
        timer.daemon = True
        timer.start()
        try:
            yield
        except psycopg.errors.QueryCanceled:
            raise FailedPrecondition(
                f"the POSTGRES source query ran longer than {self._timeout_s:g}s and was cancelled",
                reason="SOURCE_STATEMENT_TIMEOUT",
            ) from None
        finally:
            timer.cancel()


def _refuse_privileged(connection: psycopg.Connection[Any], platform_url: str) -> None:
    row = connection.execute(
        "SELECT current_user, rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    platform_user = conninfo_to_dict(to_libpq(platform_url)).get("user") if platform_url else None
    if row is None or row[1] or row[0] == platform_user:
        raise FailedPrecondition(
            "POSTGRES sources run only under a role without superuser or BYPASSRLS rights that "
            "is not the platform's own: the operator grants such a role the project's data",
            reason="SOURCE_ROLE_PRIVILEGED",
        )


def _url_of(platform_url: str, role: str) -> str:
    """The platform database's URL as the role connects to it (what a credential binds)."""
    parts = conninfo_to_dict(to_libpq(platform_url))
    host, port, name = (
        parts.get("host", "localhost"),
        parts.get("port", "5432"),
        parts.get("dbname", ""),
    )
    return f"postgresql://{role}@{host}:{port}/{name}"
