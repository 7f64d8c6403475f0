"""Rows a write transaction holds back until its next statement or its commit.

A CreateRun on a new thread reads nothing: its run, its thread's head and its metadata
index rows can wait and go with those of the other creates of its group, one statement
per table (`Dialect.insert_rows`). Only an insert that cannot fail may be held, since
its error would surface in some other statement: a head (ON CONFLICT DO NOTHING), index
rows of a run written in the same transaction, and a run whose id the server made
(`RunStore.new_id`); a run id the caller chose may be taken, so that INSERT runs at once.
Any statement the transaction runs that may read a table rows are held for sends them
first (`send_before_reads`): a plain INSERT into another table reads none. So everything
the transaction reads sees every row held before it; the group writer sends the rest
before committing (`send`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, Insert, event

from runplane.server.store.dialects import Dialect

_HELD = "runplane.held_rows"
"""connection.info key: the held rows, by the statement that inserts them, in order."""


def hold(connection: Connection, statement: Insert, row: dict[str, Any]) -> None:
    held: dict[Insert, list[dict[str, Any]]] = connection.info.setdefault(_HELD, {})
    held.setdefault(statement, []).append(row)


def send(connection: Connection, dialect: Dialect) -> None:
    """Insert what is held, one statement per kind of row."""
    held: dict[Insert, list[dict[str, Any]]] | None = connection.info.pop(_HELD, None)
    for statement, rows in (held or {}).items():
        dialect.insert_rows(connection, statement, rows)


def discard(connection: Connection) -> None:
    """Forget what is held: its transaction is over (rolled back)."""
    connection.info.pop(_HELD, None)


def send_before_reads(engine: Engine, dialect: Dialect) -> None:
    @event.listens_for(engine, "before_execute")
    def _send_first(connection: Connection, statement: Any, *_: Any) -> None:
        held: dict[Insert, list[dict[str, Any]]] | None = connection.info.get(_HELD)
        if not held:
            return
        if (
            isinstance(statement, Insert)
            and statement.select is None
            and all(statement.table is not kind.table for kind in held)
        ):
            return  # reads nothing held
        send(connection, dialect)
