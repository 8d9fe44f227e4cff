"""The feature store's SQL: the offline source tables of the repo's PostgreSQL sources (created from the
feature views' schemas at start-up, appended to by pushes), and the record of each start's repo apply.

Feast's PostgreSQL offline store reads these tables (point-in-time joins, materialization) but neither
creates them nor writes them (it has no `offline_write_batch`), so the feature store does both. A table
holds one row per pushed entity row: the join keys, the features, the event timestamp and a created
timestamp (Feast's tie-breaker between rows with the same event timestamp).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.value_type import ValueType
from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from flywheel.common.db import Database, advisory_lock

# PostgreSQL column types of Feast value types (what Feast's postgres type map reads back as the same type).
PG_TYPES: dict[ValueType, str] = {
    ValueType.STRING: "text",
    ValueType.INT32: "integer",
    ValueType.INT64: "bigint",
    ValueType.FLOAT: "real",
    ValueType.DOUBLE: "double precision",
    ValueType.BOOL: "boolean",
    ValueType.BYTES: "bytea",
    ValueType.UNIX_TIMESTAMP: "timestamptz",
    ValueType.STRING_LIST: "text[]",
    ValueType.INT32_LIST: "integer[]",
    ValueType.INT64_LIST: "bigint[]",
    ValueType.FLOAT_LIST: "real[]",
    ValueType.DOUBLE_LIST: "double precision[]",
    ValueType.BOOL_LIST: "boolean[]",
    ValueType.BYTES_LIST: "bytea[]",
    ValueType.UNIX_TIMESTAMP_LIST: "timestamptz[]",
}


class SourceTableError(ValueError):
    """A repo whose PostgreSQL sources cannot be turned into tables (a start-up configuration error)."""


@dataclass
class SourceTable:
    """One PostgreSQL table behind one or more feature views."""

    schema: str
    name: str
    timestamp_field: str
    created_column: str
    # join keys first, then features; column -> PostgreSQL type
    join_keys: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    # feature name -> its column (differs when the source has a field mapping)
    feature_columns: dict[str, str] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def add_column(self, column: str, pg_type: str, *, what: str) -> None:
        existing = self.columns.get(column)
        if existing is not None and existing != pg_type:
            raise SourceTableError(f"table {self.qualified}: column {column!r} is {existing} for one feature view "
                                   f"and {pg_type} for another ({what})")
        self.columns[column] = pg_type

    def identifier(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)


def table_of(source: PostgreSQLSource, default_schema: str) -> tuple[str, str] | None:
    """(schema, table) a PostgreSQL source reads, as PostgreSQL resolves the unquoted name Feast puts in its
    queries (lower case; `default_schema` when unqualified, the first schema on Feast's search path);
    None for a query-based source."""
    table = source._postgres_options._table  # Feast keeps it private; it has no public accessor
    if not table:
        return None
    parts = table.strip().split(".")
    if len(parts) == 1:
        return default_schema, parts[0].lower()
    if len(parts) == 2:
        return parts[0].lower(), parts[1].lower()
    raise SourceTableError(f"PostgreSQL source {source.name!r}: table {table!r} is not `table` or `schema.table`")


def pg_type(value_type: ValueType, what: str) -> str:
    try:
        return PG_TYPES[value_type]
    except KeyError:
        raise SourceTableError(f"{what}: Feast type {value_type.name} has no PostgreSQL column type here") from None


def view_join_keys(view: Any, entities: Iterable[Any]) -> dict[str, ValueType]:
    """A view's join keys and their types: as its schema declares them, else from its entities (which is
    what Feast infers when it applies the view)."""
    by_name = {e.name: e for e in entities}
    declared = {f.name: f.dtype.to_value_type() for f in view.entity_columns}
    keys: dict[str, ValueType] = {}
    for name in view.entities:
        entity = by_name.get(name)
        if entity is None or entity.join_key == "__dummy_id":
            continue
        keys[entity.join_key] = declared.get(entity.join_key) or entity.value_type
    for key, value_type in declared.items():
        keys.setdefault(key, value_type)
    return keys


def source_tables(views: Iterable[Any], entities: Iterable[Any], default_schema: str) -> list[SourceTable]:
    """The tables behind the views' PostgreSQL batch sources, with the columns their schemas need."""
    entities = list(entities)
    tables: dict[tuple[str, str], SourceTable] = {}
    for view in views:
        source = getattr(view, "batch_source", None)
        if not isinstance(source, PostgreSQLSource):
            continue
        where = table_of(source, default_schema)
        if where is None:
            continue
        if not view.features:
            # No schema declared: Feast infers the features from the table, which must then exist already.
            continue
        timestamp_field = source.timestamp_field or "event_timestamp"
        table = tables.setdefault(where, SourceTable(where[0], where[1], timestamp_field,
                                                     source.created_timestamp_column or ""))
        if table.timestamp_field != timestamp_field:
            raise SourceTableError(f"table {table.qualified}: sources disagree on the timestamp field "
                                   f"({table.timestamp_field!r} vs {timestamp_field!r})")
        for key, value_type in view_join_keys(view, entities).items():
            if value_type == ValueType.UNKNOWN:
                raise SourceTableError(f"feature view {view.name!r}: no type for join key {key!r}; give its "
                                       "entity a value_type or list it in the view's schema")
            table.add_column(key, pg_type(value_type, f"join key {key!r}"), what=view.name)
            if key not in table.join_keys:
                table.join_keys.append(key)
        inverse = {feature: column for column, feature in (source.field_mapping or {}).items()}
        for feature in view.features:
            column = inverse.get(feature.name, feature.name)
            table.add_column(column, pg_type(feature.dtype.to_value_type(), f"{view.name}:{feature.name}"),
                             what=view.name)
            table.feature_columns[feature.name] = column
    for table in tables.values():
        table.add_column(table.timestamp_field, "timestamptz", what="event timestamp")
        if table.created_column:
            table.add_column(table.created_column, "timestamptz", what="created timestamp")
    return list(tables.values())


