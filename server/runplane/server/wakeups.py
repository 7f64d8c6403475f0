"""Claim wake-ups: when a long-polling ClaimRun looks for a run again.

A claim that found nothing waits here, in line, until something may have made a run
claimable:

- this process committed a change that may free one (a new run, a run that ended or
  went back in line; not a claim or an edit), heard through `Database.on_commit`;
- another replica committed one, heard through its PostgreSQL notification (the
  change listener rings after each reconnection too);
- the earliest delayed run falls due (the look says when);
- on a database that replicas share, a look every REPLICA_POLL_S in case a
  notification was lost;
- or its wait is over, or the server drains (`drain`): then it returns empty at once,
  and so does every claim that comes after.

A ring wakes one waiter, not all: a crowd of workers woken at once would all look,
and most would race for the same run. The waiter that is woken looks; if it claims
a run, it rings again (there may be more), and if it finds nothing, it passes the
same round on to the next waiter whose scope has not been tried in that round, since
those with the same scope would find nothing either. So one new run costs one or two
looks however many workers wait, and a run of an assistant that only some workers
take still reaches one of them.

A new run rings for its own queue (namespace and assistant): only a waiter whose
scope takes that queue is woken, and as it is all but sure to find the run, its look
can skip the read that would tell it so (`until_found` tells the look). If it finds
nothing after all (the run waits behind its thread's), the waiters the round goes on
to look as usual.

A claim's first look skips that read too while the last look in its scope found a run:
under a backlog the read would only say yes, a round trip on the way to every claim.
The first look that finds nothing brings the read back. A look woken by a ring goes by
the ring alone: after a claim, the ring for more wakes the next waiter, which would
otherwise take the writer's time whenever the claim took the last run.

A new run rings before its create is written, not after (`creating`), and if that
woke a claim, the database holds the create until the claim has looked
(`Database.gather_writes`): both commit together, and the run is claimed one commit
sooner. A run claimed in the commit that created it needs no ring at its commit; any
other new run is rung for there as well, so a create whose claim did not commit with
it (a refusal, a run behind its thread's) is never missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from runplane.server.records import Change, ChangeType, NamespaceSet, RunStatus, now_us
from runplane.server.store.database import Database

T = TypeVar("T")

Look = Callable[[bool], Awaitable[tuple[T | None, int | None]]]
"""One look, told whether it is all but sure to find a run (it may then skip the read
that would tell it so): what it found, or None and when the next delayed run is due
(if any)."""

BACKLOG_SCOPES = 256
"""Scopes whose last look found a run, remembered at most; the longest unused go first."""

REPLICA_POLL_S = 5.0
"""Replicas ring each other through their notifications, and the listener rings after
every reconnect; this look is only a last resort."""


@dataclass(frozen=True, slots=True)
class ClaimScope:
    """What a claim takes: runs of these assistants (any, if none) in these namespaces
    (any, if None; as its access gives them)."""

    namespaces: NamespaceSet
    assistant_ids: tuple[str, ...]

    def takes(self, queue: tuple[str, str]) -> bool:
        namespace, assistant_id = queue
        return (self.namespaces is None or namespace in self.namespaces) and (
            not self.assistant_ids or assistant_id in self.assistant_ids
        )


@dataclass(eq=False)
class _Round:
    """One ring's search for a waiter that can use it."""

    queue: tuple[str, str] | None = None
    """The (namespace, assistant) of the run rung for, if known: only waiters that
    take it may use the ring."""
    tried: set[ClaimScope] = field(default_factory=set)


@dataclass(eq=False)
class _Waiter:
    scope: ClaimScope
    woken: asyncio.Future[_Round | None]
    """The round that woke it; None when its time was up or the server drains."""


