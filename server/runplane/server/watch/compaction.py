"""Retention: the event log keeps `--event-retention` of history, and no more.

Every replica runs a compactor (a `PeriodicTask` over `compact_now`); on PostgreSQL an
advisory lock lets one at a time work, the others skip that round. Each batch is its
own short transaction, so writers (who need the same counter row) wait at most one
batch.
"""

from __future__ import annotations

import logging

from runplane.server.records import now_us
from runplane.server.store.database import Database
from runplane.server.store.event_log import LogState

log = logging.getLogger(__name__)

BATCH_SIZE = 1000


class Compactor:
    def __init__(self, database: Database, retention: float) -> None:
        self._db = database
        self._retention_us = int(retention * 1_000_000)
        self.compact_revision = 0
        """Where the log began after this replica's last round (0 before its first)."""

    async def compact_now(self) -> LogState | None:
        """One round: batches until nothing older than the retention is left.

        Returns the state after, or None if another replica holds the lock.
        """
        cutoff = now_us() - self._retention_us
        while True:
            done = await self._db.write(lambda unit: unit.log.compact(cutoff, BATCH_SIZE))
            if done is None:
                return None
            if done.removed < BATCH_SIZE:
                self.compact_revision = done.state.compact_revision
                log.debug(
                    "event log compacted", extra={"compact_revision": done.state.compact_revision}
                )
                return done.state
