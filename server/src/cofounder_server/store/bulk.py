"""Many rows of one table in one statement, at the driver's pace on SQLite.

A group commit inserts hundreds of rows per transaction (ledger rows, conversation messages,
checkpoint heads, events). Through a compiled Core ``INSERT``, SQLAlchemy builds and
processes a parameter dictionary per row on the way to the driver, which on SQLite cost more
CPU than SQLite's own work: the writer thread holds the GIL for it while the event loop waits
to run agents. On SQLite the rows go to the driver as plain tuples instead, through the SQL
text of the statement and each column type's own bind processor, so what is stored is byte
for byte what the Core statement stores (a test compares them), and errors are wrapped as
for any statement. Other databases get the Core statement.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect


def insert_rows(
    connection: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    upsert_key: str = "",
) -> None:
    """Insert ``rows`` (each with the same columns) into ``table`` in ``connection``'s
    transaction; with ``upsert_key``, a row whose key exists replaces that row's other
    columns."""
    if not rows:
        return
    columns = tuple(rows[0])
    dialect = connection.dialect
    if dialect.name != "sqlite":
        connection.execute(_core_insert(table, columns, upsert_key, dialect.name), list(rows))
        return
    plan = _sqlite_plan(table, columns, upsert_key, dialect)
    connection.exec_driver_sql(plan.sql, [plan.parameters(row) for row in rows])


@functools.cache
def _core_insert(table: Table, columns: tuple[str, ...], upsert_key: str, dialect_name: str) -> Any:
    insert = (postgresql if dialect_name == "postgresql" else sqlite).insert(table)
    if not upsert_key:
        return insert
    return insert.on_conflict_do_update(
        index_elements=[table.c[upsert_key]],
        set_={name: insert.excluded[name] for name in columns if name != upsert_key},
    )


class _SqlitePlan:
    """The SQL text of an insert of given columns and a tuple of processed values per row."""

    def __init__(self, table: Table, columns: tuple[str, ...], upsert_key: str, dialect: Dialect) -> None:
        names = ", ".join(columns)
        self.sql = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' * len(columns))})"
        if upsert_key:
            updates = ", ".join(f"{name} = excluded.{name}" for name in columns if name != upsert_key)
            self.sql += f" ON CONFLICT ({upsert_key}) DO UPDATE SET {updates}"
        self._processors = [
            table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns
        ]
        self._values = itemgetter(*columns)
        self._single = len(columns) == 1

    def parameters(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        values = (self._values(row),) if self._single else self._values(row)
        return tuple(
            value if process is None else process(value)
            for value, process in zip(values, self._processors, strict=True)
        )


@functools.cache
def _sqlite_plan(table: Table, columns: tuple[str, ...], upsert_key: str, dialect: Dialect) -> _SqlitePlan:
    return _SqlitePlan(table, columns, upsert_key, dialect)
