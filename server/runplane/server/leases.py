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
from runplane.server.errors import LeaseLost
from runplane.server.records import Run, RunStatus, now_us
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import LeaseRenewal, UnitOfWork

MAX_BATCH = 256
LINGER_S = 0.005
"""How long the first heartbeat of a batch waits for others to join it."""


@dataclass(frozen=True, slots=True)
class _Waiting:
    renewal: LeaseRenewal
    answer: asyncio.Future[Run]


class LeaseKeeper:
    def __init__(self, database: Database) -> None:
        self._db = database
        self._waiting: list[_Waiting] = []
        self._writing: asyncio.Task[None] | None = None

    async def renew(self, request: requests.HeartbeatRun) -> Run:
        """The run with its lease extended by `lease_us` from now; LeaseLost if the
        worker no longer holds it."""
        renewal = LeaseRenewal(request.run_id, request.worker_id, now_us() + request.lease_us)
        answer: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(renewal, answer))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_batches())
        return await answer

    async def _write_batches(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(LINGER_S)
                batch = self._next_batch()
                renewals = [waiting.renewal for waiting in batch]
                outcomes: list[Run | Exception]
                try:
                    outcomes = [*await self._db.write(partial(_renew, renewals))]
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
            if len(batch) < MAX_BATCH and waiting.renewal.run_id not in runs:
                batch.append(waiting)
                runs.add(waiting.renewal.run_id)
            else:
                later.append(waiting)
        self._waiting = later
        return batch


def _renew(renewals: list[LeaseRenewal], unit: UnitOfWork) -> list[Run | LeaseLost]:
    """Renew what can be; say why for the rest. Refusals are returned, not raised: the
    transaction wrote the renewals before it knew of them (see GroupWriter)."""
    renewed = unit.renew_leases(renewals)
    lost = [renewal.run_id for renewal in renewals if renewal.run_id not in renewed]
    now = {run.run_id: run for run in unit.runs.get_many(lost)} if lost else {}
    return [
        renewed.get(renewal.run_id)
        or _lease_lost(now.get(renewal.run_id), renewal.run_id, renewal.worker_id)
        for renewal in renewals
    ]


def _lease_lost(run: Run | None, run_id: str, worker_id: str) -> LeaseLost:
    """Why `worker_id` does not hold the run (as `run` is now)."""
    if run is None:
        return LeaseLost(run_id, worker_id, "the run was deleted")
    if run.status is not RunStatus.RUNNING:
        return LeaseLost(run_id, worker_id, f"the run is {run.status.value}")
    if run.worker_id != worker_id:
        return LeaseLost(run_id, worker_id, "the run was claimed again by another worker")
    return LeaseLost(run_id, worker_id, "the run was claimed again meanwhile")


def held(run: Run | None, run_id: str, worker_id: str) -> Run:
    """The run, if `worker_id` still holds its claim; LeaseLost otherwise."""
    if run is None or run.status is not RunStatus.RUNNING or run.worker_id != worker_id:
        raise _lease_lost(run, run_id, worker_id)
    return run
