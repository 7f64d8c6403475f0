from __future__ import annotations

import dataclasses

from runplane.server.cache import RunCache
from runplane.server.records import (
    Change,
    ChangeType,
    EventType,
    MultitaskStrategy,
    Run,
    RunEvent,
    RunStatus,
)
from runplane.server.servicer import EventMessages
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
