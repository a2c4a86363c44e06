"""Whole SQLite transactions in one trip to a worker thread.

Through SQLAlchemy on aiosqlite every statement is several hops between the event loop and
the driver's thread, each waiting for a turn of a loop that every request shares. A
transaction written as one plain function over the sqlite3 module runs in a worker thread
in one trip instead, while the loop goes on serving (SQLite releases the GIL while it works).

Values bound by such a function go through their column type's own bind processor
(:class:`BoundInsert`), so what is stored is byte for byte what SQLAlchemy stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Table, exc
from sqlalchemy.engine import Dialect

T = TypeVar("T")


class BoundInsert:
    """An INSERT of given columns into a table, and its parameters with every value through
    its column type's bind processor for ``dialect``."""

    def __init__(self, table: Table, columns: Sequence[str], dialect: Dialect) -> None:
        """``columns``: at least two."""
        if len(columns) < 2:
            raise ValueError("an insert of at least two columns")
        self.sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        self._values = operator.itemgetter(*columns)
        processors = (table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns)
        # Most columns (plain strings and integers) bind as they are.
        self._processed = [
            (index, process) for index, process in enumerate(processors) if process is not None
        ]

    def parameters(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """The row's values in column order, as the driver must receive them."""
        values = list(self._values(row))
        for index, process in self._processed:
            values[index] = process(values[index])
        return tuple(values)


class SqliteThread:
    """One plain sqlite3 connection, used from worker threads one transaction at a time."""

    def __init__(self, path: str, configure: Callable[[sqlite3.Connection], None]) -> None:
        """``configure`` sets the connection up once it is opened (pragmas)."""
        self._path = path
        self._configure = configure
        self._connection: sqlite3.Connection | None = None
        self._turn = asyncio.Lock()

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` in a worker thread (rolled
        back if it raises). sqlite3 errors come out as SQLAlchemy's exception types, so
        callers tell a violated constraint from an unreachable database as they do elsewhere."""
        async with self._turn:
            return await asyncio.to_thread(self._run, work)

    async def close(self) -> None:
        """Close the connection (opened again on the next transaction)."""
        async with self._turn:
            if self._connection is not None:
                connection, self._connection = self._connection, None
                await asyncio.to_thread(connection.close)

    # --- in the worker thread -----------------------------------------------------------

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if self._connection is None:
                connection = sqlite3.connect(self._path, timeout=5.0, check_same_thread=False)
                self._configure(connection)
                self._connection = connection
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (a full disk): the next trip must begin afresh.
                if connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                raise
            return result
        except sqlite3.IntegrityError as error:
            raise exc.IntegrityError("sqlite transaction", None, error) from error
        except sqlite3.OperationalError as error:
            raise exc.OperationalError("sqlite transaction", None, error) from error
        except sqlite3.DatabaseError as error:
            raise exc.DatabaseError("sqlite transaction", None, error) from error
