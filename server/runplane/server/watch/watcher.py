"""One watch stream's place in the hub: what it selects, how far it got, what waits.

The hub hands every live watcher each new slice of the event log, in revision order;
the watcher keeps the events it selects in a bounded queue for its stream to send. A
watcher whose queue is full refuses the slice: the hub drops it from the live set and
its stream catches up from the event log instead, then rejoins. So a slow consumer
costs at most `max_buffered` events of memory, never an unbounded backlog.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runplane.server.errors import RunplaneError
from runplane.server.records import RunEvent

Selector = Callable[[RunEvent], bool]

DEFAULT_MAX_BUFFERED = 1024


@dataclass(slots=True)
class Delivery:
    """What a stream sends next: events in revision order, and the revision up to which
    every selected event has now been sent. With no events it is a bookmark.
    """

    events: list[RunEvent]
    revision: int


class Watcher:
    """The hub's side of one stream. Lives on the event loop; never touched from threads."""

    def __init__(
        self, selects: Selector, position: int, max_buffered: int = DEFAULT_MAX_BUFFERED
    ) -> None:
        self.selects = selects
        self.position = position
        """Every event up to here was queued or skipped; the stream goes on from here."""
        self.live = False
        """Set by the hub while it pushes slices to this watcher."""
        self.ended: RunplaneError | None = None
        """Why the hub ended this watch (shutdown, or history it lost), if it did."""
        self._queue: deque[Delivery] = deque()
        self._buffered = 0
        self._max_buffered = max_buffered
        self._wakeup = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    def offer(self, events: Sequence[RunEvent], upto: int) -> bool:
        """Take the slice of the log after `position` up to `upto`; False when it does not
        fit: the watcher then stays where it was and must catch up from the log.
        """
        if upto <= self.position:
            return True
        after = self.position
        chosen = [event for event in events if event.revision > after and self.selects(event)]
        if chosen:
            if self._buffered + len(chosen) > self._max_buffered:
                return False
            self._queue.append(Delivery(chosen, upto))
            self._buffered += len(chosen)
            self._wakeup.set()
        elif self._queue:
            self._queue[-1].revision = upto
        self.position = upto
        return True

    def take(self) -> Delivery | None:
        """The oldest queued delivery, if any."""
        if not self._queue:
            return None
        delivery = self._queue.popleft()
        self._buffered -= len(delivery.events)
        return delivery

    @property
    def buffered(self) -> int:
        """Events queued and not yet taken by the stream."""
        return self._buffered

    def wake(self) -> None:
        self._wakeup.set()

    def end(self, reason: RunplaneError) -> None:
        """Make the stream finish with `reason` once it looks again."""
        if self.ended is None:
            self.ended = reason
        self._wakeup.set()

    async def wait(self, until: float) -> None:
        """Until something is queued, the hub changed this watcher's state, or the loop's
        clock reaches `until` (the stream's next bookmark).

        One timer per watcher, re-armed only once it has fired: a stream that sends
        often moves its bookmark later without paying for a timer per message (the old
        timer wakes it early once, and it waits again).
        """
        if self._queue or self.ended is not None:
            return
        loop = asyncio.get_running_loop()
        if self._timer is None or self._timer.when() <= loop.time():
            self._timer = loop.call_at(until, self._wakeup.set)
        await self._wakeup.wait()
        self._wakeup.clear()

    def close(self) -> None:
        """The stream is over: drop its timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
