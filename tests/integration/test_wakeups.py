"""Claim wake-ups: when a long-polling claim is cancelled (its caller went away) and,
before its task runs again to leave the line, the server drains or a run is rung for,
the cancelled claim is passed over, never answered twice; a run created while claims
wait is claimed in the commit that creates it, waking no other claim; a run that no
claim took in that commit is rung for there; and while the last look in a scope found
a run, the next look there skips its read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from runplane.server import requests
from runplane.server.access import Access
from runplane.server.claims import ClaimService
from runplane.server.pages import PageTokens
from runplane.server.policy import ANONYMOUS, Role
from runplane.server.runs import RunService
from runplane.server.store.database import Database
from runplane.server.store.migrate import upgrade
from runplane.server.validation import Limits
from runplane.server.wakeups import BACKLOG_SCOPES, ClaimScope, ClaimWakeups
from tests.support.databases import database_url

SCOPE = ClaimScope(None, ())


async def _nothing(surely: bool) -> tuple[str | None, int | None]:
    return None, None


Look = Callable[[bool], Awaitable[tuple[str | None, int | None]]]


class ToldLooks:
    """A look that finds `found` (or nothing), keeping for each call, in order, whether
    it was told it is all but sure to find a run: how often it looked is `len(told)`."""

    def __init__(self) -> None:
        self.told: list[bool] = []
        self.found: str | None = None

    async def __call__(self, surely: bool) -> tuple[str | None, int | None]:
        self.told.append(surely)
        return self.found, None


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
        looks = ToldLooks()
        cancelled = await _parked(wakeups)
        waiting = await _parked(wakeups, look=looks)
        cancelled.cancel()
        wakeups.ring()  # must reach the claim still waiting, not the cancelled one
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert len(looks.told) == 2  # rung, it looked again (found nothing) and waits on
        wakeups.drain()
        assert await waiting is None

    asyncio.run(scenario())


def test_a_new_run_is_rung_for_at_its_commit_when_no_claim_took_it_there(
    database: Database,
) -> None:
    """A claim that starts waiting after a create went to the writer was not there to
    be woken before it; the create's commit rings for it."""

    async def scenario() -> int:
        wakeups = ClaimWakeups(database)
        looks = ToldLooks()
        # Without wake-ups, the service rings nobody before writing: as if the claim
        # came in just after the create.
        runs = RunService(database, PageTokens(b"k" * 32))
        waiting = await _parked(wakeups, look=looks)
        await runs.create(requests.CreateRun("a", access=Access(ANONYMOUS, Role.ADMIN)))
        await asyncio.sleep(0.05)
        wakeups.drain()
        assert await waiting is None
        return len(looks.told)

    assert asyncio.run(scenario()) == 2  # parked after one look, rung for the new run


class CommitCounter:
    """A TransactionTimer that keeps the size of every write group committed, and
    counts the reads."""

    def __init__(self) -> None:
        self.groups: list[int] = []
        self.reads = 0

    def read(self, seconds: float) -> None:
        self.reads += 1

    def write(self, seconds: float, cpu_seconds: float, group_size: int) -> None:
        self.groups.append(group_size)


@pytest.fixture
def counted(backend: str, tmp_path: Path) -> Iterator[tuple[Database, CommitCounter]]:
    commits = CommitCounter()
    with database_url(backend, tmp_path) as url:
        database = Database(url, timer=commits)
        upgrade(database.engine)
        try:
            yield database, commits
        finally:
            database.dispose()


