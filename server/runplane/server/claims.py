"""The executor protocol: workers claim runs, hold leases, heartbeat and complete.

At most one run per thread is RUNNING, and a thread's runs are claimed in
creation order (`RunStore.claimable`); a thread is (namespace, thread_id). A claim is
made under its thread's lock after re-checking the run, so two workers never receive
the same run, on one SQLite process or across PostgreSQL replicas. A claim looks only
in the namespaces its access gives it; heartbeats and completions reach only runs there.
"""

from __future__ import annotations

import asyncio
import dataclasses

from runplane.server import requests, validation
from runplane.server.access import Access
from runplane.server.doorbell import Doorbell, Round
from runplane.server.errors import LeaseLost
from runplane.server.records import Change, ChangeType, NamespaceSet, Run, RunStatus, now_us
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import UnitOfWork

# Replicas ring each other's doorbells through the change listener (see app.py), and
# the listener rings after every reconnect; this look is only a last resort.
_REPLICA_POLL_S = 5.0


class ClaimService:
    def __init__(self, database: Database, doorbell: Doorbell, limits: validation.Limits) -> None:
        self._db = database
        self._doorbell = doorbell
        self._limits = limits
        self._draining = False

    def drain(self) -> None:
        """The server is stopping: waiting claims return empty now, and so do new ones,
        so that no long poll holds up the shutdown."""
        self._draining = True
        self._doorbell.ring_all()

    async def claim(self, request: requests.ClaimRun) -> Run | None:
        """Claim the oldest claimable run, waiting up to `wait_s` for one to appear."""
        namespaces = request.access.namespaces(request.namespace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.wait_s
        held: Round | None = None  # the round that woke this claim, until it has looked
        while not self._draining:
            waiter = self._doorbell.park(request.assistant_ids)
            try:
                claimed, next_due = await self._attempt(request, namespaces)
            except BaseException:
                self._hand_on(self._doorbell.leave(waiter), held)
                raise
            if claimed is not None:
                self._doorbell.leave(waiter)
                self._doorbell.ring()  # there may be more: let the next waiter look
                return claimed
            if held is not None:
                self._doorbell.pass_on(held, request.assistant_ids)
            held = None
            if waiter.woken.done():
                held = waiter.woken.result()  # rung while looking: look again
                continue
            pause = deadline - loop.time()
            if pause <= 0:
                self._doorbell.leave(waiter)
                return None
            if next_due is not None:
                pause = min(pause, max(0.0, (next_due - now_us()) / 1e6))
            if self._db.shared:
                pause = min(pause, _REPLICA_POLL_S)
            try:
                await asyncio.wait({waiter.woken}, timeout=pause)
            except BaseException:
                self._hand_on(self._doorbell.leave(waiter))
                raise
            held = self._doorbell.leave(waiter)
        return None

    def _hand_on(self, *rounds: Round | None) -> None:
        """A claim that gives up (cancelled, failed) passes on what woke it, unused."""
        for round_ in rounds:
            if round_ is not None:
                self._doorbell.pass_on(round_, None)

    async def _attempt(
        self, request: requests.ClaimRun, namespaces: NamespaceSet
    ) -> tuple[Run | None, int | None]:
        """One look, and a claim if the look found something."""
        # Look before taking the write lock: a run seen by several waiters is claimed
        # by one, and a read costs none of the writer's time.
        ready, next_due = await self._db.read(lambda unit: self._peek(unit, request, namespaces))
        if not ready:
            return None, next_due
        return await self._db.write(lambda unit: self._claim_once(unit, request, namespaces))

    @staticmethod
    def _peek(
        unit: UnitOfWork, request: requests.ClaimRun, namespaces: NamespaceSet
    ) -> tuple[bool, int | None]:
        """Whether a run is claimable now; if not, when the next one becomes due."""
        now = now_us()
        if unit.runs.claimable(now, request.assistant_ids, namespaces, 1):
            return True, None
        return False, unit.runs.next_start_after(now)

    @staticmethod
    def _claim_once(
        unit: UnitOfWork, request: requests.ClaimRun, namespaces: NamespaceSet
    ) -> tuple[Run | None, int | None]:
        now = now_us()
        runs = unit.runs
        for candidate in runs.claim_candidates(now, request.assistant_ids, namespaces):
            if not runs.lock_candidate(candidate, now, request.assistant_ids):
                continue  # another transaction is changing its thread, or took it
            running = dataclasses.replace(
                candidate,
                status=RunStatus.RUNNING,
                attempt=candidate.attempt + 1,
                worker_id=request.worker_id,
                lease_expires_at=now + request.lease_us,
                started_at=candidate.started_at or now,
                updated_at=now,
            )
            return unit.apply([Change(ChangeType.UPDATED, running, previous=candidate)])[0], None
        return None, runs.next_start_after(now)

    async def heartbeat(self, request: requests.HeartbeatRun) -> Run:
        def extend(unit: UnitOfWork) -> Run:
            run = _held(unit, request.run_id, request.worker_id, request.access)
            now = now_us()
            renewed = dataclasses.replace(
                run, lease_expires_at=now + request.lease_us, updated_at=now
            )
            return unit.apply([Change(ChangeType.UPDATED, renewed, previous=run)])[0]

        return await self._db.write(extend)

    async def complete(self, completion: requests.CompleteRun) -> Run:
        """End the run as its worker says. `retryable` is carried, not applied yet: an
        ERROR is final until runs have retry policies."""

        def finish(unit: UnitOfWork) -> Run:
            run = _held(unit, completion.run_id, completion.worker_id, completion.access)
            metadata = validation.merged_metadata(run.metadata, completion.metadata, self._limits)
            now = now_us()
            ended = dataclasses.replace(
                run,
                status=completion.status,
                error=completion.error,
                metadata=metadata,
                result=completion.result,
                ended_at=now,
                updated_at=now,
                lease_expires_at=None,
            )
            return unit.apply([Change(ChangeType.UPDATED, ended, previous=run)])[0]

        return await self._db.write(finish)


def _held(unit: UnitOfWork, run_id: str, worker_id: str, access: Access) -> Run:
    """The run, if `worker_id` still holds its claim; LeaseLost otherwise. A run that is
    gone, or that the access does not reach, is RunNotFound: alike, so that no worker
    learns of another tenant's runs."""
    run = access.found(run_id, unit.runs.get_locked(run_id))
    if run.status is not RunStatus.RUNNING:
        raise LeaseLost(run_id, worker_id, f"the run is {run.status.value}")
    if run.worker_id != worker_id:
        raise LeaseLost(run_id, worker_id, "the run was claimed again by another worker")
    return run
