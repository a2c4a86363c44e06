"""Many rows of one table in one statement, at the driver's pace on SQLite.

A group commit inserts hundreds of rows per transaction (ledger rows, conversation messages,
checkpoint heads, events). Through a compiled Core ``INSERT``, SQLAlchemy builds and
processes a parameter dictionary per row on the way to the driver, which on SQLite cost more
CPU than SQLite's own work: the writer thread holds the GIL for it while the event loop waits
to run agents. On SQLite the rows go to the driver as plain tuples instead, through the SQL
text of the statement and each column type's own bind processor, so what is stored is byte
for byte what the Core statement stores (a test compares them), and errors are wrapped as
for any statement. Other databases get the Core statement.

Callers on the hot path hand rows over as tuples in a fixed column order
(:func:`insert_tuples`): a batch then allocates one object per row, not a dictionary, a tuple
of its values and a processed tuple, which kept the young garbage collector busy promoting a
batch's rows on their way to the driver.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator, TypeEngine

Columns = tuple[str, ...]
"""Column names, in the order of each row's values."""


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
    insert_tuples(
        connection,
        table,
        columns,
        [tuple(row[name] for name in columns) for row in rows],
        upsert_key=upsert_key,
    )


def insert_tuples(
    connection: Connection,
    table: Table,
    columns: Columns,
    rows: Sequence[tuple[Any, ...]],
    *,
    upsert_key: str = "",
) -> None:
    """:func:`insert_rows` for rows given as tuples of values in the order of ``columns``."""
    if not rows:
        return
    width = len(columns)
    if any(len(row) != width for row in rows):
        raise ValueError(f"rows of {width} values expected")
    dialect = connection.dialect
    if dialect.name != "sqlite":
        statement = _core_insert(table, columns, upsert_key, dialect.name)
        connection.execute(statement, [dict(zip(columns, row, strict=True)) for row in rows])
        return
    plan = _sqlite_plan(table, columns, upsert_key, dialect)
    connection.exec_driver_sql(plan.sql, plan.parameters(rows))


@functools.cache
def _core_insert(table: Table, columns: Columns, upsert_key: str, dialect_name: str) -> Any:
    insert = (postgresql if dialect_name == "postgresql" else sqlite).insert(table)
    if not upsert_key:
        return insert
    return insert.on_conflict_do_update(
        index_elements=[table.c[upsert_key]],
        set_={name: insert.excluded[name] for name in columns if name != upsert_key},
    )


class _SqlitePlan:
    """The SQL text of an insert of given columns, and the rows' values as the driver takes
    them (through each column's bind processor)."""

    def __init__(self, table: Table, columns: Columns, upsert_key: str, dialect: Dialect) -> None:
        names = ", ".join(columns)
        self.sql = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' * len(columns))})"
        if upsert_key:
            updates = ", ".join(f"{name} = excluded.{name}" for name in columns if name != upsert_key)
            self.sql += f" ON CONFLICT ({upsert_key}) DO UPDATE SET {updates}"
        self._width = len(columns)
        processors: list[tuple[int, Callable[[Any], Any], bool]] = []
        for index, name in enumerate(columns):
            column_type = table.c[name].type
            process = column_type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                # A batch's rows mostly share their times (the commit's, the budget window's):
                # a time equal to the row before's is not processed again.
                processors.append((index, process, _is_time(column_type)))
        self._processors = tuple(processors)

    def parameters(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The rows' values (one per column), processed."""
        width = self._width
        if not self._processors:
            return list(rows)
        last: list[Any] = [_NONE] * width
        done: list[Any] = [None] * width
        parameters = []
        for row in rows:
            values = list(row)
            for index, process, repeatable in self._processors:
                value = values[index]
                if repeatable and value is not None and value == last[index]:
                    values[index] = done[index]
                    continue
                values[index] = result = process(value)
                if repeatable:
                    last[index], done[index] = value, result
            parameters.append(tuple(values))
        return parameters


def _is_time(column_type: TypeEngine[Any]) -> bool:
    impl = column_type.impl_instance if isinstance(column_type, TypeDecorator) else column_type
    return isinstance(impl, DateTime)


_NONE = object()
"""No value processed yet (every value differs from it)."""


@functools.cache
def _sqlite_plan(table: Table, columns: Columns, upsert_key: str, dialect: Dialect) -> _SqlitePlan:
    return _SqlitePlan(table, columns, upsert_key, dialect)
