"""The event log keeps each change's run once: of the run before an update, only what
watch filters read and the update changed. Its size per change stays within 1.1x of
the run's, and watchers replaying the log still see a run leave their filter."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from runplane.client import Client, EventType, RunStatus
from runplane.server.records import Change, ChangeType, MultitaskStrategy, Run, now_us
from runplane.server.records import RunStatus as Status
from runplane.server.store.database import Database
from runplane.server.store.event_log import LogPage, LogState
from runplane.server.store.unit_of_work import UnitOfWork
from tests.support.servers import ServerThread

KWARGS = {"messages": [{"role": "user", "content": "word " * 400}], "config": {"depth": 3}}


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.address) as client:
        yield client


def _logged_sizes(server: ServerThread, run_id: str) -> list[tuple[str, int, int]]:
    """(type, bytes of the run, bytes of the run before) of each logged change."""
    length = "octet_length(CAST({} AS text))"
    if server.running.database.url.get_backend_name() == "sqlite":
        length = "length(CAST({} AS blob))"
    database = Database(server.config.database_url)
    try:
        with database.engine.connect() as connection:
            rows = connection.execute(
                text(
                    f"SELECT type, {length.format('run')}, "
                    f"COALESCE({length.format('previous')}, 0) "
                    "FROM run_events WHERE run_id = :run_id ORDER BY revision"
                ),
                {"run_id": run_id},
            )
            return [(kind, int(run), int(previous)) for kind, run, previous in rows]
    finally:
        database.dispose()


def test_a_change_logs_the_run_once(server: ServerThread, client: Client) -> None:
    assistant = f"agent-{uuid.uuid4()}"
    run = client.create_run(assistant, kwargs=KWARGS, metadata={"team": "search"})
    claimed = client.claim_run("worker", assistant_ids=[assistant])
    assert claimed is not None
    assert claimed.run_id == run.run_id
    client.heartbeat_run(run.run_id, "worker")  # no revision, nothing logged
    client.complete_run(run.run_id, "worker", RunStatus.SUCCESS, metadata={"tokens": 12})
    client.update_run(run.run_id, metadata={"team": "ranking"})
    sizes = _logged_sizes(server, run.run_id)
    assert [kind for kind, _, _ in sizes] == ["created", "updated", "updated", "updated"]
    for _, run_bytes, previous_bytes in sizes:
        assert run_bytes > 2000
        assert run_bytes + previous_bytes <= 1.1 * run_bytes, sizes


def test_a_watch_replayed_from_the_log_sees_runs_leave_its_filter(client: Client) -> None:
    """From an old revision the events come from the log: a run the filter matched only
    before a change (RUNNING, team search) is still reported."""
    assistant = f"agent-{uuid.uuid4()}"
    start = next(client.list_runs(page_size=1).pages()).revision + 1
    run = client.create_run(assistant, kwargs=KWARGS, metadata={"team": "search"})
    client.claim_run("worker", assistant_ids=[assistant])
    client.complete_run(run.run_id, "worker", RunStatus.SUCCESS)
    client.update_run(run.run_id, metadata={"team": "ranking"})
    # The end of the story, which every filter below matches.
    client.create_run(assistant, metadata={"team": "search"})
    client.claim_run("worker", assistant_ids=[assistant])

    def events(**run_filter: Any) -> list[tuple[EventType, RunStatus, str]]:
        found = []
        watch = client.watch_runs(assistant_id=assistant, start_revision=start, **run_filter)
        for event in watch:
            if event.run.run_id != run.run_id:
                break
            found.append((event.type, event.run.status, event.run.metadata["team"]))
        return found

    running = events(statuses=[RunStatus.RUNNING])
    assert running == [
        (EventType.UPDATED, RunStatus.RUNNING, "search"),
        (EventType.UPDATED, RunStatus.SUCCESS, "search"),
    ]
    search = events(metadata={"team": "search"})
    assert [status for _, status, _ in search] == [
        RunStatus.PENDING,
        RunStatus.RUNNING,
        RunStatus.SUCCESS,
        RunStatus.SUCCESS,
    ]
    assert search[-1][2] == "ranking"


def _create(run_id: str, thread_id: str = "thread") -> Callable[[UnitOfWork], None]:
    def work(unit: UnitOfWork) -> None:
        run = Run(run_id, thread_id, "assistant", Status.PENDING, MultitaskStrategy.ENQUEUE, 0, 0)
        unit.apply([Change(ChangeType.CREATED, run)])

    return work


def _after(
    position: int, limit: int = 7, run_id: str | None = None
) -> Callable[[UnitOfWork], LogPage]:
    return lambda unit: unit.log.read_after(position, limit, run_id)


def _page(database: Database, after: int, limit: int, run_id: str | None = None) -> LogPage:
    return asyncio.run(database.read(_after(after, limit, run_id), lookup=False))


def test_a_page_of_the_log_comes_with_the_state_it_was_read_in(database: Database) -> None:
    for run_id in ("a", "b", "c", "d"):
        asyncio.run(database.write(_create(run_id, thread_id=run_id)))

    def interrupt_a(unit: UnitOfWork) -> None:
        run = unit.runs.get("a")
        assert run is not None
        unit.apply([Change(ChangeType.UPDATED, run.ended(Status.INTERRUPTED, 1), previous=run)])

    asyncio.run(database.write(interrupt_a))

    first = _page(database, 0, 3)
    assert [event.revision for event in first.events] == [1, 2, 3]
    assert first.state == LogState(revision=5, compact_revision=0)
    assert _page(database, 5, 3) == LogPage(LogState(revision=5, compact_revision=0), [])
    of_a = _page(database, 0, 10, run_id="a")
    assert [(event.revision, event.run.status) for event in of_a.events] == [
        (1, Status.PENDING),
        (5, Status.INTERRUPTED),
    ]
    assert of_a.state.revision == 5

    asyncio.run(database.write(lambda unit: unit.log.compact(now_us() + 1, 2)))
    assert _page(database, 5, 3).state == LogState(revision=5, compact_revision=2)


@pytest.mark.timeout(60)
def test_pages_read_while_runs_are_written_miss_nothing(database: Database) -> None:
    """A reader follows the log page by page while a writer appends to it: each page's
    events run on from where it stood, none beyond the page's state, so following the
    state's revision after a short page skips nothing."""
    total = 300

    async def write_and_follow() -> list[int]:
        async def write() -> None:
            for i in range(total):
                await database.write(_create(f"r{i}", thread_id=f"t{i}"))

        writer = asyncio.ensure_future(write())
        seen: list[int] = []
        position = 0
        try:
            while position < total:
                page = await database.read(_after(position), lookup=False)
                revisions = [event.revision for event in page.events]
                assert revisions == list(range(position + 1, position + 1 + len(revisions)))
                assert all(revision <= page.state.revision for revision in revisions)
                seen.extend(revisions)
                position = revisions[-1] if len(revisions) == 7 else page.state.revision
                await asyncio.sleep(0)
        finally:
            await writer
        return seen

    assert asyncio.run(write_and_follow()) == list(range(1, total + 1))
