"""A wake-up for long-polling claims: rung whenever a run may have become claimable."""

from __future__ import annotations

import asyncio
import contextlib

from runplane.server.records import Change, RunStatus


class Doorbell:
    """Waiters take the `current()` event before they look, then wait on it, so a
    ring that comes between their look and their wait is never missed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event

    def ring(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def ring_for(self, changes: list[Change]) -> None:
        """Ring after a commit that may free work: anything but a run that is now RUNNING
        (a claim or a heartbeat frees nothing)."""
        if any(change.run.status is not RunStatus.RUNNING for change in changes):
            self.ring()


async def wait_for_ring(ring: asyncio.Event, seconds: float) -> None:
    """Return when `ring` is set or after `seconds`, whichever is first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await ring.wait()
