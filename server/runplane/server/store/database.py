"""Engines, connections and the bridge from asyncio to the synchronous driver.

Each whole transaction runs as one call on a worker thread over a synchronous
SQLAlchemy engine: sqlite3 costs a fraction of aiosqlite's CPU per statement,
and one thread hop per transaction is cheaper than one await per statement.

SQLite takes one writer at a time, so writes get a single dedicated thread and
`BEGIN IMMEDIATE` (no lock upgrades, no busy-wait sleeps); reads get their own
pool and see WAL snapshots. PostgreSQL gets one pool whose size equals its
thread count, so no call ever waits for, or reconnects, a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url

from runplane.server.errors import StoreUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)

POSTGRES_THREADS = 16
SQLITE_READ_THREADS = 4

CommitListener = Callable[[int], None]
_COMMITTED_REVISION = "runplane.committed_revision"


def note_committed_revision(connection: Connection, revision: int) -> None:
    """Record that this write transaction ends at `revision`, for the commit listeners.

    The listeners only hear of it once the transaction has committed; a rollback
    forgets it.
    """
    connection.info[_COMMITTED_REVISION] = revision


def _dumps(value: Any) -> str:
    # Sorted, compact JSON: equal metadata is equal text, which SQLite filters compare.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def normalize_url(url: str) -> URL:
    """Pick the driver runplane is built and measured with: sqlite3 or psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+pysqlite")
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError("SQLite needs a database file, e.g. sqlite:///runplane.db")
    return parsed


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str

    @property
    def is_postgres(self) -> bool:
        return self.name == "postgresql"


class Database:
    """Owns the engines and worker threads; runs transactions for the async server."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.dialect = Dialect(self.url.get_backend_name())
        if self.dialect.is_postgres:
            self._write_engine = self._read_engine = create_engine(
                self.url,
                pool_size=POSTGRES_THREADS,
                max_overflow=0,
                pool_pre_ping=False,
                json_serializer=_dumps,
            )
            self._write_pool = self._read_pool = ThreadPoolExecutor(
                POSTGRES_THREADS, thread_name_prefix="runplane-db"
            )
        else:
            if self.url.database:
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            self._write_engine = self._sqlite_engine(pool_size=1, begin="BEGIN IMMEDIATE")
            self._read_engine = self._sqlite_engine(pool_size=SQLITE_READ_THREADS, begin="BEGIN")
            self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="runplane-db-write")
            self._read_pool = ThreadPoolExecutor(
                SQLITE_READ_THREADS, thread_name_prefix="runplane-db-read"
            )
        self._commit_listeners: list[CommitListener] = []

    def on_commit(self, listener: CommitListener) -> None:
        """Call `listener(revision)` on the writing thread after each transaction that
        committed changes, with its last revision: the in-process doorbell of the watch hub.
        """
        self._commit_listeners.append(listener)

    def _sqlite_engine(self, *, pool_size: int, begin: str) -> Engine:
        engine = create_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=0,
            json_serializer=_dumps,
            connect_args={"check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            # Hand transaction control to SQLAlchemy's begin event below.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives a process crash; only an OS crash may lose the last commits.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql(begin)

        return engine

    @property
    def engine(self) -> Engine:
        """The engine that writes (migrations use it)."""
        return self._write_engine

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` inside one write transaction on a worker thread; commit if it returns."""
        return await self._run(self._write_pool, self._write_engine, work, snapshot=False)

    async def read(self, work: Callable[[Connection], T], *, snapshot: bool = False) -> T:
        """Run `work` inside one read transaction.

        With `snapshot`, every statement sees the same committed state (PostgreSQL
        REPEATABLE READ; a SQLite read transaction always does).
        """
        return await self._run(self._read_pool, self._read_engine, work, snapshot=snapshot)

    async def _run(
        self,
        pool: ThreadPoolExecutor,
        engine: Engine,
        work: Callable[[Connection], T],
        *,
        snapshot: bool,
    ) -> T:
        def transaction() -> T:
            with _translate_errors(), engine.connect() as connection:
                if snapshot and self.dialect.is_postgres:
                    connection.execution_options(isolation_level="REPEATABLE READ")
                try:
                    with connection.begin():
                        result = work(connection)
                finally:
                    committed = connection.info.pop(_COMMITTED_REVISION, None)
            # Reached only when the transaction committed.
            if committed is not None:
                for listener in self._commit_listeners:
                    listener(committed)
            return result

        return await asyncio.get_running_loop().run_in_executor(pool, transaction)

    def dispose(self) -> None:
        self._write_pool.shutdown(wait=True)
        self._read_pool.shutdown(wait=True)
        self._write_engine.dispose()
        self._read_engine.dispose()


@contextlib.contextmanager
def _translate_errors() -> Iterator[None]:
    """Database failures become domain errors; SQL text never travels further."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError) as error:
        if error.connection_invalidated or _is_disconnect(error):
            log.warning("database unavailable: %s", type(error.orig).__name__)
            raise StoreUnavailable() from error
        raise


def _is_disconnect(error: exc.DBAPIError) -> bool:
    text = str(error.orig).lower()
    return any(
        marker in text
        for marker in ("connection", "could not connect", "server closed", "terminating")
    )
