"""Everything that differs between SQLite and PostgreSQL, in one place.

The rest of the store asks its `Dialect` instead of asking which database it runs on,
and nothing outside `store/` sees a dialect at all:

- engines: SQLite gets a one-connection writer that begins with BEGIN IMMEDIATE and
  readers in WAL mode; PostgreSQL one pool for both;
- locks: PostgreSQL takes transaction-scoped advisory locks so that replicas exclude
  each other; SQLite's write transaction already holds the database's only write lock;
- JSON comparison for metadata filters, a hint for SQLite's planner, the NOTIFY that
  rings other replicas (riding on the statement that takes revisions), and the INSERT
  that can say ON CONFLICT.
"""

from __future__ import annotations

import abc
import enum
import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    Executable,
    Insert,
    Table,
    Text,
    Update,
    and_,
    bindparam,
    cast,
    column,
    create_engine,
    event,
    exc,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine import Dialect as SQLDialect
from sqlalchemy.sql import visitors
from sqlalchemy.types import TypeEngine

from runplane.server.errors import CannotStart

CHANGES_CHANNEL = "runplane_changes"
"""The PostgreSQL channel writers notify on commit; every replica LISTENs to it."""

MAX_RELEASED_PAGES = 8192
"""Free SQLite pages given back per compaction batch (32 MiB of 4 KiB pages); the
rest go with the next batches."""
_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL

POSTGRES_THREADS = 16
_TRY_LOCK_ALL = text(
    "SELECT coalesce(bool_and(pg_try_advisory_xact_lock(:lock, key)), true) "
    "FROM unnest(CAST(:keys AS integer[])) AS key"
)
# unnest yields the keys in the array's order, and so they are locked.
_LOCK_ALL = text(
    "SELECT count(pg_advisory_xact_lock(:lock, key)) FROM unnest(CAST(:keys AS integer[])) AS key"
)
SQLITE_READ_THREADS = 2


def dumps(value: Any) -> str:
    # Sorted, compact JSON: equal metadata is equal text, which SQLite filters compare.
    if not value and type(value) is dict:
        return "{}"  # most documents of a run are empty: skip the encoder (~5 us each)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _loads(text: str) -> Any:
    return {} if text == "{}" else json.loads(text)


class Lock(enum.IntEnum):
    """What an advisory lock guards: the first key of PostgreSQL's two-int form. The
    values are shared with replicas of other versions, so they never change."""

    THREAD = 1
    REQUEST = 2
    SWEEPER = 3
    COMPACTION = 4
    RETENTION = 5


def scoped_key(namespace: str, key: str) -> str:
    """A lock key of one namespace: the same thread_id (or request_id) in two namespaces
    is two threads (two keys)."""
    return f"{namespace}/{key}"


def lock_key(value: str | None) -> int:
    """A signed 32-bit key for an advisory lock; collisions only serialize more."""
    if value is None:
        return 0
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=4).digest(), signed=True)


Held = dict[Insert | Update, list[dict[str, Any]]]
"""Writes a transaction holds back (`held_rows`), in order: the rows of each INSERT, and
of each UPDATE the values for each row it changes."""


@dataclass(frozen=True, slots=True)
class Engines:
    """The connections a `Database` runs transactions on."""

    write: Engine
    read: Engine
    read_threads: int


