"""One way to run background work: a step repeated every interval until the server stops.

The sweeper, the compactor, the watch hub's tailer and the cross-replica change listener
are each a `PeriodicTask`. A step that fails is logged once per spell of failures (with
its traceback only if the failure is not a RunplaneError, such as StoreUnavailable,
which the store has explained already), the task backs off while it keeps failing, and
says so once it works again; `stop` cancels it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from runplane.server.errors import RunplaneError

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[object]]

FIRST_BACKOFF = 0.2
MAX_BACKOFF = 5.0


class PeriodicTask:
    """Runs `step` every `interval` seconds (back to back when 0), or sooner when woken."""

    def __init__(self, name: str, step: Step, *, interval: float) -> None:
        self.name = name
        self._step = step
        self._interval = interval
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        """Steps that failed in a row."""

    def start(self) -> None:
        """Begin: the first step comes after one interval, or when woken."""
        self._task = asyncio.create_task(self._run(), name=f"runplane-{self.name}")

    def wake(self) -> None:
        """Run the next step now rather than at the end of the interval (a backoff from
        failures is not cut short)."""
        self._woken.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            if self.failures:
                await asyncio.sleep(min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self.failures - 1)))
            if self._interval > 0 and not self._woken.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._woken.wait()
            self._woken.clear()
            try:
                await self._step()
            except Exception as error:
                self._failed(error)
            else:
                if self.failures:
                    log.info(
                        "background task recovered",
                        extra={"task": self.name, "failures": self.failures},
                    )
                self.failures = 0

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        if self.failures > 1:
            return  # said once already; quiet until it recovers
        log.warning(
            "background task failed; retrying with backoff",
            extra={"task": self.name, "error": type(error).__name__},
            exc_info=None if isinstance(error, RunplaneError) else error,
        )
