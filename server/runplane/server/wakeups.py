"""Claim wake-ups: when a long-polling ClaimRun looks for a run again.

A claim that found nothing waits here, in line, until something may have made a run
claimable:

- this process committed a change that may free one (anything but a claim), heard
  through `Database.on_commit`;
- another replica committed one, heard through its PostgreSQL notification
  (`replica_committed`, which the change listener also calls after reconnecting);
- the earliest delayed run falls due (the look says when);
- on a database that replicas share, a look every REPLICA_POLL_S in case a
  notification was lost;
- or its wait is over.

A ring wakes one waiter, not all: a crowd of workers woken at once would all look,
and most would race for the same run. The waiter that is woken looks; if it claims
a run, it rings again (there may be more), and if it finds nothing, it passes the
same round on to the next waiter whose scope (namespaces, assistants) has not been
tried in that round, since those with the same scope would find nothing either. So
one new run costs one or two looks however many workers wait, and a run of an
assistant that only some workers take still reaches one of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeVar

from runplane.server.records import Change, RunStatus, now_us
from runplane.server.store.database import Database

T = TypeVar("T")

Look = Callable[[], Awaitable[tuple[T | None, int | None]]]
"""One look: what it found, or None and when the next delayed run is due (if any)."""

REPLICA_POLL_S = 5.0
"""Replicas ring each other through their notifications, and the listener rings after
every reconnect; this look is only a last resort."""

_OWN_MEMORY = 4096
"""Revisions of this process's recent commits, whose notifications need no ring."""


@dataclass(eq=False)
class _Round:
    """One ring's search for a waiter that can use it."""

    tried: set[Hashable] = field(default_factory=set)


@dataclass(eq=False)
class _Waiter:
    scope: Hashable
    woken: asyncio.Future[_Round]


class ClaimWakeups:
    def __init__(self, database: Database) -> None:
        self._waiting: list[_Waiter] = []
        self._poll_s = REPLICA_POLL_S if database.shared else None
        self._own: dict[int, None] = {}
        """Revisions this process committed lately, oldest first: each rang (or had
        nothing to ring for) when it committed, so its notification is not rung again."""
        database.on_commit(self._committed)

    async def until_found(self, look: Look[T], scope: Hashable, wait_s: float) -> T | None:
        """Call `look` until it finds something or `wait_s` seconds have passed, looking
        again only when woken. `scope` tells which rings one look has used up: waiters
        of an equal scope would find the same."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        held: _Round | None = None  # the round that woke this claim, until it has looked
        while True:
            waiter = self._park(scope)
            try:
                found, next_due = await look()
            except BaseException:
                self._hand_on(self._leave(waiter), held)
                raise
            if found is not None:
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
                await asyncio.wait({waiter.woken}, timeout=pause)
            except BaseException:
                self._hand_on(self._leave(waiter))
                raise
            held = self._leave(waiter)

    def ring(self) -> None:
        """Something may have become claimable: wake the longest-waiting claim."""
        self._wake(_Round())

    def replica_committed(self, revision: int) -> None:
        """A commit notification: `revision`, or 0 when unknown (after a reconnect)."""
        if revision in self._own:
            del self._own[revision]
        else:
            self.ring()  # another replica's: it may have freed a run

    def _committed(self, changes: list[Change]) -> None:
        """This process committed `changes`: ring unless each is a run now RUNNING (a
        claim frees nothing)."""
        for change in changes:
            self._own[change.run.revision] = None
        while len(self._own) > _OWN_MEMORY:
            del self._own[next(iter(self._own))]
        if any(change.run.status is not RunStatus.RUNNING for change in changes):
            self.ring()

    def _park(self, scope: Hashable) -> _Waiter:
        """Join the line before looking, so a ring during the look is not missed."""
        waiter = _Waiter(scope, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        return waiter

    def _leave(self, waiter: _Waiter) -> _Round | None:
        """Leave the line; the round the waiter was woken with, if it was."""
        if waiter in self._waiting:
            self._waiting.remove(waiter)
            return None
        return waiter.woken.result()

    def _pass_on(self, round_: _Round, tried: Hashable | None) -> None:
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

    def _wake(self, round_: _Round) -> None:
        for waiter in self._waiting:
            if waiter.scope not in round_.tried:
                self._waiting.remove(waiter)
                waiter.woken.set_result(round_)
                return
