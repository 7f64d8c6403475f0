"""The event log keeps each change's run once: of the run before an update, only what
watch filters read and the update changed. Its size per change stays within 1.1x of
the run's, and watchers replaying the log still see a run leave their filter."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from runplane.client import Client, EventType, RunStatus
from runplane.server.store.database import Database
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
