"""The executor protocol: workers claim runs, hold leases, heartbeat and complete.

At most one run per thread is RUNNING, and a thread's runs are claimed in creation
order: only a thread's head (its first inflight run, `UnitOfWork.heads`) is ever
claimable, and among heads the highest priority, then the earliest due, goes first.
A thread is (namespace, thread_id). A claim is made under its thread's lock after
re-checking the head, so two workers never receive the same run, on one SQLite
process or across PostgreSQL replicas. A long-polling claim waits for its next look
in `ClaimWakeups`. A claim looks only in the namespaces its access gives it;
heartbeats and completions reach only runs there.

A worker ends its run with SUCCESS or ERROR; an ERROR it calls retryable sends a run
with a retry policy back in line while attempts remain (`retries`).

A heartbeat extends the lease in place (`LeaseKeeper`): it is not a change of the
run, so it takes no revision, writes no event and wakes nobody.
"""

from __future__ import annotations

import dataclasses

from runplane.server import requests, retries, validation
from runplane.server.leases import LeaseKeeper, held
from runplane.server.records import Change, ChangeType, NamespaceSet, Run, RunStatus, now_us
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import UnitOfWork
from runplane.server.wakeups import ClaimScope, ClaimWakeups


class ClaimService:
    def __init__(
        self,
        database: Database,
        wakeups: ClaimWakeups,
        limits: validation.Limits,
        *,
        max_attempts: int,
    ) -> None:
        self._db = database
        self._wakeups = wakeups
        self._limits = limits
        self._max_attempts = max_attempts
        """Claims of a run whose retry policy leaves max_attempts 0 (--max-attempts)."""
        self._leases = LeaseKeeper(database)

    def drain(self) -> None:
        """The server is stopping: waiting claims return empty now, and so do new ones,
        so that no long poll holds up the shutdown."""
        self._wakeups.drain()

    async def claim(self, request: requests.ClaimRun) -> Run | None:
        """Claim the first claimable run, waiting up to `wait_s` for one to appear."""
        namespaces = request.access.namespaces(request.namespace)
        return await self._wakeups.until_found(
            lambda surely: self._attempt(request, namespaces, surely),
            scope=ClaimScope(namespaces, request.assistant_ids),
            wait_s=request.wait_s,
        )

    async def _attempt(
        self, request: requests.ClaimRun, namespaces: NamespaceSet, surely: bool
    ) -> tuple[Run | None, int | None]:
        """One look, and a claim if the look found something."""
        if not surely:
            # Look before taking the write lock: a run seen by several waiters is
            # claimed by one, and a read costs none of the writer's time.
            ready, next_due = await self._db.read(lambda unit: _peek(unit, request, namespaces))
            if not ready:
                return None, next_due
        return await self._db.write(lambda unit: _claim_once(unit, request, namespaces))

    async def heartbeat(self, request: requests.HeartbeatRun) -> Run:
        return await self._leases.renew(request)

    async def complete(self, completion: requests.CompleteRun) -> Run:
        """End the run as its worker says; an ERROR the worker calls retryable, of a run
        with a retry policy, is a failed attempt (`retries.after_failure`)."""

        def finish(unit: UnitOfWork) -> Run:
            run = held(
                completion.access.found(completion.run_id, unit.runs.get_locked(completion.run_id)),
                completion.worker_id,
            )
            metadata = validation.merged_metadata(run.metadata, completion.metadata, self._limits)
            now = now_us()
            reported = dataclasses.replace(run, metadata=metadata, result=completion.result)
            if _retryable(completion, run):
                after = retries.after_failure(reported, now, completion.error, self._max_attempts)
            else:
                after = reported.ended(completion.status, now, error=completion.error)
            return unit.apply([Change(ChangeType.UPDATED, after, previous=run)])[0]

        return await self._db.write(finish)


def _retryable(completion: requests.CompleteRun, run: Run) -> bool:
    """Whether the completion is a failed attempt that the run's policy may retry."""
    return (
        completion.status is RunStatus.ERROR
        and completion.retryable
        and run.retry_policy is not None
    )


def _peek(
    unit: UnitOfWork, request: requests.ClaimRun, namespaces: NamespaceSet
) -> tuple[bool, int | None]:
    """Whether a run is claimable now, and when the next one becomes due."""
    return unit.heads.look(now_us(), namespaces, request.assistant_ids)


def _claim_once(
    unit: UnitOfWork, request: requests.ClaimRun, namespaces: NamespaceSet
) -> tuple[Run | None, int | None]:
    now = now_us()
    heads = unit.heads
    candidate = heads.first_claimable(now, namespaces, request.assistant_ids)
    if candidate is not None:
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
