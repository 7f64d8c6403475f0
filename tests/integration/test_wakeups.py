"""Claim wake-ups when a long-polling claim is cancelled (its caller went away) and,
before its task runs again to leave the line, the server drains or a run is rung for:
the cancelled claim is passed over, never answered twice."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from runplane.server.store.database import Database
from runplane.server.wakeups import ClaimScope, ClaimWakeups

SCOPE = ClaimScope(None, ())


async def _nothing(surely: bool) -> tuple[str | None, int | None]:
    return None, None


Look = Callable[[bool], Awaitable[tuple[str | None, int | None]]]


async def _parked(wakeups: ClaimWakeups, look: Look = _nothing) -> asyncio.Task[str | None]:
    task = asyncio.ensure_future(wakeups.until_found(look, SCOPE, wait_s=30))
    await asyncio.sleep(0.05)  # it looked, found nothing and waits in line
    return task


def test_drain_passes_over_a_claim_cancelled_in_line(database: Database) -> None:
    async def scenario() -> None:
        wakeups = ClaimWakeups(database)
        cancelled = await _parked(wakeups)
        waiting = await _parked(wakeups)
        cancelled.cancel()  # its future is cancelled now; its task runs later
        wakeups.drain()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert await waiting is None

    asyncio.run(scenario())


def test_a_ring_skips_a_claim_cancelled_in_line(database: Database) -> None:
    async def scenario() -> None:
        wakeups = ClaimWakeups(database)
        looks = 0

        async def counted(surely: bool) -> tuple[str | None, int | None]:
            nonlocal looks
            looks += 1
            return None, None

        cancelled = await _parked(wakeups)
        waiting = await _parked(wakeups, look=counted)
        cancelled.cancel()
        wakeups.ring()  # must reach the claim still waiting, not the cancelled one
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert looks == 2  # rung, it looked again (found nothing) and waits on
        wakeups.drain()
        assert await waiting is None

    asyncio.run(scenario())
