"""Registry storage: one table of resources, each row a version of one resource.

Specs are stored as proto JSON (`jsonb`) so people can inspect definitions with SQL; `refs`
lists the resources a row depends on, so dependency checks are one indexed query.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql

from services.registry.kinds import STORED_KINDS
from shared.db import transaction
from shared.standard_methods import Condition

KINDS_BY_KEY = {kind.key: kind for kind in STORED_KINDS}

metadata = sa.MetaData(schema="registry")
resources = sa.Table(
    "resources",
    metadata,
    sa.Column("project", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("resource_id", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("spec", postgresql.JSONB, nullable=False),
    sa.Column("refs", postgresql.ARRAY(sa.Text), nullable=False),
    sa.Column("etag", sa.Text, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
)
revision_sequence = sa.Sequence("revision_seq", schema="registry")
changes = sa.Table(
    "changes",
    metadata,
    sa.Column("revision", sa.BigInteger, primary_key=True),
    sa.Column("project", sa.Text),
    sa.Column("kind", sa.Text),
    sa.Column("resource_id", sa.Text),
    sa.Column("version", sa.Integer),
    sa.Column("change_time", sa.DateTime(timezone=True)),
)


@dataclass(frozen=True)
class StoredResource:
    """One stored version of a resource."""

    kind: str
    project: str
    resource_id: str
    version: int
    spec: Message
    refs: tuple[str, ...]
    etag: str
    create_time: datetime
    update_time: datetime


class ResourceRepository(Protocol):
    def insert(self, record: StoredResource) -> bool: ...
    def get(
        self, kind: str, project: str, resource_id: str, version: int | None = None
    ) -> StoredResource | None: ...
    def get_for_update(self, kind: str, project: str, resource_id: str) -> StoredResource | None:
        """The latest version, locked until the unit of work ends: writers of one resource
        (and of its children) that lock it first run one after the other."""
        ...

    def list_latest(
        self,
        kind: str,
        project: str | None,
        after_id: str,
        limit: int,
        conditions: Sequence[Condition] = (),
    ) -> list[StoredResource]: ...
    def list_versions(self, kind: str, project: str, resource_id: str) -> list[StoredResource]: ...
    def list_versions_before(
        self,
        kind: str,
        project: str,
        resource_id: str,
        before: int | None,
        limit: int,
        conditions: Sequence[Condition] = (),
    ) -> list[StoredResource]:
        """Versions numbered below `before` (None: all), highest first."""
        ...

    def replace(self, record: StoredResource, expected_etag: str) -> bool: ...
    def delete(self, kind: str, project: str, resource_id: str, version: int | None) -> int: ...
    def dependants(self, ref: str) -> list[str]: ...
    def changes_since(self, revision: int, limit: int) -> list[Change]: ...
    def head_revision(self) -> int: ...
    def transaction(self) -> Any:
        """The open transaction writes elsewhere in the database can join (None: none)."""
        ...


@dataclass(frozen=True)
class Change:
    """One write to the registry, in commit order of its revision."""

    revision: int
    name: str


def stored_name(kind: str, project: str, resource_id: str, version: int) -> str:
    """The resource name of one stored row (a child kind's name includes its number)."""
    return KINDS_BY_KEY[kind].name(project, resource_id, version)


class PostgresResourceRepository:
    """`ResourceRepository` on one open connection (the unit of work's transaction)."""

    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def insert(self, record: StoredResource) -> bool:
        statement = (
            postgresql.insert(resources)
            .values(**self._row(record))
            .on_conflict_do_nothing()
            .returning(resources.c.revision)
        )
        inserted = self._connection.execute(statement).first()
        if inserted is not None:
            self._log(inserted.revision, record)
        return inserted is not None

    def get(
        self, kind: str, project: str, resource_id: str, version: int | None = None
    ) -> StoredResource | None:
        query = sa.select(resources).where(
            resources.c.kind == kind,
            resources.c.project == project,
            resources.c.resource_id == resource_id,
        )
        if version:
            query = query.where(resources.c.version == version)
        row = self._connection.execute(
            query.order_by(resources.c.version.desc()).limit(1)
        ).one_or_none()
        return None if row is None else self._record(row)

    def get_for_update(self, kind: str, project: str, resource_id: str) -> StoredResource | None:
        query = (
            sa.select(resources)
            .where(
                resources.c.kind == kind,
                resources.c.project == project,
                resources.c.resource_id == resource_id,
            )
            .order_by(resources.c.version.desc())
            .limit(1)
            .with_for_update()
        )
        row = self._connection.execute(query).one_or_none()
        return None if row is None else self._record(row)

    def list_latest(
        self,
        kind: str,
        project: str | None,
        after_id: str,
        limit: int,
        conditions: Sequence[Condition] = (),
    ) -> list[StoredResource]:
        latest = (
            sa.select(resources)
            .ext(postgresql.distinct_on(resources.c.resource_id))
            .where(resources.c.kind == kind, resources.c.resource_id > after_id)
            .order_by(resources.c.resource_id, resources.c.version.desc())
        )
        if project is not None:
            latest = latest.where(resources.c.project == project)
        # Filters apply to each resource's latest version, hence the subquery.
        rows = latest.subquery()
        query = sa.select(rows).where(*(_sql_condition(rows.c.spec, c) for c in conditions))
        query = query.order_by(rows.c.resource_id).limit(limit)
        return [self._record(row) for row in self._connection.execute(query)]

    def list_versions(self, kind: str, project: str, resource_id: str) -> list[StoredResource]:
        query = (
            sa.select(resources)
            .where(
                resources.c.kind == kind,
                resources.c.project == project,
                resources.c.resource_id == resource_id,
            )
            .order_by(resources.c.version)
        )
        return [self._record(row) for row in self._connection.execute(query)]

    def list_versions_before(
        self,
        kind: str,
        project: str,
        resource_id: str,
        before: int | None,
        limit: int,
        conditions: Sequence[Condition] = (),
    ) -> list[StoredResource]:
        query = sa.select(resources).where(
            resources.c.kind == kind,
            resources.c.project == project,
            resources.c.resource_id == resource_id,
            *(_sql_condition(resources.c.spec, c) for c in conditions),
        )
        if before is not None:
            query = query.where(resources.c.version < before)
        query = query.order_by(resources.c.version.desc()).limit(limit)
        return [self._record(row) for row in self._connection.execute(query)]

    def changes_since(self, revision: int, limit: int) -> list[Change]:
        query = (
            sa.select(changes)
            .where(changes.c.revision > revision)
            .order_by(changes.c.revision)
            .limit(limit)
        )
        return [
            Change(row.revision, stored_name(row.kind, row.project, row.resource_id, row.version))
            for row in self._connection.execute(query)
        ]

    def replace(self, record: StoredResource, expected_etag: str) -> bool:
        statement = (
            resources.update()
            .where(
                resources.c.kind == record.kind,
                resources.c.project == record.project,
                resources.c.resource_id == record.resource_id,
                resources.c.version == record.version,
                resources.c.etag == expected_etag,
            )
            .values(**self._row(record))
            .returning(resources.c.revision)
        )
        replaced = self._connection.execute(statement).first()
        if replaced is not None:
            self._log(replaced.revision, record)
        return replaced is not None

    def delete(self, kind: str, project: str, resource_id: str, version: int | None) -> int:
        statement = resources.delete().where(
            resources.c.kind == kind,
            resources.c.project == project,
            resources.c.resource_id == resource_id,
        )
        if version:
            statement = statement.where(resources.c.version == version)
        deleted = self._connection.execute(statement).rowcount
        if deleted:
            revision = self._connection.execute(revision_sequence.next_value()).scalar_one()
            self._log_change(revision, kind, project, resource_id, version or 0)
        return deleted

    def transaction(self) -> Any:
        """The unit of work's open psycopg connection, for writes to the same database (the
        online tables of feature-view versions) that must commit with the registry's."""
        return self._connection.connection.driver_connection

    def head_revision(self) -> int:
        query = sa.select(sa.func.coalesce(sa.func.max(changes.c.revision), 0))
        return int(self._connection.execute(query).scalar_one())

    def _log(self, revision: int, record: StoredResource) -> None:
        self._log_change(revision, record.kind, record.project, record.resource_id, record.version)

    def _log_change(
        self, revision: int, kind: str, project: str, resource_id: str, version: int
    ) -> None:
        self._connection.execute(
            changes.insert().values(
                revision=revision,
                project=project,
                kind=kind,
                resource_id=resource_id,
                version=version,
                change_time=sa.func.now(),
            )
        )

    def dependants(self, ref: str) -> list[str]:
        query = (
            sa.select(
                resources.c.kind, resources.c.project, resources.c.resource_id, resources.c.version
            )
            .where(resources.c.refs.any_() == ref)
            .order_by(resources.c.kind, resources.c.resource_id, resources.c.version)
        )
        # Versions of one feature view share a name; each model version has its own.
        names = (
            stored_name(row.kind, row.project, row.resource_id, row.version)
            for row in self._connection.execute(query)
        )
        return list(dict.fromkeys(names))

    def _row(self, record: StoredResource) -> dict[str, object]:
        return {
            "project": record.project,
            "kind": record.kind,
            "resource_id": record.resource_id,
            "version": record.version,
            # Defaults printed too, so filters such as `online_enabled=false` see a value.
            "spec": json_format.MessageToDict(
                record.spec,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            ),
            "refs": list(record.refs),
            "etag": record.etag,
            "revision": revision_sequence.next_value(),
            "create_time": record.create_time,
            "update_time": record.update_time,
        }

    def _record(self, row: sa.Row) -> StoredResource:
        message = KINDS_BY_KEY[row.kind].message()
        json_format.ParseDict(row.spec, message)
        return StoredResource(
            kind=row.kind,
            project=row.project,
            resource_id=row.resource_id,
            version=row.version,
            spec=message,
            refs=tuple(row.refs),
            etag=row.etag,
            create_time=row.create_time,
            update_time=row.update_time,
        )


@contextmanager
def postgres_unit_of_work(engine: sa.Engine) -> Iterator[PostgresResourceRepository]:
    """A repository whose writes commit together when the block succeeds, else roll back."""
    with transaction(engine) as connection:
        yield PostgresResourceRepository(connection)


def _sql_condition(spec: sa.ColumnElement[object], condition: Condition) -> sa.ColumnElement[bool]:
    value = sa.cast(spec, postgresql.JSONB)[condition.path].astext  # type: ignore[index]
    if condition.operator == "=":
        return value == condition.value
    if condition.operator == "!=":
        return value.is_distinct_from(condition.value)
    escaped = re.sub(r"([%_\\])", r"\\\1", condition.value)
    return value.ilike(f"%{escaped}%")
