"""The rules of runs: multitask strategies, cancellation, updates, deletion, listing.

Each operation is one transaction: the rule reads what it needs through the
`UnitOfWork` the store hands it, decides, and passes its changes to
`UnitOfWork.apply`, which numbers them with global revisions. "What happens on
CreateRun with ROLLBACK" is answered in `RunService._create`.

A thread is (namespace, thread_id): strategies, the thread's lock and `request_id`
reach only runs of the namespace the run is created in. Which runs a call may touch
is asked of the request's `access`, right where the rules read them.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runplane.server import pages, requests
from runplane.server.access import Access
from runplane.server.cache import ReplicaCache, RunCache, run_bytes
from runplane.server.errors import (
    RevisionMismatch,
    RunAlreadyExists,
    RunInflight,
    RunNotPending,
    RunTerminal,
    ThreadBusy,
    TooManyRuns,
)
from runplane.server.records import (
    CancelAction,
    Change,
    ChangeType,
    MultitaskStrategy,
    PageCursor,
    Run,
    RunStatus,
    now_us,
)
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import UnitOfWork
from runplane.server.wakeups import ClaimWakeups

PAGE_BYTES = 1 << 20
"""About how much of the runs table a ListRuns page reads (as `run_bytes` sizes runs):
a page of large runs is read a few rows at a time and ends early rather than holding
page_size of them in memory (the response carries about as much anyway)."""
FIRST_READ = 64
"""Rows a page reads first; then as many as the size of those says still fit."""

MAX_CANCELLED = 1000
"""Runs one CancelRuns may cancel; a filter matching more is refused, with nothing
cancelled. Its one transaction holds the writer, so every other write waits for it
(tests/bench/cancel_runs.py on PostgreSQL, on a busy 2-core machine: 0.5 to 1 s for
1000 runs, 4.3 s for 5000), and on PostgreSQL it takes an advisory lock per thread from
a lock table all connections share."""

RunLookup = Callable[[str, Access], Awaitable[Run]]
"""GetRun's read: the run with this id, if the access reaches it; else RunNotFound (or
PermissionDenied)."""


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: list[Run]
    next_page_token: str
    revision: int
    resume: Callable[[Run], str]
    """The token of a page that starts right after this run, for a caller that sends
    only part of the page (a response must stay under the message size limit)."""


def _interrupted(run: Run, reason: str, at: int) -> Change:
    ended = run.ended(RunStatus.INTERRUPTED, at, cancel_reason=reason)
    return Change(ChangeType.UPDATED, ended, previous=run)


def _cancelled(run: Run, action: CancelAction, reason: str, at: int) -> Change:
    """Cancelling an inflight run: ROLLBACK deletes it, INTERRUPT ends it INTERRUPTED."""
    if action is CancelAction.ROLLBACK:
        return Change(ChangeType.DELETED, run)
    return _interrupted(run, reason or "cancelled", at)


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What CancelRuns did: how many runs it cancelled, and the revision of its last
    change (the store's revision when it cancelled none)."""

    count: int
    revision: int


def _check_revision(run: Run, expected: int) -> None:
    if expected and run.revision != expected:
        raise RevisionMismatch(run.run_id, expected, run.revision)


