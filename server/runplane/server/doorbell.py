"""Where long-polling claims wait for a run to become claimable.

A ring wakes one waiter, not all: a crowd of workers woken at once would all look,
and most would race for the same run. The waiter that is woken looks; if it
claims a run, it rings again (there may be more), and if it finds nothing, it
passes the same round on to the next waiter whose assistant filter has not been
tried in that round (those with the same filter would find nothing too). So one
new run costs one or two looks however many workers wait, and a run of an
assistant that only some workers take still reaches one of them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from runplane.server.records import Change, RunStatus

Filter = tuple[str, ...]


@dataclass(eq=False)
class Round:
    """One ring's search for a waiter that can use it."""

    tried: set[Filter] = field(default_factory=set)


@dataclass(eq=False)
class Waiter:
    filter: Filter
    woken: asyncio.Future[Round]


class Doorbell:
    def __init__(self) -> None:
        self._waiting: list[Waiter] = []

    def park(self, assistant_filter: Filter) -> Waiter:
        """Join the line before looking, so a ring during the look is not missed."""
        waiter = Waiter(assistant_filter, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        return waiter

    def leave(self, waiter: Waiter) -> Round | None:
        """Leave the line; the round the waiter was woken with, if it was."""
        if waiter in self._waiting:
            self._waiting.remove(waiter)
            return None
        return waiter.woken.result()

    def ring(self) -> None:
        """Something may have become claimable: wake the longest-waiting claim."""
        self._wake(Round())

    def ring_all(self) -> None:
        """Wake every waiting claim (the server is stopping)."""
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.woken.set_result(Round())

    def ring_for(self, changes: list[Change]) -> None:
        """Ring after a commit that may free work: anything but a run that is now RUNNING
        (a claim or a heartbeat frees nothing)."""
        if any(change.run.status is not RunStatus.RUNNING for change in changes):
            self.ring()

    def pass_on(self, round_: Round, tried: Filter | None) -> None:
        """A waiter looked and found nothing for `tried` in this round (or, None, left
        without looking): let a waiter with another filter look."""
        if tried is not None:
            round_.tried.add(tried)
        self._wake(round_)

    def _wake(self, round_: Round) -> None:
        for waiter in self._waiting:
            if waiter.filter not in round_.tried:
                self._waiting.remove(waiter)
                waiter.woken.set_result(round_)
                return