def test_a_run_created_while_claims_wait_is_claimed_in_its_own_commit(
    counted: tuple[Database, CommitCounter],
) -> None:
    """Two claims wait; each new run is claimed by one of them in the create's commit
    (one commit of two transactions), and the other claim is not woken to look in
    vain: no further commit."""
    database, commits = counted
    access = Access(ANONYMOUS, Role.ADMIN)
    wakeups = ClaimWakeups(database)
    runs = RunService(database, PageTokens(b"k" * 32), wakeups=wakeups)
    claims = ClaimService(database, wakeups, Limits(), max_attempts=3)
    creates = 5

    def waiting_claim(worker: str) -> asyncio.Task[object]:
        request = requests.ClaimRun(worker, ("a",), 10**7, 30.0, access=access)
        return asyncio.ensure_future(claims.claim(request))

    async def scenario() -> list[tuple[str, str]]:
        waiting = [waiting_claim("w1"), waiting_claim("w2")]
        await asyncio.sleep(0.1)  # both looked, found nothing, and wait in line
        claimed = []
        for _ in range(creates):
            commits.groups.clear()
            run = await runs.create(requests.CreateRun("a", access=access))
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            (task,) = done
            taken = task.result()
            assert taken is not None
            claimed.append((run.run_id, getattr(taken, "run_id", "")))
            await asyncio.sleep(0.1)  # time for a needless look to commit
            assert commits.groups == [2], (len(claimed), commits.groups)
            worker = waiting.index(task)
            waiting[worker] = waiting_claim(f"w{worker + 1}")
            await asyncio.sleep(0.05)
        wakeups.drain()
        await asyncio.gather(*waiting)
        return claimed

    claimed = asyncio.run(scenario())
    assert all(created == taken for created, taken in claimed)


def test_a_look_after_one_that_found_a_run_in_its_scope_is_told_it_is_all_but_sure(
    database: Database,
) -> None:
    other = ClaimScope(None, ("b",))

    async def scenario() -> list[bool]:
        wakeups = ClaimWakeups(database)
        looks = ToldLooks()

        async def look_once(scope: ClaimScope, found: str | None) -> None:
            looks.found = found
            assert await wakeups.until_found(looks, scope, wait_s=0) == found

        await look_once(SCOPE, "r1")  # nothing known: unsure
        await look_once(SCOPE, "r2")  # the last look here found one: sure
        await look_once(other, None)  # another scope learns nothing from that
        await look_once(SCOPE, None)  # still sure, but finds nothing...
        await look_once(SCOPE, None)  # ...so the next is unsure again
        return looks.told

    assert asyncio.run(scenario()) == [False, True, False, True, False]


def test_scopes_with_a_backlog_are_remembered_up_to_a_bound(database: Database) -> None:
    """A caller naming ever new assistants cannot grow the server's memory: past
    BACKLOG_SCOPES, the scope that found a run longest ago is forgotten."""

    async def scenario() -> list[bool]:
        wakeups = ClaimWakeups(database)
        looks = ToldLooks()
        looks.found = "r"

        async def fill(count: int, prefix: str) -> None:
            for index in range(count):
                await wakeups.until_found(looks, ClaimScope(None, (f"{prefix}{index}",)), 0)

        await wakeups.until_found(looks, SCOPE, wait_s=0)
        await fill(BACKLOG_SCOPES - 1, "x")
        told = len(looks.told)
        await wakeups.until_found(looks, SCOPE, wait_s=0)  # still remembered
        await fill(BACKLOG_SCOPES, "y")
        await wakeups.until_found(looks, SCOPE, wait_s=0)  # forgotten by now
        return [looks.told[told], looks.told[-1]]

    assert asyncio.run(scenario()) == [True, False]


def test_claims_under_a_backlog_skip_the_read_before_the_writer(
    counted: tuple[Database, CommitCounter],
) -> None:
    """The first claim reads whether a run is there before it takes the writer's time;
    the claims after it, while each finds a run, go to the writer at once; one that
    finds none brings the read back."""
    database, commits = counted
    access = Access(ANONYMOUS, Role.ADMIN)
    wakeups = ClaimWakeups(database)
    runs = RunService(database, PageTokens(b"k" * 32), wakeups=wakeups)
    claims = ClaimService(database, wakeups, Limits(), max_attempts=3)
    request = requests.ClaimRun("w", ("a",), 10**7, 0.0, access=access)

    async def scenario() -> list[tuple[bool, int]]:
        for _ in range(3):
            await runs.create(requests.CreateRun("a", access=access))
        seen = []
        for _ in range(5):
            reads = commits.reads
            claimed = await claims.claim(request)
            seen.append((claimed is not None, commits.reads - reads))
        return seen

    assert asyncio.run(scenario()) == [(True, 1), (True, 0), (True, 0), (False, 0), (False, 1)]
