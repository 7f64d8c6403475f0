"""The thread heads stay in step with the runs through every rule, on both databases.

A seeded random walk drives the real rules (creates with every strategy, claims of
every scope, completions, cancels of one run and of many, deletes, updates, sweeps of
expired leases) over a few thread ids, each a thread in both of two namespaces, and after
each step compares
`thread_heads` with what the runs say it must be: per (namespace, thread), its first
inflight run by creation.
Each claim must also take the best claimable head: highest priority, then earliest due.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import event, text

from runplane.server import requests
from runplane.server.access import Access
from runplane.server.claims import ClaimService
from runplane.server.errors import RunplaneError
from runplane.server.pages import PageTokens
from runplane.server.policy import ANONYMOUS, Role
from runplane.server.records import (
    CancelAction,
    Change,
    ChangeType,
    MultitaskStrategy,
    Run,
    RunFilter,
    RunStatus,
    SortOrder,
    now_us,
)
from runplane.server.runs import RunService
from runplane.server.store.database import Database
from runplane.server.store.dialects import lock_key, scoped_key
from runplane.server.store.unit_of_work import UnitOfWork
from runplane.server.sweeper import Sweeper
from runplane.server.validation import Limits
from runplane.server.wakeups import ClaimWakeups

NAMESPACES = ("default", "other")
ASSISTANTS = ("a", "b")
HOUR_US = 3600 * 10**6
ACCESS = Access(ANONYMOUS, Role.ADMIN)
TOKENS = PageTokens(b"k" * 32)


@dataclass(frozen=True)
class Stored:
    run: Run
    create_revision: int


def _stored_runs(database: Database) -> list[Stored]:
    with database.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT run_id, namespace, thread_id, assistant_id, status, priority, "
                "created_at_us, start_after_us, create_revision, worker_id FROM runs"
            )
        )
        return [
            Stored(
                Run(
                    run_id=row.run_id,
                    thread_id=row.thread_id,
                    assistant_id=row.assistant_id,
                    status=RunStatus(row.status),
                    multitask_strategy=MultitaskStrategy.ENQUEUE,
                    created_at=row.created_at_us,
                    updated_at=row.created_at_us,
                    start_after=row.start_after_us,
                    namespace=row.namespace,
                    priority=row.priority,
                    worker_id=row.worker_id,
                ),
                row.create_revision,
            )
            for row in rows
        ]


def _heads(database: Database) -> dict[tuple[str, str], dict[str, Any]]:
    with database.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM thread_heads")).mappings()
        return {(row["namespace"], row["thread_id"]): dict(row) for row in rows}


def _due(run: Run) -> int:
    return max(run.created_at, run.start_after or 0)


def _expected_heads(stored: list[Stored]) -> dict[tuple[str, str], Run]:
    firsts: dict[tuple[str, str], Stored] = {}
    for entry in stored:
        if not entry.run.status.is_inflight:
            continue
        key = (entry.run.namespace, entry.run.thread_id)
        if key not in firsts or entry.create_revision < firsts[key].create_revision:
            firsts[key] = entry
    return {key: entry.run for key, entry in firsts.items()}


def _check_heads(database: Database) -> None:
    checked_at = now_us()
    expected = _expected_heads(_stored_runs(database))
    actual = _heads(database)
    assert actual.keys() == expected.keys()
    for key, run in expected.items():
        row = actual[key]
        assert (
            row["run_id"],
            row["assistant_id"],
            row["priority"],
            row["due_us"],
            row["lock_key"],
        ) == (run.run_id, run.assistant_id, run.priority, _due(run), lock_key(scoped_key(*key))), (
            key
        )
        if run.status is RunStatus.RUNNING:
            assert row["state"] == "running", key
        elif _due(run) > checked_at:
            assert row["state"] == "delayed", key
        else:  # fallen due: ready, or delayed until the sweeper promotes it
            assert row["state"] in ("ready", "delayed"), key


def _best_claimable(
    stored: list[Stored], namespace: str | None, assistants: tuple[str, ...], at: int
) -> list[Run]:
    heads = [
        run
        for run in _expected_heads(stored).values()
        if run.status is RunStatus.PENDING
        and _due(run) <= at
        and (namespace is None or run.namespace == namespace)
        and (not assistants or run.assistant_id in assistants)
    ]
    if not heads:
        return []
    top = max(run.priority for run in heads)
    earliest = min(_due(run) for run in heads if run.priority == top)
    return [run for run in heads if run.priority == top and _due(run) == earliest]


class Walk:
    def __init__(self, database: Database, seed: int) -> None:
        self.db = database
        self.rng = random.Random(seed)
        self.runs = RunService(database, TOKENS)
        self.claims = ClaimService(database, ClaimWakeups(database), Limits(), max_attempts=3)
        self.sweeper = Sweeper(database, max_attempts=3)
        # Each thread id is a thread in both namespaces: neither's runs may hold up the other's.
        thread_ids = [str(uuid.uuid4()) for _ in range(3)]
        self.threads = [(ns, thread_id) for ns in NAMESPACES for thread_id in thread_ids]
        self.claimed = 0

    async def step(self) -> None:
        action = self.rng.choices(
            [
                self.create,
                self.claim,
                self.complete,
                self.cancel,
                self.cancel_many,
                self.delete,
                self.update,
                self.sweep,
            ],
            weights=[8, 6, 3, 2, 1, 1, 1, 1],
        )[0]
        # A refusal (REJECT on a busy thread, a terminal run) writes nothing.
        with contextlib.suppress(RunplaneError):
            await action()

    def _pick(self, statuses: set[RunStatus]) -> Run | None:
        candidates = [s.run for s in _stored_runs(self.db) if s.run.status in statuses]
        return self.rng.choice(candidates) if candidates else None

    async def create(self) -> None:
        namespace, thread_id = self.rng.choice(self.threads)
        now = now_us()
        start_after = self.rng.choice([None, None, now - 10**6, now + HOUR_US, now + 20_000])
        strategy = self.rng.choice(
            [MultitaskStrategy.ENQUEUE] * 3
            + [MultitaskStrategy.INTERRUPT, MultitaskStrategy.ROLLBACK, MultitaskStrategy.REJECT]
        )
        await self.runs.create(
            requests.CreateRun(
                assistant_id=self.rng.choice(ASSISTANTS),
                thread_id=thread_id,
                strategy=strategy,
                start_after=start_after,
                namespace=namespace,
                priority=self.rng.randrange(10),
                access=ACCESS,
            )
        )

    async def claim(self) -> None:
        namespace = self.rng.choice([None, *NAMESPACES])
        assistants = self.rng.choice([(), ("a",), ("b",), ("a", "b")])
        # An instant lease expires at once: the next sweep puts the run back in line.
        lease_us = self.rng.choice([60 * 10**6, 1])
        before = _stored_runs(self.db)
        earliest = now_us()
        claimed = await self.claims.claim(
            requests.ClaimRun("walker", assistants, lease_us, 0.0, namespace, access=ACCESS)
        )
        latest = now_us()
        if claimed is None:
            assert _best_claimable(before, namespace, assistants, earliest) == []
            return
        self.claimed += 1
        # A run that fell due during the claim may win; otherwise the best must.
        best = _best_claimable(before, namespace, assistants, earliest)
        best += _best_claimable(before, namespace, assistants, latest)
        assert claimed.run_id in {run.run_id for run in best}
        assert claimed.status is RunStatus.RUNNING

    async def complete(self) -> None:
        run = self._pick({RunStatus.RUNNING})
        if run is not None:
            status = self.rng.choice([RunStatus.SUCCESS, RunStatus.ERROR])
            await self.claims.complete(
                requests.CompleteRun(run.run_id, run.worker_id, status, access=ACCESS)
            )

    async def cancel(self) -> None:
        run = self._pick({RunStatus.PENDING, RunStatus.RUNNING})
        if run is not None:
            action = self.rng.choice([CancelAction.INTERRUPT, CancelAction.ROLLBACK])
            await self.runs.cancel(requests.CancelRun(run.run_id, action, access=ACCESS))

    async def cancel_many(self) -> None:
        namespace, thread_id = self.rng.choice(self.threads)
        run_filter = self.rng.choice(
            [RunFilter(thread_id=thread_id), RunFilter(assistant_id=self.rng.choice(ASSISTANTS))]
        )
        action = self.rng.choice([CancelAction.INTERRUPT, CancelAction.ROLLBACK])
        where = self.rng.choice([namespace, None])
        await self.runs.cancel_many(
            requests.CancelRuns(run_filter, action, namespace=where, access=ACCESS)
        )

    async def delete(self) -> None:
        run = self._pick({RunStatus.PENDING, RunStatus.RUNNING})
        if run is not None:
            await self.runs.delete(requests.DeleteRun(run.run_id, force=True, access=ACCESS))

    async def update(self) -> None:
        run = self._pick(set(RunStatus))
        if run is not None:
            await self.runs.update(requests.UpdateRun(run.run_id, metadata={"n": 1}, access=ACCESS))

    async def sweep(self) -> None:
        await self.sweeper.sweep()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [1, 2])
def test_heads_follow_every_rule(database: Database, seed: int) -> None:
    async def walk() -> int:
        walker = Walk(database, seed)
        for _ in range(300):
            await walker.step()
            _check_heads(database)
        return walker.claimed

    assert asyncio.run(walk()) > 20  # the walk claimed often enough to mean something


def test_a_thread_whose_head_ends_hands_over_to_its_next_run(database: Database) -> None:
    """The common life of a queued thread, step by step: FIFO whatever the priorities."""

    async def scenario() -> tuple[list[str], list[str]]:
        runs, claims = (
            RunService(database, TOKENS),
            ClaimService(database, ClaimWakeups(database), Limits(), max_attempts=3),
        )
        thread_id = str(uuid.uuid4())
        created = [
            await runs.create(
                requests.CreateRun("a", thread_id=thread_id, priority=priority, access=ACCESS)
            )
            for priority in (1, 5, 9)
        ]
        order = []
        for _ in created:
            claimed = await claims.claim(requests.ClaimRun("w", ("a",), 10**7, 0.0, access=ACCESS))
            assert claimed is not None
            assert (
                await claims.claim(requests.ClaimRun("w", ("a",), 10**7, 0.0, access=ACCESS))
                is None
            )
            order.append(claimed.run_id)
            await claims.complete(
                requests.CompleteRun(claimed.run_id, "w", RunStatus.SUCCESS, access=ACCESS)
            )
            _check_heads(database)
        assert _heads(database) == {}
        listed = await runs.list(
            requests.ListRuns(
                RunFilter(thread_id=thread_id), SortOrder.ASC, page_size=10, access=ACCESS
            )
        )
        assert [run.status for run in listed.runs] == [RunStatus.SUCCESS] * 3
        return [run.run_id for run in created], order

    created, claimed = asyncio.run(scenario())
    assert claimed == created


@pytest.mark.parametrize("behind", [0, 1])
def test_a_head_that_ends_is_dropped_before_its_own_row_is_written(
    database: Database, behind: int
) -> None:
    """A completion of a thread's head, with `behind` runs queued after it: the head's
    DELETE goes first, so that it finds none of the transaction's rows held to send
    before it, and it is the only DELETE of the head: when it leaves a run behind, that
    run takes over without a second try."""

    async def scenario() -> tuple[list[str], str]:
        runs, claims = (
            RunService(database, TOKENS),
            ClaimService(database, ClaimWakeups(database), Limits(), max_attempts=3),
        )
        thread_id = str(uuid.uuid4())
        created = [
            await runs.create(requests.CreateRun("a", thread_id=thread_id, access=ACCESS))
            for _ in range(1 + behind)
        ]
        claimed = await claims.claim(requests.ClaimRun("w", ("a",), 10**7, 0.0, access=ACCESS))
        assert claimed is not None
        statements: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            statements.append(" ".join(statement.split()))

        event.listen(database.engine, "before_cursor_execute", seen)
        try:
            await claims.complete(
                requests.CompleteRun(claimed.run_id, "w", RunStatus.SUCCESS, access=ACCESS)
            )
        finally:
            event.remove(database.engine, "before_cursor_execute", seen)
        return statements, created[-1].run_id

    statements, last = asyncio.run(scenario())
    _check_heads(database)
    assert [head["run_id"] for head in _heads(database).values()] == ([last] if behind else [])
    dropped = [i for i, s in enumerate(statements) if s.startswith("DELETE FROM thread_heads")]
    run_written = [i for i, s in enumerate(statements) if "UPDATE runs SET" in s]
    assert len(dropped) == 1, statements
    assert len(run_written) == 1, statements
    # Without the early DELETE, the ended run's row is sent ahead of it.
    assert dropped[0] < run_written[0], statements
    (logged,) = [i for i, s in enumerate(statements) if "INSERT INTO run_events" in s]
    # The event goes with the run's row: not alone ahead of the DELETE (no run behind), nor
    # alone after the next run is made the head.
    assert dropped[0] < logged, statements
    if behind:
        (handed_over,) = [
            i for i, s in enumerate(statements[dropped[0] + 1 :]) if "INTO thread_heads" in s
        ]
        assert logged < dropped[0] + 1 + handed_over, statements


def test_a_retried_head_keeps_its_place_and_waits_for_its_new_due_time(
    database: Database,
) -> None:
    """A RUNNING head sent back to PENDING with a later start_after (a retry) stays its
    thread's head, delayed: the run behind it is not claimable, and the sweeper moves
    the head back to the ready line once it is due."""

    async def scenario() -> None:
        runs, claims = (
            RunService(database, TOKENS),
            ClaimService(database, ClaimWakeups(database), Limits(), max_attempts=3),
        )
        sweeper = Sweeper(database, max_attempts=3)
        thread_id = str(uuid.uuid4())
        first = await runs.create(requests.CreateRun("a", thread_id=thread_id, access=ACCESS))
        await runs.create(requests.CreateRun("a", thread_id=thread_id, access=ACCESS))
        claimed = await claims.claim(requests.ClaimRun("w", ("a",), 10**7, 0.0, access=ACCESS))
        assert claimed is not None
        assert claimed.run_id == first.run_id
        due = now_us() + 300_000

        def retry(unit: UnitOfWork) -> None:
            run = unit.runs.get_locked(first.run_id)
            assert run is not None
            again = dataclasses.replace(
                run, status=RunStatus.PENDING, worker_id="", lease_expires_at=None, start_after=due
            )
            unit.apply([Change(ChangeType.UPDATED, again, previous=run)])

        await database.write(retry)
        _check_heads(database)
        (head,) = (h for h in _heads(database).values() if h["thread_id"] == thread_id)
        assert (head["run_id"], head["state"], head["due_us"]) == (first.run_id, "delayed", due)
        look = requests.ClaimRun("w", ("a",), 10**7, 0.0, access=ACCESS)
        assert await claims.claim(look) is None  # neither the retried run nor the one behind
        await asyncio.sleep(0.35)
        await sweeper.sweep()
        (head,) = (h for h in _heads(database).values() if h["thread_id"] == thread_id)
        assert head["state"] == "ready"
        again = await claims.claim(look)
        assert again is not None
        assert (again.run_id, again.attempt) == (first.run_id, 2)

    asyncio.run(scenario())
