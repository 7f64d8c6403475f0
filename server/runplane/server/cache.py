"""Runs recently read or written, for GetRun on a single-process (SQLite) store.

On SQLite every write goes through this process's writer, which hands each
committed change to `apply`, and each lease renewed in place to `renewed`, before
the writer's caller is answered; so the cache is never behind a write anyone has
seen. A lookup still costs a SQLite read when it misses. PostgreSQL replicas write
behind each other's backs: no cache there.
"""

from __future__ import annotations

from collections import OrderedDict

from runplane.server.records import Change, ChangeType, Run


class RunCache:
    def __init__(self, capacity: int = 50_000) -> None:
        self._capacity = capacity
        self._runs: OrderedDict[str, Run] = OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, run_id: str) -> Run | None:
        run = self._runs.get(run_id)
        if run is not None:
            self._runs.move_to_end(run_id)
        return run

    def remember(self, run: Run) -> None:
        """Keep `run` unless a later revision of it is already kept."""
        kept = self._runs.get(run.run_id)
        if kept is not None and kept.revision >= run.revision:
            return
        self._runs[run.run_id] = run
        self._runs.move_to_end(run.run_id)
        if len(self._runs) > self._capacity:
            self._runs.popitem(last=False)

    def apply(self, changes: list[Change]) -> None:
        for change in changes:
            if change.type is ChangeType.DELETED:
                self._runs.pop(change.run.run_id, None)
            else:
                self.remember(change.run)

    def renewed(self, runs: list[Run]) -> None:
        """Leases extended in place: the runs keep their revision, with a new lease."""
        for run in runs:
            kept = self._runs.get(run.run_id)
            if kept is not None and kept.revision <= run.revision:
                self._runs[run.run_id] = run
