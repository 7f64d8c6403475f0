"""The executor protocol: workers claim runs, hold leases, heartbeat and complete.

At most one run per thread is RUNNING, and a thread's runs are claimed in creation
order: only a thread's head (its first inflight run, `UnitOfWork.heads`) is ever
claimable, and among heads the highest priority, then the earliest due, goes first.
A claim is made under its thread's lock after re-checking the head, so two workers
never receive the same run, on one SQLite process or across PostgreSQL replicas.
A long-polling claim waits for its next look in `ClaimWakeups`.

A heartbeat extends the lease in place, like an etcd lease keep-alive: it is not a
change of the run, so it takes no revision, writes no event and wakes nobody.
"""

from __future__ import annotations

import dataclasses

from runplane.server import requests
from runplane.server.errors import LeaseLost
from runplane.server.records import Change, ChangeType, Run, RunStatus, now_us
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import UnitOfWork
from runplane.server.wakeups import ClaimWakeups


class ClaimService:
    def __init__(self, database: Database, wakeups: ClaimWakeups) -> None:
        self._db = database
        self._wakeups = wakeups

    async def claim(self, request: requests.ClaimRun) -> Run | None:
        """Claim the first claimable run, waiting up to `wait_s` for one to appear."""
        return await self._wakeups.until_found(
            lambda: self._attempt(request),
            scope=(request.namespace, request.assistant_ids),
            wait_s=request.wait_s,
        )

    async def _attempt(self, request: requests.ClaimRun) -> tuple[Run | None, int | None]:
        """One look, and a claim if the look found something."""
        # Look before taking the write lock: a run seen by several waiters is claimed
        # by one, and a read costs none of the writer's time.
        ready, next_due = await self._db.read(lambda unit: _peek(unit, request))
        if not ready:
            return None, next_due
        return await self._db.write(lambda unit: _claim_once(unit, request))

    async def heartbeat(self, request: requests.HeartbeatRun) -> Run:
        def extend(unit: UnitOfWork) -> Run:
            until = now_us() + request.lease_us
            renewed = unit.renew_lease(request.run_id, request.worker_id, until)
            if renewed is not None:
                return renewed
            # Nothing was written: say why.
            raise _lease_lost(unit.runs.get(request.run_id), request.run_id, request.worker_id)

        return await self._db.write(extend)

    async def complete(self, completion: requests.CompleteRun) -> Run:
        """End the run as its worker says. `retryable` is carried, not applied yet: an
        ERROR is final until runs have retry policies."""

        def finish(unit: UnitOfWork) -> Run:
            run = _held(unit.runs.get_locked(completion.run_id), completion)
            now = now_us()
            ended = dataclasses.replace(
                run,
                status=completion.status,
                error=completion.error,
                metadata={**run.metadata, **completion.metadata},
                result=completion.result,
                ended_at=now,
                updated_at=now,
                lease_expires_at=None,
            )
            return unit.apply([Change(ChangeType.UPDATED, ended, previous=run)])[0]

        return await self._db.write(finish)


def _namespaces(request: requests.ClaimRun) -> frozenset[str] | None:
    return None if request.namespace is None else frozenset((request.namespace,))


def _peek(unit: UnitOfWork, request: requests.ClaimRun) -> tuple[bool, int | None]:
    """Whether a run is claimable now; if not, when the next one becomes due."""
    now = now_us()
    if unit.heads.claimable(now, _namespaces(request), request.assistant_ids, 1):
        return True, None
    return False, unit.heads.next_due(now)


def _claim_once(unit: UnitOfWork, request: requests.ClaimRun) -> tuple[Run | None, int | None]:
    now = now_us()
    heads = unit.heads
    for head in heads.candidates(now, _namespaces(request), request.assistant_ids):
        if not heads.lock(head, now):
            continue  # another transaction is changing its thread, or took it
        candidate = unit.runs.get(head.run_id)
        if candidate is None:
            raise AssertionError("a thread head names a run that exists")
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
    return None, heads.next_due(now)


def _held(run: Run | None, completion: requests.CompleteRun) -> Run:
    """The run, if the completing worker still holds its claim; LeaseLost otherwise."""
    if run is None or run.status is not RunStatus.RUNNING or run.worker_id != completion.worker_id:
        raise _lease_lost(run, completion.run_id, completion.worker_id)
    return run


def _lease_lost(run: Run | None, run_id: str, worker_id: str) -> LeaseLost:
    """Why `worker_id` does not hold the run (as `run` is now)."""
    if run is None:
        return LeaseLost(run_id, worker_id, "the run was deleted")
    if run.status is not RunStatus.RUNNING:
        return LeaseLost(run_id, worker_id, f"the run is {run.status.value}")
    if run.worker_id != worker_id:
        return LeaseLost(run_id, worker_id, "the run was claimed again by another worker")
    return LeaseLost(run_id, worker_id, "the run was claimed again meanwhile")