class Dialect(abc.ABC):
    """The SQL that differs between databases, and how to connect to one."""

    shared: bool
    """Other server processes may write to the database behind this one's back."""
    claim_candidates: int
    """Claimable runs read per claim before locking one (see RunStore.claim_candidates)."""
    point_reads_on_loop: bool
    """A single-statement read is cheaper on the event loop than a thread hop."""
    serial_writes: bool
    """One write transaction at a time: a writer holds every lock without asking."""

    @abc.abstractmethod
    def engines(self, url: URL) -> Engines: ...

    def new_files(self, url: URL) -> list[Path]:
        """The files on this machine that opening the database will create: checked to be
        creatable first, and removed if the server fails to start. Raises CannotStart."""
        return []

    @abc.abstractmethod
    def begin_snapshot(self, connection: Connection) -> None:
        """Make the connection's next transaction see one committed state throughout."""

    @abc.abstractmethod
    def lock(self, connection: Connection, lock: Lock, value: str | None = None) -> None:
        """Hold `lock` on `value` until the transaction ends."""

    @abc.abstractmethod
    def try_lock(self, connection: Connection, lock: Lock, value: str | None = None) -> bool:
        """Like `lock`, but False at once if another transaction holds it."""

    @abc.abstractmethod
    def try_lock_all(self, connection: Connection, lock: Lock, values: Sequence[str]) -> bool:
        """`try_lock` of each value, in one round trip: False if another transaction held
        any of them (the others are held all the same)."""

    @abc.abstractmethod
    def lock_all(self, connection: Connection, lock: Lock, values: Sequence[str]) -> None:
        """`lock` of each value, in one round trip and in one global order, so that two
        transactions locking many never deadlock each other."""

    @abc.abstractmethod
    def notifying(self, reserve: Update) -> Update:
        """`reserve`, which returns the last revision it took, made to also tell the
        other replicas at commit that the log grew to it (no statement of its own). In
        a group, that is the first member's: the others' follow it in the same commit,
        and a replica's hub reads the log on from where it stands."""

    @abc.abstractmethod
    def json_equals(self, column: ColumnElement[Any], key: str, value: Any) -> ColumnElement[bool]:
        """column[key] == value, comparing JSON values rather than text."""

    @abc.abstractmethod
    def unselective(self, clause: ColumnElement[bool]) -> ColumnElement[bool]:
        """`clause`, marked as true of most rows for a planner that cannot know it."""

    @abc.abstractmethod
    def release_space(self, connection: Connection) -> None:
        """Give the space of deleted rows back to the file system, if the database does
        not do it by itself."""

    def send_held(self, connection: Connection, held: Held) -> None:
        """Run each held statement for each of its rows: an INSERT's all at once (they
        have the same keys), an UPDATE's one by one (each sets its own columns)."""
        for statement, rows in held.items():
            if isinstance(statement, Update):
                for row in rows:
                    connection.execute(statement, row)
            else:
                connection.execute(statement, rows)

    @staticmethod
    @abc.abstractmethod
    def insert(table: Table) -> sqlite.Insert | postgresql.Insert:
        """An INSERT into `table` that takes ON CONFLICT clauses (both databases have
        them, in the same words, through different constructs)."""


