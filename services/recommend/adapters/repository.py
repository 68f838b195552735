"""Scene and experiment storage on PostgreSQL: one table per kind in schema `recommend`.

Specs are stored as proto JSON (`jsonb`) so people can inspect configurations with SQL.
Conditional writes (`WHERE etag = :expected`) make concurrent updates lose cleanly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from google.protobuf import json_format
from google.protobuf.message import Message
from recstack.recommend.v1 import experiment_pb2, scene_pb2
from sqlalchemy.dialects import postgresql

from services.recommend.catalog import Change, StoredResource
from shared.db import transaction

SCHEMA = "recommend"

metadata = sa.MetaData(schema=SCHEMA)


def _resource_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("spec", postgresql.JSONB, nullable=False),
        sa.Column("etag", sa.Text, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    )


changes = sa.Table(
    "changes",
    metadata,
    sa.Column("revision", sa.BigInteger, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("id", sa.Text, nullable=False),
)
TABLES: dict[str, sa.Table] = {
    "scene": _resource_table("scenes"),
    "experiment": _resource_table("experiments"),
}
MESSAGES: dict[str, type[Message]] = {
    "scene": scene_pb2.Scene,
    "experiment": experiment_pb2.Experiment,
}


class PostgresResourceRepository:
    """`ResourceRepository` on one open connection (the unit of work's transaction)."""

    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def insert(self, record: StoredResource) -> bool:
        table = TABLES[record.kind]
        # RETURNING, not rowcount: SQLAlchemy reports no rowcount for INSERT by default.
        statement = (
            postgresql.insert(table)
            .values(**_row(record))
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(table.c.id)
        )
        inserted = self._connection.execute(statement).first() is not None
        if inserted:
            self._log(record.kind, record.resource_id)
        return inserted

    def get(self, kind: str, resource_id: str) -> StoredResource | None:
        table = TABLES[kind]
        row = self._connection.execute(
            sa.select(table).where(table.c.id == resource_id)
        ).one_or_none()
        return None if row is None else _record(kind, row)

    def list(self, kind: str, after_id: str, limit: int) -> list[StoredResource]:
        table = TABLES[kind]
        query = sa.select(table).where(table.c.id > after_id).order_by(table.c.id).limit(limit)
        return [_record(kind, row) for row in self._connection.execute(query)]

    def replace(self, record: StoredResource, expected_etag: str) -> bool:
        table = TABLES[record.kind]
        statement = (
            table.update()
            .where(table.c.id == record.resource_id, table.c.etag == expected_etag)
            .values(**_row(record))
        )
        replaced = self._connection.execute(statement).rowcount == 1
        if replaced:
            self._log(record.kind, record.resource_id)
        return replaced

    def delete(self, kind: str, resource_id: str, expected_etag: str) -> bool:
        table = TABLES[kind]
        statement = table.delete().where(table.c.id == resource_id, table.c.etag == expected_etag)
        deleted = self._connection.execute(statement).rowcount == 1
        if deleted:
            self._log(kind, resource_id)
        return deleted

    def changes_since(self, revision: int, limit: int) -> list[Change]:
        query = (
            sa.select(changes)
            .where(changes.c.revision > revision)
            .order_by(changes.c.revision)
            .limit(limit)
        )
        return [Change(row.revision, row.kind, row.id) for row in self._connection.execute(query)]

    def head_revision(self) -> int:
        query = sa.select(sa.func.coalesce(sa.func.max(changes.c.revision), 0))
        return int(self._connection.execute(query).scalar_one())

    def _log(self, kind: str, resource_id: str) -> None:
        # In the write's own transaction: the change is visible exactly when the write is.
        self._connection.execute(changes.insert().values(kind=kind, id=resource_id))

    def experiments_of(self, scene_id: str) -> list[StoredResource]:
        table = TABLES["experiment"]
        # Matches the expression index `experiments_scene`.
        query = (
            sa.select(table).where(table.c.spec["scene"].astext == scene_id).order_by(table.c.id)
        )
        return [_record("experiment", row) for row in self._connection.execute(query)]


def _row(record: StoredResource) -> dict[str, object]:
    return {
        "id": record.resource_id,
        "spec": json_format.MessageToDict(record.spec, preserving_proto_field_name=True),
        "etag": record.etag,
        "create_time": record.create_time,
        "update_time": record.update_time,
    }


def _record(kind: str, row: sa.Row) -> StoredResource:
    message = MESSAGES[kind]()
    json_format.ParseDict(row.spec, message)
    return StoredResource(kind, row.id, message, row.etag, row.create_time, row.update_time)


@contextmanager
def postgres_unit_of_work(engine: sa.Engine) -> Iterator[PostgresResourceRepository]:
    """A repository whose writes commit together when the block succeeds, else roll back."""
    with transaction(engine) as connection:
        yield PostgresResourceRepository(connection)
