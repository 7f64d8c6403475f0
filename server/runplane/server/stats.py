"""The operator's overview: how deep each queue is, how many runs are inflight, how many
watches are open.

Queues and run counts are read from the store in one snapshot (so every replica of a
shared database gives the same figures); open watches are this replica's own. GetStats
reads them for the namespaces its caller may read; the queue gauges read them for every
namespace, on a timer rather than per scrape (`Telemetry.watch_queues`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from runplane.server import requests
from runplane.server.records import NamespaceSet, QueueCount, RunCount, now_us
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import UnitOfWork


@dataclass(frozen=True, slots=True)
class Stats:
    queues: list[QueueCount]
    runs: list[RunCount]
    open_watches: int
    revision: int
    """The store revision the figures were read at."""
    compact_revision: int
    read_at: int
    """When they were read (microseconds): queue ages are measured from it."""


class StatsService:
    def __init__(self, database: Database, open_watches: Callable[[], int]) -> None:
        self._db = database
        self._open_watches = open_watches

    async def get(self, request: requests.GetStats) -> Stats:
        return await self.read(request.access.namespaces(request.namespace))

    async def read(self, namespaces: NamespaceSet) -> Stats:
        """The figures of `namespaces` (None: every namespace)."""

        def read(unit: UnitOfWork) -> Stats:
            state = unit.log.state()
            now = now_us()
            return Stats(
                queues=unit.heads.queues(now, namespaces),
                runs=unit.runs.inflight_counts(namespaces),
                open_watches=self._open_watches(),
                revision=state.revision,
                compact_revision=state.compact_revision,
                read_at=now,
            )

        return await self._db.read(read, snapshot=True)
