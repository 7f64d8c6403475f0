"""The change listener on a real PostgreSQL database: it rings for the commits of other
replicas, and never for those of its own process, which reach the watch hub and the
claim wake-ups through `Database.on_commit` (ringing for them as well cost a read of
the event log and a claim's look for every commit)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from runplane.server.records import Change, ChangeType, MultitaskStrategy, Run, RunStatus
from runplane.server.store.database import Database
from runplane.server.store.dialects import normalize_url
from runplane.server.store.notifications import OwnSessions
from runplane.server.store.unit_of_work import UnitOfWork
from tests.support.databases import fresh_postgres_database, postgres_replicas

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas() -> Iterator[tuple[Database, Database]]:
    with postgres_replicas() as pair:
        yield pair


def _create(unit: UnitOfWork) -> int:
    run = Run(
        str(uuid.uuid4()), "thread", "assistant", RunStatus.PENDING, MultitaskStrategy.ENQUEUE, 0, 0
    )
    return unit.apply([Change(ChangeType.CREATED, run)])[0].revision


def test_rings_for_another_replicas_commits_and_never_for_its_own(
    replicas: tuple[Database, Database],
) -> None:
    this, other = replicas

    async def scenario() -> list[int]:
        rung: asyncio.Queue[int] = asyncio.Queue()
        listener = this.change_listener(rung.put_nowait)
        assert listener is not None
        listening = asyncio.create_task(listener.listen())
        try:
            assert await asyncio.wait_for(rung.get(), 10) == 0  # connected: one look
            # Reads and writes, on as many of this process's sessions as it opens.
            await asyncio.gather(*(this.read(lambda unit: unit.log.state()) for _ in range(8)))
            for _ in range(10):
                await this.write(_create)
            theirs = await other.write(_create)
            # Notifications arrive in commit order: had any of this process's ten been
            # rung for, it would come before the other replica's.
            assert await asyncio.wait_for(rung.get(), 10) == theirs
            await asyncio.sleep(0.2)
            return [rung.get_nowait() for _ in range(rung.qsize())]
        finally:
            listening.cancel()
            await listener.close()

    assert asyncio.run(scenario()) == []


def test_a_session_closed_is_no_longer_counted_as_this_processs() -> None:
    """The server may give a closed session's pid to another replica's next session,
    whose commits must not be taken for this process's."""
    with fresh_postgres_database() as url:
        engine = create_engine(normalize_url(url))
        own = OwnSessions(engine)
        with engine.connect() as connection:
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        assert pid in own  # back in the pool, still open
        engine.dispose()
        assert pid not in own


def test_no_listener_where_this_process_is_the_only_writer(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/runplane.db")
    try:
        assert database.change_listener(lambda revision: None) is None
    finally:
        database.dispose()