class ClaimWakeups:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._waiting: list[_Waiter] = []
        self._backlogged: dict[ClaimScope, None] = {}
        """Scopes whose last look found a run, least recently found first."""
        self._draining = False
        self._poll_s = REPLICA_POLL_S if database.shared else None
        database.on_commit(self._committed)

    async def until_found(self, look: Look[T], scope: ClaimScope, wait_s: float) -> T | None:
        """Call `look` until it finds something or `wait_s` seconds have passed, looking
        again only when woken; None as soon as the server drains."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        held: _Round | None = None  # the round that woke this claim, until it has looked
        while not self._draining:
            waiter = self._park(scope)
            try:
                # Woken by a ring, it trusts the ring; else the last look in its scope.
                sure = _surely(held) if held is not None else scope in self._backlogged
                found, next_due = await look(sure)
            except BaseException:
                self._hand_on(self._leave(waiter), held)
                raise
            self._backlogged.pop(scope, None)
            if found is not None:
                self._backlogged[scope] = None
                if len(self._backlogged) > BACKLOG_SCOPES:
                    del self._backlogged[next(iter(self._backlogged))]
                self._leave(waiter)
                self.ring()  # there may be more: let the next waiter look
                return found
            if held is not None:
                self._pass_on(held, scope)
            held = None
            if waiter.woken.done():
                held = waiter.woken.result()  # rung while looking: look again
                continue
            pause = deadline - loop.time()
            if pause <= 0:
                self._leave(waiter)
                return None
            if next_due is not None:
                pause = min(pause, max(0.0, (next_due - now_us()) / 1e6))
            if self._poll_s is not None:
                pause = min(pause, self._poll_s)
            try:
                held = await self._sleep(waiter, pause)
            except BaseException:
                self._hand_on(self._leave(waiter))
                raise
        return None

    def drain(self) -> None:
        """The server is stopping: every waiting claim returns empty now, and every
        later one at once, so that no long poll holds up the shutdown."""
        self._draining = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.woken.done():  # else cancelled, its claim not yet out of line
                waiter.woken.set_result(None)

    def ring(self, queue: tuple[str, str] | None = None) -> None:
        """Something may have become claimable (a run of `queue`, if given): wake the
        longest-waiting claim that could take it."""
        self._wake(_Round(queue))

    def creating(self, namespace: str, assistant_id: str, start_after: int | None) -> None:
        """A run of this queue is about to be written: if it may be claimed at once,
        ring now, and if that woke a claim, gather the writes until it has looked, so
        that its claim commits with the create."""
        claimable = start_after is None or start_after <= now_us()
        if claimable and self._wake(_Round((namespace, assistant_id))):
            self._database.gather_writes()

    def _committed(self, changes: list[Change]) -> None:
        """This process committed `changes`: ring for each that may have freed a run,
        but not for a new run claimed in the same commit."""
        claimed = {change.run.run_id for change in changes if _claims(change)}
        for change in changes:
            if change.type is ChangeType.CREATED:
                if change.run.run_id not in claimed:
                    self.ring((change.run.namespace, change.run.assistant_id))
            elif _may_free_a_run(change):
                self.ring()  # the next run of its thread: of any assistant

    async def _sleep(self, waiter: _Waiter, pause: float) -> _Round | None:
        """Wait in line until rung, or until `pause` seconds have passed (then None).
        The future itself is awaited: no task or future in between to delay a ring."""
        timer = asyncio.get_running_loop().call_later(pause, self._time_up, waiter)
        try:
            return await waiter.woken
        finally:
            timer.cancel()

    def _time_up(self, waiter: _Waiter) -> None:
        if waiter in self._waiting and not waiter.woken.done():
            self._waiting.remove(waiter)
            waiter.woken.set_result(None)

    def _park(self, scope: ClaimScope) -> _Waiter:
        """Join the line before looking, so a ring during the look is not missed."""
        waiter = _Waiter(scope, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        return waiter

    def _leave(self, waiter: _Waiter) -> _Round | None:
        """Leave the line; the round the waiter was woken with, if it was."""
        if waiter in self._waiting:
            self._waiting.remove(waiter)
            return None
        return None if waiter.woken.cancelled() else waiter.woken.result()

    def _pass_on(self, round_: _Round, tried: ClaimScope | None) -> None:
        """A waiter looked and found nothing for `tried` in this round (or, None, left
        without looking): let a waiter with another scope look."""
        if tried is not None:
            round_.tried.add(tried)
        self._wake(round_)

    def _hand_on(self, *rounds: _Round | None) -> None:
        """A claim that gives up (cancelled, failed) passes on what woke it, unused."""
        for round_ in rounds:
            if round_ is not None:
                self._pass_on(round_, None)

    def _wake(self, round_: _Round) -> bool:
        """Wake the first waiter in line that may use the round; whether there was one."""
        for waiter in self._waiting:
            if waiter.woken.done():
                continue  # its claim was cancelled and leaves the line when it next runs
            if waiter.scope not in round_.tried and (
                round_.queue is None or waiter.scope.takes(round_.queue)
            ):
                self._waiting.remove(waiter)
                waiter.woken.set_result(round_)
                return True
        return False


def _surely(round_: _Round | None) -> bool:
    """Whether the round that woke a waiter is all but sure to have work for it: a new
    run in its scope that nobody looked for yet."""
    return round_ is not None and round_.queue is not None and not round_.tried


def _claims(change: Change) -> bool:
    """Whether `change` is the claim of a run that was waiting to be claimed."""
    before = change.previous
    return (
        before is not None
        and before.status is RunStatus.PENDING
        and change.run.status is RunStatus.RUNNING
    )


def _may_free_a_run(change: Change) -> bool:
    """Whether a change may have made a run claimable: a deleted run, or one whose
    status changed to anything but RUNNING (its thread, or the head of its line, may
    be free now). A claim or an edit frees nothing."""
    before = change.previous
    if change.type is not ChangeType.UPDATED or before is None:
        return True
    return before.status is not change.run.status and change.run.status is not RunStatus.RUNNING
