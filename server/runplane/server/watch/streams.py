"""The rules of WatchRuns and WatchRun, as async iterators of `Delivery`.

A stream goes through up to three phases, all driven by its `position` (the revision up
to which every selected event has been sent):

1. the start: the initial state read at one revision R (`include_initial`, or WatchRun
   without a start revision), or a start revision S (position S - 1), or "now" (the newest
   revision the hub knows committed, with no database read: a burst of new streams costs
   no queries);
2. catch-up: while the position is behind the hub, pages of the event log, each read in
   one snapshot that also tells whether the log still reaches back that far;
3. live: the hub pushes new events into the watcher's bounded queue. A watcher that
   falls behind drops back to catch-up, and rejoins once level.

A quiet stream gets a bookmark every progress interval. Every message either carries
events or is a bookmark; each revision is one event, so none is ever split.

A stream carries only runs of the namespaces its access reaches: a WatchRuns filter
(its selector and its initial state) is confined to them, and a WatchRun starts only on
a run the access reaches. Bookmarks still carry the global revision.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from runplane.server import requests
from runplane.server.errors import RevisionCompacted, ServerShuttingDown
from runplane.server.records import EventType, NamespaceSet, Run, RunEvent, RunFilter, SortOrder
from runplane.server.runs import RunLookup
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import UnitOfWork
from runplane.server.watch.hub import PAGE_SIZE, WatchHub
from runplane.server.watch.watcher import DEFAULT_MAX_BUFFERED, Delivery, Selector, Watcher

# Whatever a caller asks: nothing in this process reads more of the runs table at once.
_MAX_INITIAL_RUNS = 1_000_000


def filter_selector(run_filter: RunFilter) -> Selector:
    """Before and after: a watcher of RUNNING runs also sees the change that ends one."""

    def selects(event: RunEvent) -> bool:
        return run_filter.matches(event.run) or (
            event.previous is not None and run_filter.matches(event.previous)
        )

    return selects


def run_selector(run_id: str, namespaces: NamespaceSet) -> Selector:
    def selects(event: RunEvent) -> bool:
        # A run id a delete freed may be taken again, in another namespace: its history
        # there is another tenant's.
        return event.run.run_id == run_id and (
            namespaces is None or event.run.namespace in namespaces
        )

    return selects


def ends_run_watch(event: RunEvent) -> bool:
    """WatchRun is over once its run is gone or terminal."""
    return event.type is EventType.DELETED or not event.run.status.is_inflight


class WatchService:
    def __init__(
        self,
        database: Database,
        hub: WatchHub,
        current_run: RunLookup,
        *,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        """`current_run` is GetRun's read (cache or point read; RunNotFound if absent or
        out of reach)."""
        self._db = database
        self._hub = hub
        self._current_run = current_run
        self._max_buffered = max_buffered

    # -- WatchRuns ----------------------------------------------------------------------------

    async def watch_runs(self, watch: requests.WatchRuns) -> AsyncIterator[Delivery]:
        """The stream of a WatchRuns request. Errors of its start (bad history) are
        raised here, before the first message."""
        run_filter = dataclasses.replace(
            watch.run_filter, namespaces=watch.access.namespaces(watch.namespace)
        )
        opening: list[Delivery] = []
        if watch.include_initial:
            revision, runs = await self._db.read(
                lambda unit: _initial_state(unit, run_filter), snapshot=True
            )
            if runs:
                # All at revision R: one message, since a revision is never split.
                opening.append(Delivery([_initial(run, revision) for run in runs], revision))
            opening.append(Delivery([], revision))  # the end of the initial state
            position = revision
        elif watch.start_revision:
            position = watch.start_revision - 1
        else:
            position = self._hub.known
            # Like etcd's "created" response: the client learns where "now" was, so it
            # can resume from there should the stream drop before anything happens.
            opening.append(Delivery([], position))
        watcher = Watcher(filter_selector(run_filter), position, self._max_buffered)
        return self._follow(watcher, watch.progress_interval, opening, run_id=None, ends=None)

    # -- WatchRun -----------------------------------------------------------------------------

    async def watch_run(self, watch: requests.WatchRun) -> AsyncIterator[Delivery]:
        """The stream of a WatchRun request; NOT_FOUND and compaction are raised here."""
        run_id, start_revision, access = watch.run_id, watch.start_revision, watch.access
        if start_revision:
            start = await self._db.read(
                lambda unit: _run_history(unit, run_id, start_revision), snapshot=True
            )
            if start.compact_revision >= start_revision:
                raise RevisionCompacted(start_revision, start.compact_revision, start.revision)
            # Gone since, the run is known by its history.
            access.found(run_id, start.logged if start.run is None else start.run)
            if (
                start.run is not None
                and not start.run.status.is_inflight
                and start.run.revision < start_revision
            ):
                # It ended before the start: nothing will ever follow.
                return _just(Delivery([], max(start.revision, start_revision - 1)))
            opening = []
            position = start_revision - 1
        else:
            # Everything up to the head was committed before the read below, so the run
            # as read holds as of max(head, its own last change): the stream goes on from
            # there with no gap and no change twice. (Revisions follow commit order.)
            head = self._hub.head
            run = await self._current_run(run_id, access)
            revision = max(head, run.revision)
            initial = _initial(run, revision)
            if ends_run_watch(initial):
                return _just(Delivery([initial], revision))
            opening = [Delivery([initial], revision)]
            position = revision
        selector = run_selector(run_id, access.namespaces(None))
        watcher = Watcher(selector, position, self._max_buffered)
        return self._follow(
            watcher,
            requests.DEFAULT_PROGRESS_INTERVAL,
            opening,
            run_id=run_id,
            ends=ends_run_watch,
        )

    # -- catch-up and live --------------------------------------------------------------------

    async def _follow(
        self,
        watcher: Watcher,
        progress_interval: float,
        opening: list[Delivery],
        *,
        run_id: str | None,
        ends: Callable[[RunEvent], bool] | None,
    ) -> AsyncIterator[Delivery]:
        """The `opening` deliveries, then everything after the watcher's position, until
        the stream is cancelled, `ends` selects an event (it is the last one sent), or the
        server shuts down.
        """
        # Attached first: a stream that has sent its opening is one the hub counts.
        with self._hub.attached(watcher):
            for first in opening:
                yield first
            sent = watcher.position
            clock = asyncio.get_running_loop().time
            next_bookmark = clock() + progress_interval
            while True:
                if watcher.ended is not None:
                    if isinstance(watcher.ended, ServerShuttingDown):
                        if not watcher.buffered:
                            sent = max(sent, watcher.position)
                        yield Delivery([], sent)  # a last bookmark to resume from
                    raise watcher.ended
                delivery = watcher.take()
                if delivery is None and not watcher.live:
                    delivery = await self._catch_up(watcher, run_id)
                    if delivery is None:
                        continue
                if delivery is not None:
                    if ends is not None and (last := _first_ending(delivery, ends)) is not None:
                        yield last
                        return
                    if delivery.events:
                        yield delivery
                        sent = delivery.revision
                        next_bookmark = clock() + progress_interval
                    continue
                now = clock()
                if now >= next_bookmark:
                    # Quiet: nothing is queued, so the watcher's position is all sent.
                    sent = max(sent, watcher.position)
                    yield Delivery([], sent)
                    next_bookmark = now + progress_interval
                    continue
                await watcher.wait(next_bookmark)

    async def _catch_up(self, watcher: Watcher, run_id: str | None) -> Delivery | None:
        """Serve one page of the log to a watcher that is not live, or let it join.

        Returns what to send (None: nothing selected in the page, or it joined).
        """
        if self._hub.join(watcher):
            return None
        page = await self._hub.read_after(watcher.position, run_id=run_id)
        if page.state.compact_revision > watcher.position:
            state = page.state
            raise RevisionCompacted(watcher.position + 1, state.compact_revision, state.revision)
        chosen = [event for event in page.events if watcher.selects(event)]
        if len(page.events) < PAGE_SIZE:
            # The snapshot held nothing more: the watcher is level with it.
            upto = max(watcher.position, page.state.revision)
        else:
            upto = page.events[-1].revision
        watcher.position = upto
        self._hub.join(watcher)
        return Delivery(chosen, upto) if chosen else None


def _initial_state(unit: UnitOfWork, run_filter: RunFilter) -> tuple[int, list[Run]]:
    revision = unit.log.state().revision
    return revision, unit.runs.list_page(run_filter, SortOrder.ASC, None, _MAX_INITIAL_RUNS)


@dataclass(frozen=True, slots=True)
class _RunHistory:
    revision: int
    compact_revision: int
    run: Run | None
    logged: Run | None
    """For a run that is gone: as its first change since the start left it, if any."""


def _run_history(unit: UnitOfWork, run_id: str, since: int) -> _RunHistory:
    state = unit.log.state()
    run = unit.runs.get(run_id)
    return _RunHistory(
        revision=state.revision,
        compact_revision=state.compact_revision,
        run=run,
        logged=unit.log.logged_run(run_id, since) if run is None else None,
    )


async def _just(delivery: Delivery) -> AsyncIterator[Delivery]:
    yield delivery


def _initial(run: Run, revision: int) -> RunEvent:
    """The run as of `revision` (its own last change, `run.revision`, may be older)."""
    return RunEvent(EventType.INITIAL, revision, run)


def _first_ending(delivery: Delivery, ends: Callable[[RunEvent], bool]) -> Delivery | None:
    """The delivery cut right after its first ending event, if it has one."""
    for index, event in enumerate(delivery.events):
        if ends(event):
            return dataclasses.replace(
                delivery, events=delivery.events[: index + 1], revision=event.revision
            )
    return None