class SQLite(Dialect):
    shared = False
    # No concurrent claim can hold the first one.
    claim_candidates = 1
    point_reads_on_loop = True
    serial_writes = True

    def new_files(self, url: URL) -> list[Path]:
        path = Path(url.database or "")
        folder = path.parent
        if not folder.is_dir():
            raise CannotStart(f"the folder of the SQLite database {path} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CannotStart(f"cannot write the SQLite database {path}: its folder is read-only")
        if path.exists():
            if not path.is_file() or not os.access(path, os.R_OK | os.W_OK):
                raise CannotStart(f"cannot read and write the SQLite database {path}")
            return []
        return [path, *(path.with_name(path.name + tail) for tail in ("-wal", "-shm", "-journal"))]

    def engines(self, url: URL) -> Engines:
        return Engines(
            # The writer keeps one connection; migrations take the other.
            write=self._engine(url, pool_size=2, begin="BEGIN IMMEDIATE"),
            # One more connection than threads: point reads on the event loop use it.
            read=self._engine(url, pool_size=SQLITE_READ_THREADS + 1, begin="BEGIN"),
            read_threads=SQLITE_READ_THREADS,
        )

    @staticmethod
    def _engine(url: URL, *, pool_size: int, begin: str) -> Engine:
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            hide_parameters=True,  # errors carry no metadata, kwargs or tokens
            json_serializer=dumps,
            json_deserializer=_loads,
            connect_args={"check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            # Hand transaction control to SQLAlchemy's begin event below.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            # Lets compaction give freed pages back (`release_space`). It takes only in a
            # database with no tables yet: a file made before keeps reusing its free pages
            # instead (docs/operations.md tells how to convert one).
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
            cursor.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives a process crash; only an OS crash may lose the last commits.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            # A point read is one statement: it needs no transaction of its own.
            if not connection.get_execution_options().get("point_read"):
                connection.exec_driver_sql(begin)

        return engine

    def begin_snapshot(self, connection: Connection) -> None:
        pass  # a SQLite read transaction is a snapshot already

    # The write transaction holds the database's only write lock (serial_writes).
    def lock(self, connection: Connection, lock: Lock, value: str | None = None) -> None:
        pass

    def try_lock(self, connection: Connection, lock: Lock, value: str | None = None) -> bool:
        return True

    def try_lock_all(self, connection: Connection, lock: Lock, values: Sequence[str]) -> bool:
        return True

    def lock_all(self, connection: Connection, lock: Lock, values: Sequence[str]) -> None:
        pass

    def notifying(self, reserve: Update) -> Update:
        return reserve  # SQLite serves one process: there is nobody to tell

    def json_equals(self, column: ColumnElement[Any], key: str, value: Any) -> ColumnElement[bool]:
        if '"' not in key:
            # `->` renders the stored value as minified JSON; stored documents are written
            # with sorted keys, so equal values are equal text.
            path = "$." + json.dumps(key)
            return column.op("->")(literal(path)) == func.json(literal(dumps(value)))
        # A path cannot name a key holding `"` (SQLite's paths have no escape for it):
        # find the member among the document's own instead, comparing its JSON type and
        # SQL value (scalars) or its minified JSON (objects, arrays).
        member = func.json_each(column).table_valued("key", "type", "atom", "value")
        if isinstance(value, (dict, list)):
            same = member.c.value == func.json(literal(dumps(value)))
        elif value is None or isinstance(value, bool):
            same = member.c.type == {None: "null", True: "true", False: "false"}[value]
        elif isinstance(value, str):
            same = and_(member.c.type == "text", member.c.atom == literal(value))
        else:
            same = and_(member.c.type.in_(("integer", "real")), member.c.atom == literal(value))
        return select(member.c.key).where(member.c.key == literal(key), same).exists()

    def unselective(self, clause: ColumnElement[bool]) -> ColumnElement[bool]:
        # Without statistics (nothing runs ANALYZE) SQLite rates every equality alike, and
        # would walk a whole namespace in list order rather than seek a thread in it.
        return func.likely(clause)

    def release_space(self, connection: Connection) -> None:
        # Each page incremental_vacuum frees moves the last page of the file into a free
        # one and truncates the file (at the next checkpoint, in WAL mode). A file made
        # without auto_vacuum can only reuse its free pages.
        if connection.exec_driver_sql("PRAGMA auto_vacuum").scalar_one() != _INCREMENTAL:
            return
        free = connection.exec_driver_sql("PRAGMA freelist_count").scalar_one()
        # Python's sqlite3 steps a statement that returns no columns once, and each step
        # frees one page: one statement per page (~10 us each).
        for _ in range(min(free, MAX_RELEASED_PAGES)):
            connection.exec_driver_sql("PRAGMA incremental_vacuum(1)")

    @staticmethod
    def insert(table: Table) -> sqlite.Insert:
        return sqlite.insert(table)


class PostgreSQL(Dialect):
    shared = True
    # Concurrent claims may hold the first few: try the next ones rather than wait.
    claim_candidates = 8
    point_reads_on_loop = False
    serial_writes = False

    def engines(self, url: URL) -> Engines:
        # As many connections as threads, and the one the writer keeps: no read waits
        # for, or reconnects, a connection.
        engine = create_engine(
            url,
            pool_size=POSTGRES_THREADS + 1,
            max_overflow=0,
            hide_parameters=True,  # errors carry no metadata, kwargs or tokens
            pool_pre_ping=False,
            json_serializer=dumps,
            connect_args={"options": _without_jit(url)},
        )
        # Reads outside a snapshot run without BEGIN and COMMIT, two round trips fewer:
        # at READ COMMITTED each statement sees what was committed when it began anyway.
        read = engine.execution_options(isolation_level="AUTOCOMMIT")
        return Engines(write=engine, read=read, read_threads=POSTGRES_THREADS)

    def begin_snapshot(self, connection: Connection) -> None:
        connection.execution_options(isolation_level="REPEATABLE READ")

    def send_held(self, connection: Connection, held: Held) -> None:
        if len(held) == 1:
            ((statement, rows),) = held.items()
            if len(rows) == 1:
                connection.execute(statement, rows[0])
                return
        # One statement, one round trip. psycopg sends an executemany as one statement
        # per row: rows go as JSON arrays instead, an INSERT's as one, an UPDATE's as one
        # for each set of columns its rows set (an UPDATE of one row takes parameters,
        # so that PostgreSQL finds the row by its key however few rows it guesses). Every
        # statement but the last goes in its WITH clause, where PostgreSQL runs a
        # data-modifying query once whether or not anything refers to it.
        kinds: list[tuple[Insert | Update, tuple[str, ...], bool]] = []
        values: dict[str, Any] = {}
        for statement, rows in held.items():
            alike: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in rows:
                alike.setdefault(tuple(row), []).append(row)
            for columns, group in alike.items():
                name = f"rows_{len(kinds)}"
                one = isinstance(statement, Update) and len(group) == 1
                if one:
                    values.update({f"{name}_{key}": value for key, value in group[0].items()})
                else:
                    values[name] = json.dumps(group)
                kinds.append((statement, columns, one))
        connection.execute(_together(tuple(kinds), connection.dialect), values)

    def lock(self, connection: Connection, lock: Lock, value: str | None = None) -> None:
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:lock, :key)"),
            {"lock": int(lock), "key": lock_key(value)},
        )

    def try_lock(self, connection: Connection, lock: Lock, value: str | None = None) -> bool:
        return bool(
            connection.execute(
                text("SELECT pg_try_advisory_xact_lock(:lock, :key)"),
                {"lock": int(lock), "key": lock_key(value)},
            ).scalar_one()
        )

    def try_lock_all(self, connection: Connection, lock: Lock, values: Sequence[str]) -> bool:
        return bool(
            connection.execute(
                _TRY_LOCK_ALL, {"lock": int(lock), "keys": [lock_key(v) for v in values]}
            ).scalar_one()
        )

    def lock_all(self, connection: Connection, lock: Lock, values: Sequence[str]) -> None:
        keys = sorted({lock_key(value) for value in values})
        connection.execute(_LOCK_ALL, {"lock": int(lock), "keys": keys})

    def notifying(self, reserve: Update) -> Update:
        # Delivered when the transaction commits, dropped if it rolls back.
        revision = reserve.exported_columns[0]
        return reserve.returning(func.pg_notify(CHANGES_CHANNEL, cast(revision, Text)))

    def json_equals(self, column: ColumnElement[Any], key: str, value: Any) -> ColumnElement[bool]:
        return column.op("->")(literal(key)) == func.cast(literal(dumps(value)), column.type)

    def unselective(self, clause: ColumnElement[bool]) -> ColumnElement[bool]:
        return clause  # its statistics know

    def release_space(self, connection: Connection) -> None:
        pass  # autovacuum makes dead rows' space reusable, table by table

    @staticmethod
    def insert(table: Table) -> postgresql.Insert:
        return postgresql.insert(table)


