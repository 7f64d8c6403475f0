from __future__ import annotations

import dataclasses

from runplane.server.cache import RunCache
from runplane.server.records import Change, ChangeType, MultitaskStrategy, Run, RunStatus


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
