"""The per-stream queue of the watch hub: bounded, ordered, and honest about its position."""

from __future__ import annotations

import asyncio

from runplane.server.records import EventType, MultitaskStrategy, Run, RunEvent, RunStatus
from runplane.server.watch.watcher import Watcher


def event(revision: int, assistant_id: str = "agent") -> RunEvent:
    run = Run(
        run_id=f"run-{revision}",
        thread_id="thread",
        assistant_id=assistant_id,
        status=RunStatus.PENDING,
        multitask_strategy=MultitaskStrategy.ENQUEUE,
        created_at=0,
        updated_at=0,
        revision=revision,
    )
    return RunEvent(EventType.CREATED, revision, run)


def test_a_watcher_queues_what_it_selects_and_covers_what_it_skips() -> None:
    async def scenario() -> None:
        watcher = Watcher(lambda e: e.run.assistant_id == "agent", position=10)
        assert watcher.offer([event(11), event(12, "other")], upto=12)
        assert watcher.offer([event(13, "other")], upto=13)  # merged into the last delivery
        delivery = watcher.take()
        assert delivery is not None
        assert [e.revision for e in delivery.events] == [11]
        assert delivery.revision == 13
        assert watcher.position == 13
        assert watcher.take() is None

    asyncio.run(scenario())


def test_a_full_watcher_refuses_a_slice_and_stays_where_it_was() -> None:
    async def scenario() -> None:
        watcher = Watcher(lambda e: True, position=0, max_buffered=2)
        assert watcher.offer([event(1), event(2)], upto=2)
        assert not watcher.offer([event(3)], upto=3)
        assert watcher.position == 2  # catch-up from the log starts after 2
        assert watcher.buffered == 2

    asyncio.run(scenario())


def test_a_watcher_ahead_of_the_hub_skips_what_it_already_has() -> None:
    async def scenario() -> None:
        watcher = Watcher(lambda e: True, position=5)
        assert watcher.offer([event(4), event(5)], upto=5)
        assert watcher.take() is None
        assert watcher.offer([event(6)], upto=6)
        delivery = watcher.take()
        assert delivery is not None
        assert [e.revision for e in delivery.events] == [6]

    asyncio.run(scenario())