def _without_jit(url: URL) -> str:
    """The URL's session `options`, with JIT compilation off. Every query runplane runs
    is a short index read or write, and psycopg prepares the statements that run often:
    a generic plan's guessed cost grows with the table, and past `jit_above_cost`
    PostgreSQL compiles the query each time it runs (77 ms for a page of the event log,
    which takes 0.1 ms to run)."""
    given = url.query.get("options", "")
    return " ".join([*([given] if isinstance(given, str) else given), "-c jit=off"]).strip()


@functools.lru_cache(maxsize=64)
def _together(
    kinds: tuple[tuple[Insert | Update, tuple[str, ...], bool], ...], dialect: SQLDialect
) -> Executable:
    """The held statements as one. The one at place N takes its rows (with these columns)
    from the JSON array `:rows_N`, or, an UPDATE of one row, takes each value as the
    parameter `:rows_N_` + its name."""
    *first, last = (
        _from_json_rows(statement, columns, f"rows_{index}")
        if isinstance(statement, Insert)
        else _for_one_row(statement, columns, f"rows_{index}_")
        if one
        else _for_json_rows(statement, columns, f"rows_{index}", dialect)
        for index, (statement, columns, one) in enumerate(kinds)
    )
    return last.add_cte(*(statement.cte(f"held_{index}") for index, statement in enumerate(first)))