class RunService:
    def __init__(
        self,
        database: Database,
        tokens: pages.PageTokens,
        cache: RunCache | ReplicaCache | None = None,
        wakeups: ClaimWakeups | None = None,
    ) -> None:
        self._db = database
        self._tokens = tokens
        self._cache = cache
        self._wakeups = wakeups

    # -- create ------------------------------------------------------------------------------

    async def create(self, new: requests.CreateRun) -> Run:
        if self._wakeups is not None:
            # Before the write: a waiting claim then commits with it (`ClaimWakeups`).
            self._wakeups.creating(new.namespace, new.assistant_id, new.start_after)
        return await self._db.write(lambda unit: self._create(unit, new))

    def _create(self, unit: UnitOfWork, new: requests.CreateRun) -> Run:
        namespace = new.namespace
        new.access.require(namespace)
        runs = unit.runs
        if new.request_id is not None:
            runs.lock_request(namespace, new.request_id)
            first = runs.get_by_request_id(namespace, new.request_id)
            if first is not None:
                return first  # a retry: no second run, no strategy applied again
        run_id = new.run_id or runs.new_id()
        thread_id = new.thread_id or str(uuid.uuid4())
        if new.thread_id:
            # A thread id the server just made is nobody else's: nothing to lock.
            runs.lock_thread(namespace, thread_id)
        if new.run_id is not None and runs.get(new.run_id) is not None:
            # Run ids are global, so this tells that the id is taken, maybe in another
            # namespace; nothing more. Ids the server makes never collide.
            raise RunAlreadyExists(new.run_id)
        inflight = runs.inflight_on_thread(namespace, thread_id) if new.thread_id else []
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
            namespace=namespace,
            created_by=new.access.caller,
            trace_context=new.trace_context,
            retry_policy=new.retry_policy,
            priority=new.priority,
        )
        changes.append(Change(ChangeType.CREATED, run))
        return unit.apply(changes)[-1]

    # -- read --------------------------------------------------------------------------------

    async def get(self, request: requests.GetRun) -> Run:
        return await self.lookup(request.run_id, request.access)

    async def lookup(self, run_id: str, access: Access) -> Run:
        """The run with this id (RunLookup), from the cache when it may answer."""
        if self._cache is None:
            run = await self._db.read_run(run_id)
        else:
            run = await self._cache.lookup(run_id, self._db)
        return access.found(run_id, run)

    async def list(self, query: requests.ListRuns) -> RunPage:
        run_filter = dataclasses.replace(
            query.run_filter, namespaces=query.access.namespaces(query.namespace)
        )
        # The namespaces are part of the query a token is bound to.
        fingerprint = pages.query_fingerprint(run_filter, query.order)
        tokens = self._tokens
        cursor = tokens.decode(query.page_token, fingerprint) if query.page_token else None

        def read_page(unit: UnitOfWork) -> tuple[int, list[Run], bool]:
            """The revision, the runs, and whether the runs stopped short of the page
            for their size (more may follow)."""
            revision = unit.log.state().revision
            wanted = query.page_size + 1  # one extra row tells whether another page follows
            runs: list[Run] = []
            size = 0
            after, step = cursor, min(wanted, FIRST_READ)
            while True:
                found = unit.runs.list_page(run_filter, query.order, after, step)
                runs.extend(found)
                size += sum(map(run_bytes, found))
                if len(found) < step or len(runs) >= wanted:
                    return revision, runs, False
                if size >= PAGE_BYTES:
                    return revision, runs, True
                after = PageCursor(runs[-1].created_at, runs[-1].run_id)
                step = min(wanted - len(runs), max(1, (PAGE_BYTES - size) * len(runs) // size))

        def resume(last: Run) -> str:
            return tokens.encode(PageCursor(last.created_at, last.run_id), fingerprint)

        revision, runs, cut = await self._db.read(read_page, snapshot=True)
        next_token = ""
        if len(runs) > query.page_size:
            runs = runs[: query.page_size]
            next_token = resume(runs[-1])
        elif cut:
            next_token = resume(runs[-1])
        return RunPage(runs=runs, next_page_token=next_token, revision=revision, resume=resume)

    # -- change ------------------------------------------------------------------------------

    async def update(self, patch: requests.UpdateRun) -> Run:
        return await self._db.write(lambda unit: self._update(unit, patch))

    def _update(self, unit: UnitOfWork, patch: requests.UpdateRun) -> Run:
        run = _existing(unit, patch.run_id, patch.access)
        _check_revision(run, patch.expected_revision)
        changed: dict[str, Any] = {"updated_at": now_us()}
        if patch.metadata is not None:
            changed["metadata"] = patch.metadata
        if patch.kwargs is not None:
            if run.status is not RunStatus.PENDING:
                raise RunNotPending(run.run_id, run.status.value)
            changed["kwargs"] = patch.kwargs
        updated = dataclasses.replace(run, **changed)
        return unit.apply([Change(ChangeType.UPDATED, updated, previous=run)])[0]

    async def cancel(self, request: requests.CancelRun) -> Run:
        return await self._db.write(lambda unit: self._cancel(unit, request))

    def _cancel(self, unit: UnitOfWork, request: requests.CancelRun) -> Run:
        run = _existing(unit, request.run_id, request.access)
        if not run.status.is_inflight:
            raise RunTerminal(run.run_id, run.status.value)
        return unit.apply([_cancelled(run, request.action, request.reason, now_us())])[0]

    async def cancel_many(self, request: requests.CancelRuns) -> Cancellation:
        """Cancel every inflight run the filter matches in the namespaces the caller may
        write (the one it names, or all), in one transaction."""
        run_filter = dataclasses.replace(
            request.run_filter, namespaces=request.access.namespaces(request.namespace)
        )

        def cancel_matching(unit: UnitOfWork) -> Cancellation:
            runs = unit.runs.inflight_matching(run_filter, MAX_CANCELLED + 1)
            if len(runs) > MAX_CANCELLED:
                raise TooManyRuns(MAX_CANCELLED)
            at = now_us()
            changes = [_cancelled(run, request.action, request.reason, at) for run in runs]
            if not changes:
                return Cancellation(0, unit.log.state().revision)
            return Cancellation(len(changes), unit.apply(changes)[-1].revision)

        return await self._db.write(cancel_matching)

    async def delete(self, request: requests.DeleteRun) -> None:
        await self._db.write(lambda unit: self._delete(unit, request))

    def _delete(self, unit: UnitOfWork, request: requests.DeleteRun) -> None:
        run = _existing(unit, request.run_id, request.access)
        _check_revision(run, request.expected_revision)
        if run.status.is_inflight and not request.force:
            raise RunInflight(run.run_id, run.status.value)
        unit.apply([Change(ChangeType.DELETED, run)])


def _existing(unit: UnitOfWork, run_id: str, access: Access) -> Run:
    """The run to change, if the access reaches it: asked before anything of it is
    compared, so a refusal tells nothing of its state."""
    return access.found(run_id, unit.runs.get_locked(run_id))
