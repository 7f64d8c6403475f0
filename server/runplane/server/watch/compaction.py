"""Retention: the event log keeps `--event-retention` of history, and no more.

Every replica runs a compactor; on PostgreSQL an advisory lock lets one at a time
work, the others skip that round. Each batch is its own short transaction, so
writers (who need the same counter row) wait at most one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from runplane.server.records import now_us
from runplane.server.store.database import Database
from runplane.server.store.event_log import EventLogStore, LogState

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
DEFAULT_INTERVAL = 30.0
"""The contract asks for a round at least every 30 s."""


class Compactor:
    def __init__(
        self, database: Database, retention: float, *, interval: float = DEFAULT_INTERVAL
    ) -> None:
        self._db = database
        self._retention_us = int(retention * 1_000_000)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.compact_revision = 0
        """Where the log began after this replica's last round (0 before its first)."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="runplane-compactor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def compact_now(self) -> LogState | None:
        """One round: batches until nothing older than the retention is left.

        Returns the state after, or None if another replica holds the lock.
        """
        cutoff = now_us() - self._retention_us
        while True:
            done = await self._db.write(
                lambda conn: EventLogStore(conn, self._db.dialect).compact(cutoff, BATCH_SIZE)
            )
            if done is None:
                return None
            if done.removed < BATCH_SIZE:
                self.compact_revision = done.state.compact_revision
                return done.state

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                state = await self.compact_now()
            except Exception:
                log.warning("event log compaction failed; retrying next round", exc_info=True)
                continue
            if state is not None:
                log.debug("event log compacted", extra={"compact_revision": state.compact_revision})