def _for_one_row(statement: Update, names: tuple[str, ...], prefix: str) -> Update:
    """`statement` for one row of values, `names`: each named `prefix` + its name."""
    values = _Values(statement, names)
    return values.fed(lambda key: bindparam(prefix + key, type_=values.types[key]))


def _for_json_rows(
    statement: Update, names: tuple[str, ...], name: str, dialect: SQLDialect
) -> Update:
    """`statement` for each object (of `names`) of the JSON array `:name`."""
    values = _Values(statement, names)
    types = values.types
    fields = ", ".join(f'"{key}" {types[key].compile(dialect=dialect)}' for key in names)
    given = (
        text(f"SELECT * FROM jsonb_to_recordset(CAST(:{name} AS jsonb)) AS given({fields})")
        .columns(*(column(key, types[key]) for key in names))
        .subquery("given")
    )
    return values.fed(lambda key: given.c[key])


class _Values:
    """The values a row of an UPDATE names: each either one of its parameters or a
    column it does not set yet, with its type (the parameter's, or the column's)."""

    def __init__(self, statement: Update, names: tuple[str, ...]) -> None:
        table = statement.table
        assert isinstance(table, Table)
        parameters = {
            element.key: element.type
            for element in visitors.iterate(statement)
            if isinstance(element, BindParameter)
        }
        self._statement = statement
        self._sets = tuple(key for key in names if key not in parameters)
        self.types: dict[str, TypeEngine[Any]] = {
            key: parameters[key] if key in parameters else table.c[key].type for key in names
        }

    def fed(self, value_of: Callable[[str], ColumnElement[Any]]) -> Update:
        """The statement with each value taken from `value_of(its name)`: in place of its
        parameter, or as a SET of its column."""

        def feed(element: Any, **_: Any) -> Any:
            if isinstance(element, BindParameter) and element.key in self.types:
                return value_of(element.key)
            return None  # as it is (such as a literal's parameter)

        fed = visitors.replacement_traverse(self._statement, {}, feed)
        assert isinstance(fed, Update)
        sets = {key: value_of(key) for key in self._sets}
        return fed.values(sets) if sets else fed


def _from_json_rows(statement: Insert, columns: tuple[str, ...], name: str) -> Insert:
    """`statement` taking its rows from the JSON array `:name`, each an object of
    `columns`: PostgreSQL converts every value to its column's type."""
    table = statement.table
    assert isinstance(table, Table)
    names = ", ".join(f'"{column}"' for column in columns)
    rows = text(
        f"SELECT {names} FROM jsonb_populate_recordset(NULL::{table.name}, CAST(:{name} AS jsonb))"
    ).columns(*(table.c[column] for column in columns))
    return statement.from_select(columns, rows)


def normalize_url(url: str) -> URL:
    """Pick the driver runplane is built and measured with: sqlite3 or psycopg 3."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        # Not quoted: a URL may hold a password.
        raise CannotStart(
            "the database URL does not parse: use sqlite:///FILE or postgresql://USER@HOST/NAME"
        ) from None
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+pysqlite")
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise CannotStart("SQLite needs a database file, e.g. sqlite:///runplane.db")
    return parsed


def dialect_of(url: URL) -> Dialect:
    backend = url.get_backend_name()
    if backend == "postgresql":
        return PostgreSQL()
    if backend == "sqlite":
        return SQLite()
    raise CannotStart(
        f"unsupported database {backend!r}: use sqlite:///FILE or postgresql://USER@HOST/NAME"
    )
