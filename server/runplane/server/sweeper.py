"""Turns stuck RUNNING runs into TIMEOUT, back into PENDING, or into ERROR.

- past its `timeout` (counted from `started_at`, the first claim): TIMEOUT;
- lease expired: a failed attempt (`retries.after_failure`): PENDING again, keeping
  its place at the head of its thread's line, after its retry policy's backoff if it
  has one, at once if not; ERROR once it has been claimed as often as its policy, or
  else `max_attempts`, allows.

Each sweep is one ordinary revisioned transaction; one replica sweeps at a time. It
also moves the delayed thread heads that fell due into the ready line, where claims
find them in priority order (`ThreadHeads.promote_due`). The server runs
`Sweeper.sweep` as a `PeriodicTask` every SWEEP_INTERVAL_S.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from runplane.server import retries
from runplane.server.records import Change, ChangeType, Run, RunStatus, now_us
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
_BATCH = 200
_PROMOTIONS = 5000


def _settle(run: Run, now: int, max_attempts: int) -> Run:
    """The state a stuck run moves to."""
    started, limit = run.started_at, run.timeout
    if started is not None and limit is not None and started + limit < now:
        return run.ended(
            RunStatus.TIMEOUT, now, error=f"ran longer than its timeout of {limit / 1e6:g}s"
        )
    allowed = retries.allowed_attempts(run, max_attempts)
    error = f"lease of worker {run.worker_id} expired on attempt {run.attempt} of {allowed}"
    return retries.after_failure(run, now, error, max_attempts)


SweepListener = Callable[[list[Run]], None]
"""Told of each completed pass and the runs it settled (metrics)."""


class Sweeper:
    def __init__(
        self, database: Database, max_attempts: int, on_sweep: SweepListener | None = None
    ) -> None:
        self._db = database
        self._max_attempts = max_attempts
        self._on_sweep = on_sweep

    async def sweep(self) -> list[Run]:
        """One pass; returns the runs it changed."""

        def settle_stuck(unit: UnitOfWork) -> list[Run]:
            runs = unit.runs
            if not runs.try_lock_sweeper():
                return []
            now = now_us()
            unit.heads.promote_due(now, _PROMOTIONS)
            changes = [
                Change(ChangeType.UPDATED, _settle(run, now, self._max_attempts), previous=run)
                for run in runs.stuck(now, _BATCH)
            ]
            return unit.apply(changes)

        settled = await self._db.write(settle_stuck)
        if self._on_sweep is not None:
            self._on_sweep(settled)
        for run in settled:
            log.info(
                "swept stuck run",
                extra={
                    "run_id": run.run_id,
                    "status": run.status.value,
                    "attempt": run.attempt,
                },
            )
        return settled
