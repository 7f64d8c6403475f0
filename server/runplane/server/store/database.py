"""Engines, connections and the bridge from asyncio to the synchronous driver.

The rules hand `Database.write` and `Database.read` a function of a `UnitOfWork`;
the database runs it in a transaction and never lets a connection out. Each whole
transaction runs as one call over a synchronous SQLAlchemy engine:
sqlite3 costs a fraction of aiosqlite's CPU per statement, and one hop per
transaction is cheaper than one await per statement. Its connections are
`DirectConnection`s: a statement they have run before goes straight to the driver's
cursor (`direct.py`).

Writes go to one thread that commits queued transactions in groups
(`GroupWriter`), on a connection it keeps. SQLite takes one writer at a time
anyway; on PostgreSQL every write holds the revision counter's row lock until its
commit has flushed, so writes are serialized there too, and a group shares one
flush (CreateRun at 32 in flight: 323 -> 703/s). A point read is a single indexed
lookup: on SQLite it runs on the event loop, since the hop to a worker thread costs
more and WAL readers never wait for the writer. Other reads go to a read pool;
PostgreSQL's is as large as its thread count, so no read waits for, or reconnects,
a connection. On PostgreSQL, reads outside a snapshot run in autocommit (no BEGIN
or COMMIT), and lookups by id, read together when they arrive together
(`RunLookups`), run on the event loop (`RunsOnLoop`), as does the store's revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection, Engine, exc
from sqlalchemy.engine import make_url

from runplane.server.errors import RunplaneError, StoreUnavailable
from runplane.server.records import Change, Run
from runplane.server.store import held_rows
from runplane.server.store.dialects import Dialect, dialect_of, normalize_url
from runplane.server.store.direct import DirectConnection
from runplane.server.store.lookups import RunLookups, RunsOnLoop
from runplane.server.store.notifications import ChangeListener, OwnSessions
from runplane.server.store.revisions import RevisionReads
from runplane.server.store.run_store import KnownThreads, LockBusy
from runplane.server.store.unit_of_work import WRITTEN, UnitOfWork, Written

T = TypeVar("T")
log = logging.getLogger(__name__)

CommitListener = Callable[[list[Change]], None]
RenewalListener = Callable[[list[Run]], None]
Work = Callable[[UnitOfWork], T]


class TransactionTimer(Protocol):
    """Told how long each transaction took (called from the threads that run them)."""

    def read(self, seconds: float) -> None: ...

    def write(self, seconds: float, cpu_seconds: float, group_size: int) -> None:
        """One commit of `group_size` write transactions grouped together, for
        `cpu_seconds` of which the writer thread ran: the rest it waited, for the
        database or for the interpreter lock."""


class _Untimed:
    def read(self, seconds: float) -> None:
        pass

    def write(self, seconds: float, cpu_seconds: float, group_size: int) -> None:
        pass


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)


def _runs_by_id(unit: UnitOfWork, run_ids: list[str]) -> list[Run]:
    if len(run_ids) > 1:
        return unit.runs.get_many(run_ids)
    run = unit.runs.get(run_ids[0])  # one key: no IN list to expand
    return [] if run is None else [run]


class Database:
    """Owns the engines and worker threads; runs units of work for the async server."""

    def __init__(self, url: str, timer: TransactionTimer | None = None) -> None:
        """Raises CannotStart for a URL that names no database runplane can use, or a
        SQLite file it could not create or write."""
        self.url = normalize_url(url)
        self._timer = timer or _Untimed()
        self._dialect = dialect_of(self.url)
        self._new_files = self._dialect.new_files(self.url)
        self._listeners: list[CommitListener] = []
        self._renewal_listeners: list[RenewalListener] = []
        engines = self._dialect.engines(self.url)
        self._write_engine, self._read_engine = engines.write, engines.read
        held_rows.send_before_reads(self._write_engine, self._dialect)
        # Before the first connection, so that every session of this process is known.
        self._sessions = OwnSessions(self._write_engine) if self._dialect.shared else None
        self._read_pool = ThreadPoolExecutor(
            engines.read_threads, thread_name_prefix="runplane-db-read"
        )
        # On PostgreSQL runs by id and the store's revision are read on the event loop,
        # each through a connection of its own; runs by id are read together.
        self._runs_on_loop = RunsOnLoop(self.url) if self._dialect.shared else None
        self._lookups = RunLookups(self._read_runs, together=not self._dialect.point_reads_on_loop)
        self._revisions = RevisionReads(self.url) if self._dialect.shared else None
        self._point_connection = KeptConnection(self._read_engine, point_read=True)
        self._point_unit: tuple[Connection, UnitOfWork] | None = None
        self._faults = FaultLog()
        self._writer = GroupWriter(
            self._write_engine, self._dialect, self._publish, self._timer, self._faults
        )

    @property
    def engine(self) -> Engine:
        """The engine that writes (migrations use it)."""
        return self._write_engine

    @property
    def shared(self) -> bool:
        """Other server processes (replicas) may write to this database: their commits
        reach this one only through `notifications`, and nothing may be cached."""
        return self._dialect.shared

    def change_listener(self, ring: Callable[[int], None]) -> ChangeListener | None:
        """On a shared database, what calls `ring` with other replicas' commits (see
        `ChangeListener`); None when this process is the only writer."""
        if self._sessions is None:
            return None
        return ChangeListener(self.url, ring, self._sessions)

    def on_commit(self, listener: CommitListener) -> None:
        """Call `listener` on the event loop with the changes of each committed write,
        before the writer's caller is answered."""
        self._listeners.append(listener)

    def on_renewal(self, listener: RenewalListener) -> None:
        """Call `listener` on the event loop with the runs whose lease a committed write
        renewed in place (`UnitOfWork.renew_leases`), in commit order with the changes."""
        self._renewal_listeners.append(listener)

    def _publish(self, written: Written) -> None:
        if written.changes:
            for listener in self._listeners:
                listener(written.changes)
        if written.renewed:
            for renewal_listener in self._renewal_listeners:
                renewal_listener(written.renewed)

    async def write(self, work: Work[T]) -> T:
        """Run `work` in one write transaction; commit if it returns.

        `work` must raise RunplaneError only before it writes (applies changes, renews
        a lease): a refusal then contributes nothing to the group it was committed with
        (see GroupWriter).
        """
        return await self._writer.submit(work)

    def gather_writes(self) -> None:
        """Hold this event loop's writes until the callbacks scheduled on it so far have
        run, then commit them together (see `GroupWriter.gather`)."""
        self._writer.gather()

    async def read(self, work: Work[T], *, snapshot: bool = False, lookup: bool = True) -> T:
        """Run `work`, a read.

        With `snapshot`, every statement sees the same committed state (on PostgreSQL, in
        a transaction: two round trips more). Without it, `work` should be one statement,
        and, as a `lookup`, a few rows found by key: on SQLite, those run on the event loop.
        """
        if not snapshot and lookup and self._dialect.point_reads_on_loop:
            started = time.perf_counter()
            try:
                with _translate_errors(self._faults):
                    return work(self._point_reader())
            finally:
                self._timer.read(time.perf_counter() - started)

        def transaction() -> T:
            started = time.perf_counter()
            try:
                with (
                    _translate_errors(self._faults),
                    DirectConnection(self._read_engine) as connection,
                ):
                    if snapshot:
                        self._dialect.begin_snapshot(connection)
                    with connection.begin():
                        return work(UnitOfWork(connection, self._dialect))
            finally:
                self._timer.read(time.perf_counter() - started)

        return await asyncio.get_running_loop().run_in_executor(self._read_pool, transaction)

    async def read_run(self, run_id: str) -> Run | None:
        """The run with this id as committed when the call came, or None: on PostgreSQL
        read together with the other lookups waiting for a read (`RunLookups`)."""
        return await self._lookups.get(run_id)

    async def _read_runs(self, run_ids: list[str]) -> list[Run]:
        """The runs with these ids (`lookups.ReadRuns`)."""
        if self._runs_on_loop is None:
            return await self.read(lambda unit: _runs_by_id(unit, run_ids))
        started = time.perf_counter()
        try:
            return await self._runs_on_loop(run_ids)
        finally:
            self._timer.read(time.perf_counter() - started)

    async def read_revision(self) -> int:
        """The store's revision, read after the call came: no write committed before the
        call has a later one. Read on the event loop, with the other calls that came
        while a read was in flight (`RevisionReads`); asked only of a shared database,
        whose cache must learn whether other replicas wrote since."""
        assert self._revisions is not None, "only a shared database has other writers"
        return await self._revisions.read()

    def _point_reader(self) -> UnitOfWork:
        """The event loop's own connection, kept open: checking a connection out of the
        pool per read costs more than the read (73 us against 32 us on SQLite)."""
        connection = self._point_connection.get()
        if self._point_unit is None or self._point_unit[0] is not connection:
            self._point_unit = (connection, UnitOfWork(connection, self._dialect))
        return self._point_unit[1]

    async def close(self) -> None:
        """Release the event loop's connection, then the rest (`dispose`)."""
        for on_loop in (self._revisions, self._runs_on_loop):
            if on_loop is not None:
                on_loop.close()
        await asyncio.to_thread(self.dispose)

    def dispose(self, *, discard_new_files: bool = False) -> None:
        """Release connections and threads; with `discard_new_files`, also remove the
        files this process created (a server that failed to start leaves nothing)."""
        self._writer.close()
        self._point_connection.close()
        self._read_pool.shutdown(wait=True)
        self._write_engine.dispose()
        self._read_engine.dispose()
        if discard_new_files:
            for path in self._new_files:
                path.unlink(missing_ok=True)


