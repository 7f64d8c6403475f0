"""The rules of runs: multitask strategies, cancellation, updates, deletion, listing.

Each operation is one transaction: the rule reads what it needs through a
`RunStore`, decides, and hands its changes to `RunStore.apply`, which numbers
them with global revisions. "What happens on CreateRun with ROLLBACK" is
answered in `RunService._create`.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from runplane.server import pages
from runplane.server.cache import RunCache
from runplane.server.errors import (
    RevisionMismatch,
    RunAlreadyExists,
    RunInflight,
    RunNotFound,
    RunNotPending,
    RunTerminal,
    ThreadBusy,
)
from runplane.server.records import (
    CancelAction,
    Change,
    ChangeType,
    JSONObject,
    MultitaskStrategy,
    PageCursor,
    Run,
    RunFilter,
    RunStatus,
    SortOrder,
    now_us,
)
from runplane.server.store.database import Database
from runplane.server.store.run_store import RunStore


@dataclass(frozen=True, slots=True)
class NewRun:
    """A validated CreateRun request."""

    assistant_id: str
    thread_id: str | None = None
    run_id: str | None = None
    metadata: JSONObject = dataclasses.field(default_factory=dict)
    kwargs: JSONObject = dataclasses.field(default_factory=dict)
    strategy: MultitaskStrategy = MultitaskStrategy.ENQUEUE
    request_id: str | None = None
    timeout: int | None = None
    start_after: int | None = None


@dataclass(frozen=True, slots=True)
class RunPatch:
    """A validated UpdateRun request: None leaves a field as it is."""

    run_id: str
    metadata: JSONObject | None = None
    kwargs: JSONObject | None = None
    expected_revision: int = 0


@dataclass(frozen=True, slots=True)
class ListQuery:
    run_filter: RunFilter
    order: SortOrder
    page_size: int
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: list[Run]
    next_page_token: str
    revision: int


def _interrupted(run: Run, reason: str, at: int) -> Change:
    ended = dataclasses.replace(
        run,
        status=RunStatus.INTERRUPTED,
        cancel_reason=reason,
        ended_at=at,
        updated_at=at,
        lease_expires_at=None,
    )
    return Change(ChangeType.UPDATED, ended, previous=run)


def _check_revision(run: Run, expected: int) -> None:
    if expected and run.revision != expected:
        raise RevisionMismatch(run.run_id, expected, run.revision)


class RunService:
    def __init__(self, database: Database, cache: RunCache | None = None) -> None:
        self._db = database
        self._cache = cache

    def _store(self, connection: Connection) -> RunStore:
        return RunStore(connection, self._db.dialect)

    # -- create ------------------------------------------------------------------------------

    async def create(self, new: NewRun) -> Run:
        return await self._db.write(lambda conn: self._create(self._store(conn), new))

    def _create(self, store: RunStore, new: NewRun) -> Run:
        if new.request_id is not None:
            store.lock_request(new.request_id)
            first = store.get_by_request_id(new.request_id)
            if first is not None:
                return first  # a retry: no second run, no strategy applied again
        run_id = new.run_id or str(uuid.uuid4())
        thread_id = new.thread_id or str(uuid.uuid4())
        store.lock_thread(thread_id)
        if new.run_id is not None and store.get(new.run_id) is not None:
            raise RunAlreadyExists(new.run_id)
        inflight = store.inflight_on_thread(thread_id) if new.thread_id else []
        at = now_us()

        changes: list[Change] = []
        if inflight:
            match new.strategy:
                case MultitaskStrategy.REJECT:
                    raise ThreadBusy(thread_id, inflight[0].run_id)
                case MultitaskStrategy.INTERRUPT:
                    reason = f"superseded by run {run_id}"
                    changes.extend(_interrupted(run, reason, at) for run in inflight)
                case MultitaskStrategy.ROLLBACK:
                    changes.extend(Change(ChangeType.DELETED, run) for run in inflight)
                case MultitaskStrategy.ENQUEUE:
                    pass  # waits its turn: the thread's runs are claimed in creation order
        run = Run(
            run_id=run_id,
            thread_id=thread_id,
            assistant_id=new.assistant_id,
            status=RunStatus.PENDING,
            multitask_strategy=new.strategy,
            created_at=at,
            updated_at=at,
            metadata=new.metadata,
            kwargs=new.kwargs,
            timeout=new.timeout,
            start_after=new.start_after,
            request_id=new.request_id,
        )
        changes.append(Change(ChangeType.CREATED, run))
        return store.apply(changes)[-1]

    # -- read --------------------------------------------------------------------------------

    async def get(self, run_id: str) -> Run:
        run = self._cache.get(run_id) if self._cache is not None else None
        if run is None:
            run = await self._db.read(lambda conn: self._store(conn).get(run_id))
            if run is None:
                raise RunNotFound(run_id)
            if self._cache is not None:
                self._cache.remember(run)
        return run

    async def list(self, query: ListQuery) -> RunPage:
        fingerprint = pages.query_fingerprint(query.run_filter, query.order)
        cursor = pages.decode(query.page_token, fingerprint) if query.page_token else None

        def read_page(conn: Connection) -> tuple[int, list[Run]]:
            store = self._store(conn)
            revision = store.current_revision()
            # One extra row tells whether another page follows.
            runs = store.list_page(query.run_filter, query.order, cursor, query.page_size + 1)
            return revision, runs

        revision, runs = await self._db.read(read_page, snapshot=True)
        next_token = ""
        if len(runs) > query.page_size:
            runs = runs[: query.page_size]
            last = runs[-1]
            next_token = pages.encode(PageCursor(last.created_at, last.run_id), fingerprint)
        return RunPage(runs=runs, next_page_token=next_token, revision=revision)

    # -- change ------------------------------------------------------------------------------

    async def update(self, patch: RunPatch) -> Run:
        return await self._db.write(lambda conn: self._update(self._store(conn), patch))

    def _update(self, store: RunStore, patch: RunPatch) -> Run:
        run = _existing(store, patch.run_id)
        _check_revision(run, patch.expected_revision)
        changed: dict[str, Any] = {"updated_at": now_us()}
        if patch.metadata is not None:
            changed["metadata"] = patch.metadata
        if patch.kwargs is not None:
            if run.status is not RunStatus.PENDING:
                raise RunNotPending(run.run_id, run.status.value)
            changed["kwargs"] = patch.kwargs
        updated = dataclasses.replace(run, **changed)
        return store.apply([Change(ChangeType.UPDATED, updated, previous=run)])[0]

    async def cancel(self, run_id: str, action: CancelAction, reason: str) -> Run:
        return await self._db.write(
            lambda conn: self._cancel(self._store(conn), run_id, action, reason)
        )

    def _cancel(self, store: RunStore, run_id: str, action: CancelAction, reason: str) -> Run:
        run = _existing(store, run_id)
        if not run.status.is_inflight:
            raise RunTerminal(run.run_id, run.status.value)
        if action is CancelAction.ROLLBACK:
            return store.apply([Change(ChangeType.DELETED, run)])[0]
        return store.apply([_interrupted(run, reason or "cancelled", now_us())])[0]

    async def delete(self, run_id: str, expected_revision: int, force: bool) -> None:
        await self._db.write(
            lambda conn: self._delete(self._store(conn), run_id, expected_revision, force)
        )

    def _delete(self, store: RunStore, run_id: str, expected_revision: int, force: bool) -> None:
        run = _existing(store, run_id)
        _check_revision(run, expected_revision)
        if run.status.is_inflight and not force:
            raise RunInflight(run.run_id, run.status.value)
        store.apply([Change(ChangeType.DELETED, run)])


def _existing(store: RunStore, run_id: str) -> Run:
    run = store.get_locked(run_id)
    if run is None:
        raise RunNotFound(run_id)
    return run
