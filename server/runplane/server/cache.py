"""Memory the server keeps for speed, bounded in bytes as well as in entries.

`SizedCache` is the bound: least recently used entries go first once either limit
is passed. `RunCache` keeps runs recently read or written, for GetRun (and a watch's
first look at its run).

On SQLite every write goes through this process's writer, which hands each
committed change to `RunCache.apply`, and each lease renewed in place to
`RunCache.renewed`, before the writer's caller is answered; so the cache is never
behind a write anyone has seen. A lookup still costs a SQLite read when it misses.

PostgreSQL replicas write behind each other's backs, so a replica's cache
(`ReplicaCache`) has to check that it is not behind before it answers: see there.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Protocol, TypeVar

from runplane.server.records import Change, ChangeType, JSONObject, Run, RunEvent, RunStatus

Key = TypeVar("Key")
Value = TypeVar("Value")

RUN_BYTES = 1024
"""What a run costs besides its documents (its other fields, the dict entry), roughly."""


class SizedCache(Generic[Key, Value]):
    """At most `max_entries` values of at most `max_bytes` in all (as their callers
    size them); a value larger than a quarter of `max_bytes` is not kept at all."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[Key, tuple[Value, int]] = OrderedDict()
        self.bytes = 0
        """What the kept values add up to."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Value | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: Key, value: Value, size: int) -> None:
        self.pop(key)
        if size > self._max_bytes // 4:
            return
        self._entries[key] = (value, size)
        self.bytes += size
        while len(self._entries) > self._max_entries or self.bytes > self._max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def replace(self, key: Key, value: Value) -> None:
        """Keep `value` in place of the value kept under `key`, as large as it; nothing
        if none is kept."""
        found = self._entries.get(key)
        if found is not None:
            self._entries[key] = (value, found[1])

    def pop(self, key: Key) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.bytes -= found[1]


def document_bytes(document: JSONObject) -> int:
    """About what a document costs in memory: the length of its repr, close to its
    JSON's and a quarter of the time to make (0 when empty)."""
    return len(repr(document)) if document else 0


def run_bytes(run: Run) -> int:
    return (
        RUN_BYTES
        + document_bytes(run.metadata)
        + document_bytes(run.kwargs)
        + document_bytes(run.result)
        + len(run.error)
    )


class RunReads(Protocol):
    """What a cache reads through when it cannot answer (`Database`)."""

    async def read_run(self, run_id: str) -> Run | None: ...

    async def read_revision(self) -> int: ...


class RunCache:
    def __init__(self, capacity: int = 50_000, max_bytes: int = 128 << 20) -> None:
        self._runs: SizedCache[str, Run] = SizedCache(capacity, max_bytes)

    async def lookup(self, run_id: str, database: RunReads) -> Run | None:
        """The run with this id, from here when it is kept (this process is the store's
        only writer)."""
        run = self.get(run_id)
        if run is None:
            run = await database.read_run(run_id)
            if run is not None:
                self.remember(run)
        return run

    def __len__(self) -> int:
        return len(self._runs)

    @property
    def bytes(self) -> int:
        return self._runs.bytes

    def get(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    def remember(self, run: Run) -> None:
        """Keep `run` unless a later revision of it is already kept."""
        kept = self._runs.get(run.run_id)
        if kept is not None and kept.revision >= run.revision:
            return
        self._runs.put(run.run_id, run, run_bytes(run))

    def apply(self, changes: list[Change]) -> None:
        for change in changes:
            if change.type is ChangeType.DELETED:
                self._runs.pop(change.run.run_id)
            else:
                self.remember(change.run)

    def renewed(self, runs: list[Run]) -> None:
        """Leases extended in place: the runs keep their revision, with a new lease."""
        for run in runs:
            kept = self._runs.get(run.run_id)
            if kept is not None and kept.revision <= run.revision:
                self._runs.replace(run.run_id, run)  # only its lease differs


class ReplicaCache:
    """Runs as this replica's watch hub last published them, for lookups on a shared
    (PostgreSQL) database, where other replicas write too.

    The hub publishes every committed change, this replica's and the others', in
    revision order and without gaps (`published`); `through` is the last revision it
    published. A lookup of a run kept here first reads the store's revision as of after
    the call came (`Database.read_revision`): the run kept answers only if the hub is
    through that revision, and so through every write committed before the call came,
    on any replica. Otherwise, and for runs not kept, the run is read from the
    database.

    RUNNING runs are always read: another replica's heartbeat extends a lease in place,
    with no revision and no event. A run read is kept only if the hub published nothing
    while it was read: a deletion published meanwhile could be older than the read.
    """

    def __init__(self, capacity: int = 50_000, max_bytes: int = 128 << 20) -> None:
        self._size = (capacity, max_bytes)
        self._runs = RunCache(*self._size)
        self.through = 0
        """The hub's last published revision: every change up to it is applied here."""

    def published(self, events: list[RunEvent]) -> None:
        self._runs.apply([Change(ChangeType(event.type.value), event.run) for event in events])
        self.through = events[-1].revision

    def restarted(self, revision: int) -> None:
        """The hub goes on from `revision` without the changes before it (it fell behind
        the log's compaction, or starts): nothing kept may answer any more."""
        self._runs = RunCache(*self._size)
        self.through = revision

    async def lookup(self, run_id: str, database: RunReads) -> Run | None:
        """The run with this id as committed when the call came, or later; or None."""
        if self._kept(run_id) is not None:
            revision = await database.read_revision()
            kept = self._kept(run_id)  # as it is now
            if kept is not None and self.through >= revision:
                return kept
        through = self.through
        run = await database.read_run(run_id)
        if run is not None and self.through == through:
            self._runs.remember(run)
        return run

    def _kept(self, run_id: str) -> Run | None:
        run = self._runs.get(run_id)
        return None if run is None or run.status is RunStatus.RUNNING else run
