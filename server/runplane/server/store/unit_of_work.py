"""The unit of work: what the rules get to read and change the store in one transaction.

`Database.write(work)` and `Database.read(work)` call `work(unit)` with a `UnitOfWork`
over one transaction. The rules read through `unit.runs` (a `RunStore`) and
`unit.log` (the `EventLog`), claims through `unit.heads` (the `ThreadHeads`), take
the locks they need, decide, and hand their changes to `unit.apply`, which gives each
the next global revision and writes the run rows, the thread heads, the metadata
index, the event log and the notification to other replicas together. A rule never
sees a connection, SQL or the database's dialect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, select

from runplane.server.records import Change, Run, now_us
from runplane.server.store import fields, held_rows
from runplane.server.store.dialects import Dialect
from runplane.server.store.event_log import EventLog
from runplane.server.store.metadata_index import MetadataIndex
from runplane.server.store.run_store import KnownThreads, RunStore
from runplane.server.store.schema import StoreSecretRow
from runplane.server.store.thread_heads import ThreadHeads

_SECRET = select(StoreSecretRow.value).where(StoreSecretRow.name == bindparam("name"))

WRITTEN = "runplane.written"
"""connection.info key: what a transaction has written so far, a `Written` (see GroupWriter)."""


@dataclass(slots=True)
class Written:
    """The writes of a transaction, as its listeners hear of them once it commits."""

    changes: list[Change] = field(default_factory=list)
    """Revisioned changes, in revision order."""
    renewed: list[Run] = field(default_factory=list)
    """Runs whose lease was extended in place: no revision, no event."""

    def __len__(self) -> int:
        return len(self.changes) + len(self.renewed)

    def extend(self, other: Written) -> None:
        self.changes.extend(other.changes)
        self.renewed.extend(other.renewed)


@dataclass(frozen=True, slots=True)
class LeaseRenewal:
    """A worker asks to hold a run of `namespace` until `expires_at` (microseconds)."""

    run_id: str
    namespace: str
    worker_id: str
    expires_at: int


class UnitOfWork:
    __slots__ = ("_connection", "_dialect", "_metadata", "heads", "log", "runs")

    def __init__(
        self, connection: Connection, dialect: Dialect, known: KnownThreads | None = None
    ) -> None:
        """`known`: the threads of runs written before, which the writer keeps."""
        self._connection = connection
        self._dialect = dialect
        self.runs = RunStore(connection, dialect, known)
        self.heads = ThreadHeads(connection, dialect)
        self.log = EventLog(connection, dialect)
        self._metadata = MetadataIndex(connection)

    def secret(self, name: str) -> bytes:
        """A key the store keeps for the server (`store_secrets`), such as `page_tokens`."""
        return bytes(self._connection.execute(_SECRET, {"name": name}).scalar_one())

    def _written(self) -> Written:
        written: Written = self._connection.info.setdefault(WRITTEN, Written())
        return written

    def apply(self, changes: Sequence[Change]) -> list[Run]:
        """Commit-order the changes: each gets the next revision, and the run rows, their
        threads' heads and the event log are written with it. Returns the runs as
        stored, revisions set.

        Every read, lock and check of the transaction comes before this (the counter row
        it takes is every writer's); a RunplaneError raised after it undoes the group of
        transactions it was committed with.
        """
        if not changes:
            return []
        # Recorded before any statement: a transaction that fails past here wrote something.
        self._written().changes.extend(changes)
        released = self.heads.release(changes)
        first = self.log.reserve(len(changes))
        committed_at = now_us()
        entries = []
        for revision, change in enumerate(changes, start=first):
            change.run.revision = revision
            stored = fields.stored_values(change.run)
            self.runs.write(change, stored)
            entries.append(self.log.entry(change, stored, committed_at))
        # Held: sent before the next read, or by `finish`. Other replicas' watch hubs and
        # claims hear of the commit through the notification `reserve` made; this
        # process's through Database.on_commit.
        self.log.append(entries)
        self.heads.follow(changes, released)
        self._metadata.follow(changes)
        return [change.run for change in changes]

    def finish(self) -> None:
        """Send what the transaction's changes left to write: called before it commits."""
        held_rows.send(self._connection, self._dialect)

    def renew_leases(self, renewals: Sequence[LeaseRenewal]) -> dict[str, Run]:
        """Extend the lease of each run (distinct ones) that its worker holds (RUNNING,
        claimed by it) in the namespace named, in place: no revision, no event, no
        notification. Returns the runs renewed, with their new lease, by id; the others
        were left as they are.
        """
        renewed = self.runs.renew_leases(
            [
                (renewal.run_id, renewal.namespace, renewal.worker_id, renewal.expires_at)
                for renewal in renewals
            ]
        )
        if renewed:
            # A transaction that fails past here wrote something (see GroupWriter).
            self._written().renewed.extend(renewed)
        return {run.run_id: run for run in renewed}