async def ensure_tables(conn: AsyncConnection, tables: Sequence[SourceTable]) -> None:
    """Create the tables (and columns, and the point-in-time index) that do not exist yet; safe to repeat."""
    for table in tables:
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)))
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in table.columns.items())
        await conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table.identifier(), columns))
        for column, pg in table.columns.items():  # a feature added to the view later
            await conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                table.identifier(), sql.Identifier(column), sql.SQL(pg)))
        index = f"{table.name[:50]}_pit_idx"
        await conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(index), table.identifier(),
            sql.SQL(", ").join(sql.Identifier(c) for c in [*table.join_keys, table.timestamp_field])))


async def append_rows(conn: AsyncConnection, table: SourceTable, columns: Sequence[str],
                      rows: Iterable[Sequence[Any]]) -> None:
    """Append rows (values in `columns` order) to a source table with COPY, in the caller's transaction."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        table.identifier(), sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    async with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            await copy.write_row(row)


def created_times(base: datetime, count: int) -> list[datetime]:
    """Distinct, increasing `created` values for rows written together, so that of two rows with the same
    entity and event time the one written later wins the point-in-time join, as it wins online."""
    return [base + timedelta(microseconds=i) for i in range(count)]


@contextlib.asynccontextmanager
async def apply_lock(db: Database) -> AsyncIterator[None]:
    """Hold the schema's repo-apply lock for the block (replicas starting together apply one at a time)."""
    async with advisory_lock(db.url, f"flywheel.featurestore.apply.{db.schema}"):
        yield


async def record_apply(conn: AsyncConnection, repo: str, project: str, added: list[str], deleted: list[str]) -> None:
    """Keep what one apply of the repo added to and deleted from the Feast registry."""
    await conn.execute("INSERT INTO repo_applies (repo, project, added, deleted) VALUES (%s, %s, %s, %s)",
                       (repo, project, Jsonb(added), Jsonb(deleted)))
