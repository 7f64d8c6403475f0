"""Lease keep-alives: heartbeats renewed together, many in one statement.

A heartbeat extends its run's lease in place, like an etcd lease keep-alive: it is not
a change of the run, so it takes no revision, writes no event and wakes nobody. It is
also the write that comes most often: 10,000 running runs with 10 s leases,
heartbeating every third of their lease, renew 3,000 leases a second. So heartbeats
that arrive within LINGER_S of each other, or while a batch is being written, are
renewed together, in one UPDATE (`UnitOfWork.renew_leases`): the busier it gets, the
less each costs. A few milliseconds more on a heartbeat are nothing to a lease of
seconds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial

from runplane.server import requests
from runplane.server.errors import LeaseLost, RunplaneError
from runplane.server.records import Run, RunStatus, now_us
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import LeaseRenewal, UnitOfWork

MAX_BATCH = 256
LINGER_S = 0.005
"""How long the first heartbeat of a batch waits for others to join it."""


@dataclass(frozen=True, slots=True)
class _Heartbeat:
    request: requests.HeartbeatRun
    expires_at: int
    """When the lease ends if renewed: `lease_us` from the heartbeat's arrival."""


@dataclass(frozen=True, slots=True)
class _Waiting:
    heartbeat: _Heartbeat
    answer: asyncio.Future[Run]


class LeaseKeeper:
    def __init__(self, database: Database) -> None:
        self._db = database
        self._waiting: list[_Waiting] = []
        self._writing: asyncio.Task[None] | None = None

    async def renew(self, request: requests.HeartbeatRun) -> Run:
        """The run with its lease extended by `lease_us` from now; LeaseLost if the
        worker no longer holds it, RunNotFound or PermissionDenied as the request's
        access finds the run."""
        heartbeat = _Heartbeat(request, now_us() + request.lease_us)
        answer: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(heartbeat, answer))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_batches())
        return await answer

    async def _write_batches(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(LINGER_S)
                batch = self._next_batch()
                heartbeats = [waiting.heartbeat for waiting in batch]
                outcomes: list[Run | Exception]
                try:
                    outcomes = [*await self._db.write(partial(_renew, heartbeats))]
                except Exception as error:
                    outcomes = [error] * len(batch)
                for waiting, outcome in zip(batch, outcomes, strict=True):
                    if waiting.answer.done():
                        continue  # its caller left
                    if isinstance(outcome, Exception):
                        waiting.answer.set_exception(outcome)
                    else:
                        waiting.answer.set_result(outcome)
        finally:
            self._writing = None

    def _next_batch(self) -> list[_Waiting]:
        """Up to MAX_BATCH waiting renewals, of distinct runs (a second heartbeat of a
        run waits for the next batch), oldest first."""
        batch: list[_Waiting] = []
        runs: set[str] = set()
        later: list[_Waiting] = []
        for waiting in self._waiting:
            run_id = waiting.heartbeat.request.run_id
            if len(batch) < MAX_BATCH and run_id not in runs:
                batch.append(waiting)
                runs.add(run_id)
            else:
                later.append(waiting)
        self._waiting = later
        return batch


def _renew(heartbeats: list[_Heartbeat], unit: UnitOfWork) -> list[Run | RunplaneError]:
    """Renew what can be; say why for the rest. Refusals are returned, not raised: the
    transaction wrote the renewals before it knew of them (see GroupWriter).

    Each run's namespace is read first and put to its caller's access, so a renewal
    never writes where its caller may not; the renewal then names that namespace, so
    a run id deleted and taken again elsewhere meanwhile is left alone.
    """
    places = unit.runs.namespaces_of([heartbeat.request.run_id for heartbeat in heartbeats])
    outcomes: dict[str, Run | RunplaneError] = {}
    renewals: list[LeaseRenewal] = []
    for heartbeat in heartbeats:
        request = heartbeat.request
        try:
            namespace = request.access.found_in(places.get(request.run_id), request.run_id)
        except RunplaneError as refused:
            outcomes[request.run_id] = refused
            continue
        renewals.append(
            LeaseRenewal(request.run_id, namespace, request.worker_id, heartbeat.expires_at)
        )
    outcomes.update(unit.renew_leases(renewals) if renewals else {})
    lost = [heartbeat for heartbeat in heartbeats if heartbeat.request.run_id not in outcomes]
    if lost:
        now = {run.run_id: run for run in unit.runs.get_many([h.request.run_id for h in lost])}
        for heartbeat in lost:
            request = heartbeat.request
            outcomes[request.run_id] = _why_lost(request, now.get(request.run_id))
    return [outcomes[heartbeat.request.run_id] for heartbeat in heartbeats]


def _why_lost(request: requests.HeartbeatRun, run: Run | None) -> RunplaneError:
    """Why a renewal left the run as it is (as `run` is now)."""
    try:
        found = request.access.found(request.run_id, run)
    except RunplaneError as refused:
        return refused
    return _lease_lost(found, request.worker_id)


def _lease_lost(run: Run, worker_id: str) -> LeaseLost:
    """Why `worker_id` does not hold the run (as `run` is now)."""
    if run.status is not RunStatus.RUNNING:
        return LeaseLost(run.run_id, worker_id, f"the run is {run.status.value}")
    if run.worker_id != worker_id:
        return LeaseLost(run.run_id, worker_id, "the run was claimed again by another worker")
    return LeaseLost(run.run_id, worker_id, "the run was claimed again meanwhile")


def held(run: Run, worker_id: str) -> Run:
    """The run (as the call's access found it), if `worker_id` still holds its claim;
    LeaseLost otherwise."""
    if run.status is not RunStatus.RUNNING or run.worker_id != worker_id:
        raise _lease_lost(run, worker_id)
    return run
