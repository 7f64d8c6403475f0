"""Rows a write transaction holds back until its next read or its commit.

A CreateRun on a new thread reads nothing: its run, its thread's head, its metadata
index rows and its event can wait and go with those of the other creates of its group,
one statement per table, and on PostgreSQL all of them in one statement
(`Dialect.send_held`). Only a write that cannot fail may be held, since its error would
surface in some other statement:

- a head (ON CONFLICT DO NOTHING), index rows of a run written in the same transaction,
  and a run whose id the server made (`RunStore.new_id`); a run id the caller chose may
  be taken, so that INSERT runs at once;
- the events of the revisions the transaction took, and the counter's new value (it
  holds the counter row, `EventLog.reserve`);
- a run's new state (`RunStore.write`) and its thread head's (`ThreadHeads`): their rows
  are locked or new, and nothing the statement sets can be refused. A claim's writes then
  go in one statement with its event.

A held UPDATE sets values, never adds to them, and names the row it changes by the
parameters of its WHERE clause: held again for the same row, its values are merged into
those held before, later values winning, so that no statement updates a row twice.

Any statement the transaction runs that may read a table rows are held for sends them
first (`send_before_reads`): a plain INSERT into another table reads none. So everything
the transaction reads sees every row held before it; the group writer sends the rest
before committing (`send`).
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import BindParameter, Connection, Engine, Insert, Update, event
from sqlalchemy.sql import visitors

from runplane.server.store.dialects import Dialect

_HELD = "runplane.held_rows"
"""connection.info key: the held rows (a `_Holding`), by the statement that writes them,
in the order the statements were first held."""

_Holding = dict[Insert | Update, dict[Any, dict[str, Any]]]
"""Each statement's rows by key: an INSERT's by their place, an UPDATE's by the row they
change, so that values held again for a row find it at once."""


def hold(connection: Connection, statement: Insert | Update, row: dict[str, Any]) -> None:
    held: _Holding = connection.info.setdefault(_HELD, {})
    if isinstance(statement, Update) and any(
        isinstance(kind, Insert) and kind.table is statement.table for kind in held
    ):
        # It may change a row held for an INSERT, which a statement that holds both
        # would not see: it runs now, after the held rows (`send_before_reads`).
        connection.execute(statement, row)
        return
    rows = held.setdefault(statement, {})
    if isinstance(statement, Update):
        # Which row the values are for: those of the parameters of its WHERE clause.
        key = tuple(row.get(name) for name in _where_parameters(statement))
        rows[key] = {**rows.get(key, {}), **row}
    else:
        rows[len(rows)] = row


@functools.cache
def _where_parameters(statement: Update) -> tuple[str, ...]:
    """The names of the parameters of an UPDATE's WHERE clause: which row it changes."""
    where = statement.whereclause
    found = () if where is None else visitors.iterate(where)
    return tuple(sorted({node.key for node in found if isinstance(node, BindParameter)}))


def send(connection: Connection, dialect: Dialect) -> None:
    """Write what is held."""
    held: _Holding | None = connection.info.pop(_HELD, None)
    if held:
        dialect.send_held(connection, {kind: list(rows.values()) for kind, rows in held.items()})


def discard(connection: Connection) -> None:
    """Forget what is held: its transaction is over (rolled back)."""
    connection.info.pop(_HELD, None)


def send_before_reads(engine: Engine, dialect: Dialect) -> None:
    @event.listens_for(engine, "before_execute")
    def _send_first(connection: Connection, statement: Any, *_: Any) -> None:
        held: _Holding | None = connection.info.get(_HELD)
        if not held:
            return
        if (
            isinstance(statement, Insert)
            and statement.select is None
            and all(statement.table is not kind.table for kind in held)
        ):
            return  # reads nothing held
        send(connection, dialect)
