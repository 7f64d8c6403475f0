"""The unit of work: what the rules get to read and change the store in one transaction.

`Database.write(work)` and `Database.read(work)` call `work(unit)` with a `UnitOfWork`
over one transaction. The rules read through `unit.runs` (a `RunStore`) and
`unit.log` (the `EventLog`), take the locks they need, decide, and hand their changes
to `unit.apply`, which gives each the next global revision and writes the run rows,
the event log and the notification to other replicas together. A rule never sees a
connection, SQL or the database's dialect.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, bindparam, select

from runplane.server.records import Change, Run, now_us
from runplane.server.store import fields
from runplane.server.store.dialects import Dialect
from runplane.server.store.event_log import EventLog
from runplane.server.store.run_store import RunStore
from runplane.server.store.schema import StoreSecretRow

_SECRET = select(StoreSecretRow.value).where(StoreSecretRow.name == bindparam("name"))

WRITTEN = "runplane.written"
"""connection.info key: the changes a transaction has applied so far (see GroupWriter)."""


class UnitOfWork:
    __slots__ = ("_connection", "_dialect", "log", "runs")

    def __init__(self, connection: Connection, dialect: Dialect) -> None:
        self._connection = connection
        self._dialect = dialect
        self.runs = RunStore(connection, dialect)
        self.log = EventLog(connection, dialect)

    def secret(self, name: str) -> bytes:
        """A key the store keeps for the server (`store_secrets`), such as `page_tokens`."""
        return bytes(self._connection.execute(_SECRET, {"name": name}).scalar_one())

    def apply(self, changes: Sequence[Change]) -> list[Run]:
        """Commit-order the changes: each gets the next revision, and the run rows and the
        event log are written with it. Returns the runs as stored, revisions set.

        Every read, lock and check of the transaction comes before this (the counter row
        it takes is every writer's); a RunplaneError raised after it undoes the group of
        transactions it was committed with.
        """
        if not changes:
            return []
        # Recorded before any statement: a transaction that fails past here wrote something.
        self._connection.info.setdefault(WRITTEN, []).extend(changes)
        first = self.log.reserve(len(changes))
        committed_at = now_us()
        entries = []
        for revision, change in enumerate(changes, start=first):
            change.run.revision = revision
            stored = fields.stored_values(change.run)
            self.runs.write(change, stored)
            entries.append(self.log.entry(change, stored, committed_at))
        self.log.append(entries)
        # Other replicas' watch hubs and claims hear of it at commit; this process's
        # hear through Database.on_commit.
        self._dialect.notify(self._connection, changes[-1].run.revision)
        return [change.run for change in changes]
