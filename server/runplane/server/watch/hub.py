"""The watch hub: one tailer per process reads the event log and fans it out.

Every change reaches watchers the same way, whichever replica made it: the tailer
reads the log after the last revision it published, in revision order, and offers
each slice to the live watchers. The log is the only source, so the wake-ups are
mere doorbells and can be lost or repeated without harm:

- this process's commits ring it right after they commit (`Database.on_commit`);
  when they continue exactly where the hub stands (always so on SQLite, where this
  process is the only writer), their changes are published at once, without
  reading them back from the log;
- other replicas' commits ring it through PostgreSQL LISTEN/NOTIFY, and each
  (re)connection of the listener rings it too, for what was missed meanwhile;
- and the tailer (a `PeriodicTask`) looks anyway every `poll_interval`, should a
  doorbell fail.

Because revisions are handed out in commit order with no gaps, what the tailer reads
after revision H is always a contiguous prefix of what follows H.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Protocol

from runplane.server.errors import RevisionCompacted, ServerShuttingDown
from runplane.server.periodic import PeriodicTask
from runplane.server.records import Change, EventType, RunEvent
from runplane.server.store.database import Database
from runplane.server.store.event_log import LogPage, LogState
from runplane.server.watch.watcher import Watcher

log = logging.getLogger(__name__)

PAGE_SIZE = 256
"""Events per read of the log, by the tailer and by catching-up streams."""


class Follower(Protocol):
    """Kept in step with the hub: told every revision it publishes, in order."""

    def published(self, events: list[RunEvent]) -> None:
        """`events` follow the last ones told, with no gap."""

    def restarted(self, revision: int) -> None:
        """The hub goes on from `revision`, without the changes before it."""


class WatchHub:
    def __init__(self, database: Database, *, poll_interval: float = 1.0) -> None:
        self._db = database
        self._watchers: set[Watcher] = set()
        self._live: set[Watcher] = set()
        self._followers: list[Follower] = []
        self._tailer = PeriodicTask(
            "watch-tailer", self._publish_new_events, interval=poll_interval
        )
        self.head = 0
        """The last revision published to live watchers."""
        self.known = 0
        """The newest revision known to be committed: this process's commits are known
        when they commit (before their callers hear back), other replicas' when their
        notification arrives. A watch "from now" starts here."""
        self.closing = False

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start at the log's current end and tail it from there."""
        self.head = self.known = (await self.read_state()).revision
        # On the event loop, before the writer's caller is answered: a watch "from now"
        # opened after a write returned starts after that write.
        self._db.on_commit(self._committed)
        self._tailer.start()

    def _committed(self, changes: list[Change]) -> None:
        """This process's commit, in revision order: published directly if it follows
        the head; otherwise (another replica's changes came between) the tailer reads."""
        first, last = changes[0].run.revision, changes[-1].run.revision
        if first == self.head + 1 and not self.closing:
            self._publish(
                [RunEvent(EventType(c.type), c.run.revision, c.run, c.previous) for c in changes]
            )
        self.ring(last)

    def follow(self, follower: Follower) -> None:
        """Tell `follower` of every revision published from now on."""
        follower.restarted(self.head)
        self._followers.append(follower)

    def ring(self, revision: int = 0) -> None:
        """Tell the tailer the log grew to `revision` (0: may have grown)."""
        self.known = max(self.known, revision)
        if revision == 0 or revision > self.head:
            self._tailer.wake()

    async def close(self) -> None:
        """End every watch with `ServerShuttingDown` and stop tailing."""
        self.closing = True
        for watcher in self._watchers:
            watcher.end(ServerShuttingDown())
        self._live.clear()
        await self._tailer.stop()

    # -- watchers -----------------------------------------------------------------------------

    @property
    def watcher_count(self) -> int:
        """Streams attached to this hub, live or catching up."""
        return len(self._watchers)

    @property
    def live_count(self) -> int:
        """Streams the tailer pushes to (the others are catching up from the log)."""
        return len(self._live)

    def largest_queue(self) -> int:
        """The most events any one stream has queued: bounded by its `max_buffered`."""
        return max((watcher.buffered for watcher in self._watchers), default=0)

    @contextlib.contextmanager
    def attached(self, watcher: Watcher) -> Iterator[Watcher]:
        """Keep `watcher` known to the hub for the life of its stream, however it ends."""
        if self.closing:
            raise ServerShuttingDown()
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)
            self._live.discard(watcher)
            watcher.live = False
            watcher.close()

    def join(self, watcher: Watcher) -> bool:
        """Make `watcher` live if it has caught up with what the hub published.

        A watcher ahead of the hub (its start was read from the database first) joins
        too: it skips what it already has when the tailer gets there.
        """
        if watcher.position < self.head or watcher.ended is not None:
            return False
        watcher.live = True
        self._live.add(watcher)
        return True

    # -- reading the log ----------------------------------------------------------------------

    async def read_state(self) -> LogState:
        return await self._db.read(lambda unit: unit.log.state())

    async def read_after(self, after: int, run_id: str | None = None) -> LogPage:
        """One page of the log after `after`, with the state it was read in."""
        return await self._db.read(
            lambda unit: unit.log.read_after(after, PAGE_SIZE, run_id=run_id), lookup=False
        )

    # -- the tailer ---------------------------------------------------------------------------

    async def _publish_new_events(self) -> None:
        """The tailer's step: publish what the log holds after the head. While the
        database is down or failing, it backs off and watchers wait."""
        while True:
            page = await self.read_after(self.head)
            if page.state.compact_revision > self.head:
                self._lost_history(page.state)
                continue
            # A commit published directly while the page was read is not sent twice.
            fresh = [event for event in page.events if event.revision > self.head]
            if fresh:
                self._publish(fresh)
            if len(page.events) < PAGE_SIZE:
                return

    def _publish(self, events: list[RunEvent]) -> None:
        """Offer `events`, the revisions right after the head, to the live watchers."""
        upto = events[-1].revision
        for watcher in list(self._live):
            if not watcher.offer(events, upto):
                # Full: it stops getting pushes and catches up from the log.
                self._live.discard(watcher)
                watcher.live = False
                watcher.wake()
        self.head = upto
        self.known = max(self.known, upto)
        for follower in self._followers:
            follower.published(events)

    def _lost_history(self, state: LogState) -> None:
        """The tailer stalled for longer than the retention: its live watchers would get a
        gap, so they end with REVISION_COMPACTED and the hub starts over at the log's start.
        """
        log.error("watch tailer fell behind compaction", extra={"head": self.head})
        for watcher in self._live:
            watcher.live = False
            watcher.end(RevisionCompacted(self.head + 1, state.compact_revision, state.revision))
        self._live.clear()
        self.head = state.compact_revision
        for follower in self._followers:
            follower.restarted(self.head)