class KeptConnection:
    """A connection one thread keeps open from one transaction to the next, and opens
    anew once SQLAlchemy has found it lost (invalidated)."""

    def __init__(self, engine: Engine, **options: Any) -> None:
        self._engine = engine
        self._options = options
        self._connection: Connection | None = None

    def get(self) -> Connection:
        if self._connection is None or self._connection.invalidated:
            self.close()
            self._connection = DirectConnection(self._engine)
            if self._options:
                self._connection.execution_options(**self._options)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass(slots=True)
class _Job(Generic[T]):
    work: Work[T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[T], outcome: T | BaseException) -> None:
    if future.cancelled():
        return  # the caller left; its transaction committed or failed all the same
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


DEADLOCK_RETRIES = 2
"""Times a transaction PostgreSQL undid to break a deadlock runs again. Advisory locks
cannot deadlock a group (see GroupWriter), but row locks can: a lease renewal waits for
a run's row where it cannot first try it."""


class GroupWriter:
    """The one thread that writes, committing queued transactions in groups.

    Under load, up to MAX_GROUP transactions share one transaction and its commit
    (on PostgreSQL, advisory locks are re-entrant within the session, so members of
    a group never wait for each other).
    A transaction that fails with a RunplaneError before writing (a rule said no)
    simply contributes nothing to its group. Any other failure, or a failure after
    writing, rolls the group back and runs each of its transactions alone.

    Only a group's first transaction waits for a lock another one holds (another
    replica's). A later one could be waiting with the revision counter held, taken by
    a member before it, while the lock's holder waits for the counter: a deadlock,
    which PostgreSQL breaks after a second by undoing one side. So a later member that
    finds a lock taken (LockBusy) contributes nothing, and goes first in the next group.
    """

    MAX_GROUP = 64

    def __init__(
        self,
        engine: Engine,
        dialect: Dialect,
        publish: Callable[[Written], None],
        timer: TransactionTimer,
        faults: FaultLog,
    ) -> None:
        # Kept, not checked out of the pool and returned for each group; on PostgreSQL
        # the writer's statements stay prepared on its one session (psycopg prepares a
        # statement a connection has run five times).
        self._connection = KeptConnection(engine)
        self._dialect = dialect
        # Where writers may run at once, a change locks its run's thread, found from here.
        self._known = None if dialect.serial_writes else KnownThreads()
        self._publish = publish
        self._timer = timer
        self._faults = faults
        self._queue: queue.SimpleQueue[list[_Job[Any]] | None] = queue.SimpleQueue()
        """Writes, in the order submitted (a list of those gathered together); None to
        stop."""
        self._gathering: dict[asyncio.AbstractEventLoop, list[_Job[Any]]] = {}
        """Per event loop, the writes it gathers (`gather`); touched by its thread only."""
        self._waiting: list[_Job[Any]] = []
        """Taken from the queue but in no group yet: members that found a lock taken
        first, then those a full group left over."""
        self._thread = threading.Thread(target=self._serve, name="runplane-db-write", daemon=True)
        self._thread.start()

    async def submit(self, work: Work[T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(work, future, loop)
        gathered = self._gathering.get(loop)
        if gathered is None:
            self._queue.put([job])
        else:
            gathered.append(job)
        return await future

    def gather(self) -> None:
        """Hold the writes submitted on this event loop until the callbacks scheduled
        on it so far have run, then hand them to the writer together, in order: so
        that a write one of those callbacks submits commits with the writes before it."""
        loop = asyncio.get_running_loop()
        if loop not in self._gathering:
            self._gathering[loop] = []
            loop.call_soon(self._hand_over, loop)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        gathered = self._gathering.pop(loop)
        if gathered:
            self._queue.put(gathered)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _next_group(self) -> list[_Job[Any]] | None:
        """Up to MAX_GROUP transactions to commit together, waiting for the first; None
        when the writer is to stop."""
        if not self._waiting:
            writes = self._queue.get()
            if writes is None:
                return None
            self._waiting.extend(writes)
        while len(self._waiting) < self.MAX_GROUP:
            try:
                writes = self._queue.get_nowait()
            except queue.Empty:
                break
            if writes is None:
                self._queue.put(None)  # finish what was taken, then stop
                break
            self._waiting.extend(writes)
        group = self._waiting[: self.MAX_GROUP]
        del self._waiting[: len(group)]
        return group

    def _serve(self) -> None:
        try:
            self._write_groups()
        finally:
            self._connection.close()

    def _write_groups(self) -> None:
        while (group := self._next_group()) is not None:
            started, ran = time.perf_counter(), time.thread_time()
            outcomes, written = self._commit(group)
            self._timer.write(time.perf_counter() - started, time.thread_time() - ran, len(group))
            answered, deferred = [], []
            for member, outcome in zip(group, outcomes, strict=True):
                if outcome is _DEFERRED:
                    deferred.append(member)
                else:
                    answered.append((member, outcome))
            self._waiting[:0] = deferred  # they go first in the next group
            # The first member waits for its locks: it is always answered.
            group[0].loop.call_soon_threadsafe(self._deliver, answered, written)

    def _deliver(self, answered: list[tuple[_Job[Any], Any]], written: Written) -> None:
        """On the event loop: tell the listeners, then answer the callers."""
        self._publish(written)
        for member, outcome in answered:
            _settle(member.future, outcome)

    def _commit(
        self, group: list[_Job[Any]], retries: int = DEADLOCK_RETRIES
    ) -> tuple[list[Any], Written]:
        try:
            with _translate_errors(self._faults):
                connection = self._connection.get()
                connection.info[WRITTEN] = Written()
                # One unit for the whole group: the events its members log and the heads
                # of their new threads are sent together, before the commit.
                unit = UnitOfWork(connection, self._dialect, self._known)
                try:
                    with connection.begin():
                        outcomes = [
                            self._attempt(unit, connection, member, first=index == 0)
                            for index, member in enumerate(group)
                        ]
                        unit.finish()
                finally:
                    # Rows held by a transaction that rolled back are never sent, even
                    # by a read that checks this connection out next.
                    held_rows.discard(connection)
                return outcomes, connection.info.pop(WRITTEN)
        except Exception as error:
            if len(group) == 1:
                if retries and _undone_by_server(error):
                    return self._commit(group, retries - 1)
                return [error.__cause__ if isinstance(error, _GroupFailed) else error], Written()
            outcomes, written = [], Written()
            for member in group:
                (outcome,), alone = self._commit([member])
                outcomes.append(outcome)
                written.extend(alone)
            return outcomes, written

    @staticmethod
    def _attempt(
        unit: UnitOfWork, connection: Connection, member: _Job[Any], *, first: bool
    ) -> Any:
        written = len(connection.info[WRITTEN])
        unit.runs.wait_for_locks = first
        try:
            return member.work(unit)
        except (RunplaneError, LockBusy) as refusal:
            if len(connection.info[WRITTEN]) > written:
                raise _GroupFailed from refusal
            return _DEFERRED if isinstance(refusal, LockBusy) else refusal


def _undone_by_server(error: BaseException) -> bool:
    """Whether PostgreSQL rolled the transaction back to break a deadlock or a
    serialization conflict (SQLSTATE class 40): it may simply run again."""
    orig = getattr(error.__cause__, "orig", None)
    return str(getattr(orig, "sqlstate", "") or "").startswith("40")


_DEFERRED = object()
"""The outcome of a group member that found a lock taken: it runs again, first."""


class _GroupFailed(Exception):
    """A transaction of a group failed after writing: the group must be undone."""


@contextlib.contextmanager
def _translate_errors(faults: FaultLog) -> Iterator[None]:
    """Storage faults become StoreUnavailable (retryable); SQL text and parameters never
    travel further, nor into the log."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as error:
        why = _storage_fault(error)
        if why is None:
            raise
        faults.report(why, type(getattr(error, "orig", error)).__name__)
        raise StoreUnavailable(why) from error


# PostgreSQL SQLSTATEs (by class, or exact) of faults that pass: the call can be retried.
_SQLSTATES = {
    "08": "unreachable",
    "53100": "out of disk space",
    "53": "out of resources",
    "57P": "restarting",
    "57014": "busy",
    "58": "failing to read or write its files",
    "40": "busy",
    "55P03": "busy",
    "25006": "read-only",
}
# SQLite's extended result codes, by prefix.
_SQLITE_ERRORS = {
    "SQLITE_FULL": "out of disk space",
    "SQLITE_IOERR": "failing to read or write its files",
    "SQLITE_BUSY": "busy",
    "SQLITE_LOCKED": "busy",
    "SQLITE_CANTOPEN": "unreachable",
    "SQLITE_READONLY": "read-only",
    "SQLITE_PROTOCOL": "busy",
}


def _storage_fault(error: exc.DBAPIError | exc.TimeoutError) -> str | None:
    """What is wrong with the database, when `error` is a fault of storage or of the
    connection rather than of the statement; None otherwise."""
    if isinstance(error, exc.TimeoutError):
        return "busy"  # no connection came free in time
    if error.connection_invalidated:
        return "unreachable"
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None) or ""
    for prefix in (sqlstate, sqlstate[:3], sqlstate[:2]):
        if prefix in _SQLSTATES:
            return _SQLSTATES[prefix]
    name = getattr(orig, "sqlite_errorname", None) or ""
    for code, why in _SQLITE_ERRORS.items():
        if name.startswith(code):
            return why
    text = str(orig).lower()
    if any(
        marker in text
        for marker in ("connection", "could not connect", "server closed", "terminating")
    ):
        return "unreachable"
    return None


class FaultLog:
    """One log line per kind of storage fault, then at most one a minute while it lasts
    (with how many calls it failed meanwhile): a full disk fails every call."""

    INTERVAL = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}

    def report(self, why: str, error: str) -> None:
        now = time.monotonic()
        with self._lock:
            logged_at, since = self._last.get(why, (-self.INTERVAL, 0))
            if now - logged_at < self.INTERVAL:
                self._last[why] = (logged_at, since + 1)
                return
            self._last[why] = (now, 0)
        log.warning(
            "database %s", why, extra={"error": error, "failed_calls_since_last_line": since}
        )
