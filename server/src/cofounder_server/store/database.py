"""The SQL engine: one ``Database`` per process, on SQLite (embedded) or PostgreSQL.

Repositories open sessions through :meth:`Database.read` and :meth:`Database.write`, or
run a whole write transaction as one function with :meth:`Database.transact`; all of them
turn "the database cannot be reached" into the domain's ``Unavailable``, so no caller ever
has to know a driver's exception types.

SQLite has one write lock for the whole file. A transaction on the event loop holds it
across every statement's round trip to the driver's thread, and each round trip waits for a
turn of a loop that thousands of agents share: under load a short transaction holds the lock
for many milliseconds and other writers time out. So on SQLite, writers of this process take
turns on an asyncio lock before they begin (no writer of this process ever waits for the
file lock, let alone times out on it), and :meth:`Database.transact` runs its function in
one trip to a writer thread of its own, holding the lock only while SQLite works.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

import orjson
from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from cofounder_server import jsontext, observability
from cofounder_server.domain.errors import Unavailable
from cofounder_server.store.write_health import WriteHealth

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}

# SQLSTATE classes PostgreSQL reports when it cannot serve a connection at all: connection
# exceptions, bad credentials, missing database, resource exhaustion, and shutdown/startup.
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "28", "3D", "53", "57P")

# Picked up by the SQLite "begin" hook; see _install_sqlite_hooks.
_BEGIN_OPTION = "cofounder_sqlite_begin"

_POSTGRES_CONNECT_TIMEOUT_SECONDS = 5.0

P = ParamSpec("P")
T = TypeVar("T")


def async_url(url: str) -> URL:
    """Parse ``url`` and point it at the async driver (``aiosqlite`` or ``asyncpg``).

    Accepts ``sqlite://``, ``sqlite+aiosqlite://`` (with a file path), ``postgres://``,
    ``postgresql://`` and ``postgresql+asyncpg://``; anything else is a configuration error
    (``ValueError``).
    """
    parsed = make_url(url)
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: use sqlite+aiosqlite:// or "
            "postgresql+asyncpg://"
        )
    if driver.startswith("sqlite") and _is_memory_database(parsed):
        # Migrations run on an engine of their own, which would get a database of its own.
        raise ValueError("in-memory SQLite is not supported: give the database a file path")
    return parsed.set(drivername=driver)


def _is_memory_database(url: URL) -> bool:
    database = url.database or ""
    return database == "" or ":memory:" in database or url.query.get("mode") == "memory"


def is_unavailable_error(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached, rather than a bad statement.

    On SQLite every ``OperationalError`` counts (unopenable file, lock timeout, I/O error,
    full disk), and that includes a missing table: a database nobody migrated.
    """
    if isinstance(error, OSError | exc.TimeoutError | exc.OperationalError | exc.InterfaceError):
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        sqlstate = getattr(error.orig, "sqlstate", None)
        return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)
    return False


@asynccontextmanager
async def unavailable_on_connection_error() -> AsyncIterator[None]:
    """Re-raise connectivity failures in the block as ``Unavailable``; let others through."""
    try:
        yield
    except Exception as error:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Cancelled mid-query, asyncpg's rollback fails ("another operation is in
            # progress") and that error replaces the CancelledError; put the cancel back,
            # or a loop that rides out database outages would swallow it and never stop.
            raise asyncio.CancelledError from error
        if is_unavailable_error(error):
            observability.metrics.sql_errors.inc()
            # The message may reach API clients: the details (hosts, SQL) stay in __cause__.
            raise Unavailable(f"the database is unavailable ({type(error).__name__})") from error
        raise


