from __future__ import annotations

import asyncio
import dataclasses

from runplane.server.cache import ReplicaCache, RunCache
from runplane.server.records import (
    Change,
    ChangeType,
    EventType,
    MultitaskStrategy,
    Run,
    RunEvent,
    RunStatus,
)
from runplane.server.servicer import EventMessages, RunMessages
from runplane.server.watch.watcher import Delivery


def _run(run_id: str, revision: int) -> Run:
    return Run(
        run_id,
        "thread",
        "agent",
        RunStatus.PENDING,
        MultitaskStrategy.ENQUEUE,
        0,
        0,
        revision=revision,
    )


def test_an_older_revision_never_replaces_a_newer_one() -> None:
    cache = RunCache()
    cache.apply([Change(ChangeType.UPDATED, _run("a", 5))])
    cache.remember(_run("a", 3))  # a read that started before the write
    kept = cache.get("a")
    assert kept is not None
    assert kept.revision == 5


def test_deleted_runs_are_forgotten() -> None:
    cache = RunCache()
    cache.remember(_run("a", 1))
    cache.apply([Change(ChangeType.DELETED, dataclasses.replace(_run("a", 2)))])
    assert cache.get("a") is None


def test_least_recently_used_run_is_evicted_at_capacity() -> None:
    cache = RunCache(capacity=2)
    cache.remember(_run("a", 1))
    cache.remember(_run("b", 2))
    assert cache.get("a") is not None  # a is now the most recent
    cache.remember(_run("c", 3))
    assert (cache.get("a") is not None, cache.get("b"), len(cache)) == (True, None, 2)


def _big(run_id: str, revision: int, size: int) -> Run:
    return dataclasses.replace(_run(run_id, revision), metadata={"blob": "x" * size})


def test_runs_are_bounded_in_bytes_not_only_in_count() -> None:
    cache = RunCache(capacity=10_000, max_bytes=4 * 1024 * 1024)
    for index in range(100):  # 100 runs of 500 KB: 50 MB if only counted
        cache.remember(_big(f"r{index}", index, 500_000))
    assert cache.bytes <= 4 * 1024 * 1024
    assert len(cache) == 8
    assert cache.get("r99") is not None
    assert cache.get("r0") is None


def test_a_run_too_large_to_keep_replaces_nothing_stale() -> None:
    cache = RunCache(max_bytes=1_000_000)
    cache.remember(_big("a", 1, 10))
    cache.remember(_big("a", 2, 600_000))  # more than a quarter of the bound: not kept
    assert cache.get("a") is None
    assert cache.bytes == 0


def test_watch_messages_are_bounded_in_bytes() -> None:
    messages = EventMessages(capacity=10_000, max_bytes=8 * 1024 * 1024)
    for revision in range(1, 60):
        run = _big(f"r{revision}", revision, 400_000)
        event = RunEvent(EventType.CREATED, revision, run)
        (response,) = messages.responses(Delivery([event], revision))
        assert response.events[0].run.metadata["blob"] == "x" * 400_000
    assert messages.bytes <= 8 * 1024 * 1024


def test_a_run_message_is_built_once_per_run_object_and_anew_for_a_changed_run() -> None:
    messages = RunMessages(capacity=2)
    run = _run("a", 1)
    first = messages.message(run)
    assert messages.message(run) is first
    changed = dataclasses.replace(run, revision=2, metadata={"step": 2})
    again = messages.message(changed)
    assert (again.revision, dict(again.metadata)) == (2, {"step": 2.0})
    assert messages.message(run) is first  # the unchanged object still has its own
    messages.message(_run("b", 3))
    messages.message(_run("c", 4))  # capacity 2: the oldest message goes
    assert messages.message(run) is not first
    assert messages.message(run) == first


class _Store:
    """What the cache reads through, standing in for the database: each read of a run
    waits until the test lets it end."""

    def __init__(self, run: Run | None, revision: int) -> None:
        self.run = run
        self.revision = revision
        self.reading = asyncio.Event()
        self.finish = asyncio.Event()
        self.reads = 0

    async def read_run(self, run_id: str) -> Run | None:
        self.reads += 1
        self.reading.set()
        await self.finish.wait()
        return self.run

    async def read_revision(self) -> int:
        return self.revision


def test_a_run_read_while_the_hub_published_is_not_kept() -> None:
    """The read began before the run's deletion was published and ended after it: kept,
    its older state would answer for a run that no longer exists."""

    async def scenario() -> tuple[Run | None, Run | None, int]:
        cache = ReplicaCache()
        cache.restarted(10)
        store = _Store(_run("r", 10), revision=10)
        lookup = asyncio.ensure_future(cache.lookup("r", store))
        await store.reading.wait()
        cache.published([RunEvent(EventType.DELETED, 11, _run("r", 11), None)])
        store.finish.set()
        first = await lookup
        store.run, store.revision = None, 11
        return first, await cache.lookup("r", store), store.reads

    first, second, reads = asyncio.run(scenario())
    assert first is not None  # the read answers its own call all the same
    assert second is None  # read again: the deleted run was not kept
    assert reads == 2


def test_a_run_read_while_nothing_was_published_answers_the_next_lookups() -> None:
    async def scenario() -> int:
        cache = ReplicaCache()
        cache.restarted(10)
        store = _Store(_run("r", 10), revision=10)
        store.finish.set()
        for _ in range(3):
            assert await cache.lookup("r", store) == _run("r", 10)
        return store.reads

    assert asyncio.run(scenario()) == 1
