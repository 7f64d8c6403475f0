"""`--run-retention`: runs that ended longer ago than that are deleted, so that the runs
table stays bounded by what a retention's worth of traffic leaves behind.

Each round deletes the expired runs in small batches, each its own write transaction
(other writers wait at most one batch), oldest end first, through the index of ended
runs. A deleted run is a DELETED event like any other, so watchers and caches hear of
it. Every replica runs a `PeriodicTask` over `delete_expired`; a lock lets one at a time
work, the others skip that round.
"""

from __future__ import annotations

import logging

from runplane.server.records import Change, ChangeType, Run, now_us
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

BATCH_SIZE = 100


class Retention:
    def __init__(self, database: Database, retention: float) -> None:
        self._db = database
        self._retention_us = int(retention * 1_000_000)

    async def delete_expired(self) -> int:
        """One round: batches until no run that ended before the cutoff is left (those
        of threads busy at the time wait for the next round). Returns how many went."""
        cutoff = now_us() - self._retention_us

        def delete_batch(unit: UnitOfWork) -> list[Run]:
            if not unit.runs.try_lock_retention():
                return []
            expired = unit.runs.ended_before(cutoff, BATCH_SIZE)
            return unit.apply([Change(ChangeType.DELETED, run) for run in expired])

        deleted = 0
        while True:
            batch = await self._db.write(delete_batch)
            deleted += len(batch)
            if len(batch) < BATCH_SIZE:
                if deleted:
                    log.info("deleted expired runs", extra={"runs": deleted})
                return deleted