class Database:
    """An async engine and its session factories. Create with :func:`open_database`."""

    def __init__(self, engine: AsyncEngine, *, sqlite_foreign_keys: bool = True) -> None:
        self.engine = engine
        self.writes = WriteHealth()
        """Whether the latest write transaction succeeded (for the health service)."""
        self._reader = async_sessionmaker(engine, expire_on_commit=False)
        self._writer = async_sessionmaker(
            engine.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"}), expire_on_commit=False
        )
        self._sqlite = _SqliteWriter(engine.url, foreign_keys=sqlite_foreign_keys) if self.is_sqlite else None

    @property
    def dialect_name(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded SQLite file (one writer at a time)."""
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction for reads; committed on success, rolled back on error."""
        started = time.perf_counter()
        async with unavailable_on_connection_error(), self._reader.begin() as session:
            yield session
        observability.metrics.sql_read_seconds.observe(time.perf_counter() - started)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction that will write.

        On SQLite it takes the database's write lock up front (``BEGIN IMMEDIATE``), so a
        transaction that reads and then writes waits its turn under ``busy_timeout`` instead
        of failing when another writer commits in between. The outcome goes to
        :attr:`writes`.
        """
        async with self._turn():
            started = time.perf_counter()
            async with (
                unavailable_on_connection_error(),
                self.observe_writes(),
                self._writer.begin() as session,
            ):
                yield session
            observability.metrics.sql_write_seconds.observe(time.perf_counter() - started)

    async def transact(
        self, work: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``work(connection, *args, **kwargs)`` as one write transaction (SQLAlchemy Core
        on a synchronous connection) and return what it returns; committed when it returns,
        rolled back when it raises.

        On SQLite the whole function runs in one trip to this process's writer thread (see
        the module docstring); on PostgreSQL through ``AsyncConnection.run_sync``. A caller
        cancelled meanwhile does not stop a transaction already in the writer thread: it
        commits or rolls back on its own.
        """
        async with self._turn():
            started = time.perf_counter()
            async with unavailable_on_connection_error(), self.observe_writes():
                if self._sqlite is not None:
                    result = await self._sqlite.run(work, *args, **kwargs)
                else:
                    async with self.engine.begin() as connection:
                        result = await connection.run_sync(work, *args, **kwargs)
            observability.metrics.sql_write_seconds.observe(time.perf_counter() - started)
            return result

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """This process's turn to write: on SQLite one writer at a time, queued fairly here
        rather than polling the file lock; on PostgreSQL no wait (row locks decide)."""
        if self._sqlite is None:
            yield
            return
        async with self._sqlite.turn:
            yield

    @asynccontextmanager
    async def observe_writes(self) -> AsyncIterator[None]:
        """Report the block's outcome to :attr:`writes`: a commit, or a storage failure
        (errors about the data itself, such as a violated constraint, say nothing)."""
        try:
            yield
        except Exception as error:
            if is_unavailable_error(error):
                self.writes.failed(error)
            raise
        self.writes.succeeded()

    async def check_writes(self) -> None:
        """Raise while writes fail, after a write probe (:meth:`probe_write`) that finds
        out whether they work again; costs nothing while writes succeed."""
        if self.writes.failure is not None:
            await self.probe_write()

    async def probe_write(self) -> None:
        """Commit a write that needs new space (a table and a 16 KiB row, dropped again in
        the same transaction); raise ``Unavailable`` if the database cannot take it."""
        table = f"write_probe_{uuid.uuid4().hex}"
        payload = "BYTEA" if self.dialect_name == "postgresql" else "BLOB"
        async with self.write() as session:
            await session.execute(text(f"CREATE TABLE {table} (payload {payload})"))
            await session.execute(text(f"INSERT INTO {table} (payload) VALUES (:p)"), {"p": bytes(16384)})
            await session.execute(text(f"DROP TABLE {table}"))

    async def ping(self) -> None:
        """Run ``SELECT 1``; raise ``Unavailable`` if the database cannot be reached."""
        async with unavailable_on_connection_error(), self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Close every pooled connection. The object must not be used afterwards."""
        if self._sqlite is not None:
            await self._sqlite.close()
        await self.engine.dispose()


GIL_SWITCH_INTERVAL_SECONDS = 0.001
"""How long a thread may hold the GIL while another waits for it, once the SQLite writer
thread runs (Python's default: 5 ms)."""


class _SqliteWriter:
    """One thread with one connection of its own that runs whole write transactions.

    SQLite releases the GIL while it works, so the event loop goes on serving agents and
    calls meanwhile. The thread and its connection start on first use and again after
    :meth:`close` (as the engine's pool does).
    """

    def __init__(self, url: URL, *, foreign_keys: bool) -> None:
        self.turn = asyncio.Lock()
        """Held by whichever writer of this process is writing (see ``Database._turn``)."""
        self._engine: Engine = create_engine(
            url.set(drivername="sqlite+pysqlite"), poolclass=NullPool, **_JSON_CODEC
        )
        _install_sqlite_hooks(self._engine, foreign_keys=foreign_keys)
        self._begin_immediate = self._engine.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
        self._thread: ThreadPoolExecutor | None = None
        self._connection: Connection | None = None

    async def run(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._thread is None:
            # The thread's Python work (building rows, SQLAlchemy's execution) holds the GIL the
            # event loop needs; at the default 5 ms switch interval the loop waited that long
            # each time it asked for it (the scripted executor benchmark: ~2,000 iterations/s
            # against ~2,550 at 1 ms, with the same CPU per iteration).
            sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_SECONDS))
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: self._transact(work, args, kwargs))

    def _transact(self, work: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        if self._connection is None or self._connection.closed:
            self._connection = self._begin_immediate.connect()
        connection = self._connection
        try:
            with connection.begin():
                return work(connection, *args, **kwargs)
        except BaseException:
            # A connection that failed mid-transaction (a lost file, a full disk) starts afresh.
            if connection.invalidated:
                self._connection = None
            raise

    async def close(self) -> None:
        """Close the connection and stop the thread (both start again when next needed)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return

        def close() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            self._engine.dispose()

        await asyncio.get_running_loop().run_in_executor(thread, close)
        await asyncio.to_thread(thread.shutdown)


async def open_database(url: str, *, echo: bool = False, sqlite_foreign_keys: bool = True) -> Database:
    """Create the engine for ``url`` (see :func:`async_url`). Does not connect yet.

    SQLite file paths must be in an existing directory; call :meth:`Database.ping` to
    check connectivity and ``cofounder_server.store.migrate.upgrade_to_head`` to create or
    upgrade the schema. ``sqlite_foreign_keys=False`` is for schema migrations only, which
    rebuild SQLite tables and check foreign keys themselves.
    """
    return Database(
        _create_engine(async_url(url), echo=echo, sqlite_foreign_keys=sqlite_foreign_keys),
        sqlite_foreign_keys=sqlite_foreign_keys,
    )


def _create_engine(url: URL, *, echo: bool, sqlite_foreign_keys: bool) -> AsyncEngine:
    if url.get_backend_name() == "postgresql":
        connect_args: dict[str, Any] = {}
        if "timeout" not in url.query:
            # asyncpg waits 60 s by default; a health check should fail much sooner.
            connect_args["timeout"] = _POSTGRES_CONNECT_TIMEOUT_SECONDS
        # pre_ping replaces connections a database restart has closed, instead of failing
        # the first request after it.
        return create_async_engine(
            url, echo=echo, pool_pre_ping=True, connect_args=connect_args, **_JSON_CODEC
        )
    engine = create_async_engine(url, echo=echo, **_JSON_CODEC)
    _install_sqlite_hooks(engine, foreign_keys=sqlite_foreign_keys)
    return engine


_JSON_CODEC: dict[str, Any] = {"json_serializer": jsontext.dumps, "json_deserializer": orjson.loads}
"""Every iteration of every job stores a few JSON columns: through orjson (see :mod:`..jsontext`)."""


def _install_sqlite_hooks(engine: AsyncEngine | Engine, *, foreign_keys: bool) -> None:
    """Per-connection pragmas, and SQLAlchemy (not the sqlite3 module) emitting BEGIN.

    Python's sqlite3 module in its default (legacy) mode starts a transaction only before
    INSERT/UPDATE/DELETE, so SELECTs and DDL run outside it. Taking over BEGIN, the
    recipe in SQLAlchemy's SQLite docs, makes transactions (and migrations) atomic.
    """

    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        configure_sqlite_connection(dbapi_connection, foreign_keys=foreign_keys)

    def on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(connection.get_execution_options().get(_BEGIN_OPTION, "BEGIN"))

    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    event.listen(sync_engine, "connect", on_connect)
    event.listen(sync_engine, "begin", on_begin)


def configure_sqlite_connection(dbapi_connection: Any, *, foreign_keys: bool = True) -> None:
    """The settings every SQLite connection of the server runs with (pool or not): explicit
    transactions only, a 5 s wait for locks, WAL, ``synchronous=NORMAL``, foreign keys."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=5000")
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as error:
        # Switching a file to WAL needs it to itself, and SQLite reports BUSY at once,
        # ignoring busy_timeout, while another connection holds a lock. On a new database
        # that is another connection making the same switch; the mode is stored in the
        # file, so its switch covers this connection as well.
        if error.sqlite_errorcode != sqlite3.SQLITE_BUSY:
            raise
