"""watch_runs, watch_run and wait_run of the bundled clients, and `runplane runs watch|wait`."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runplane.client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    EventType,
    NotFound,
    RevisionCompacted,
    RunEvent,
    RunStatus,
)
from runplane.server.config import ServerConfig
from tests.support.servers import ServerThread


@pytest.fixture
def client(server_address: str) -> Iterator[Client]:
    with Client(server_address) as client:
        yield client


def in_background(work: object) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


def test_watch_runs_yields_each_change_of_matching_runs(client: Client) -> None:
    first = client.create_run("agent")
    events = client.watch_runs(thread_id=first.thread_id, start_revision=first.revision)
    client.update_run(first.run_id, metadata={"step": 1})
    client.cancel_run(first.run_id)
    seen = list(itertools.islice(events, 3))
    events.close()  # type: ignore[attr-defined]
    assert [(e.type, e.run.status) for e in seen] == [
        (EventType.CREATED, RunStatus.PENDING),
        (EventType.UPDATED, RunStatus.PENDING),
        (EventType.UPDATED, RunStatus.INTERRUPTED),
    ]
    assert seen[1].run.metadata == {"step": 1}
    assert [e.revision for e in seen] == sorted({e.revision for e in seen})


def test_watch_runs_with_initial_state_then_live(client: Client) -> None:
    first = client.create_run("agent")
    events = client.watch_runs(thread_id=first.thread_id, include_initial=True)
    initial = next(events)
    second = client.create_run("agent", thread_id=first.thread_id)
    created = next(events)
    events.close()  # type: ignore[attr-defined]
    assert (initial.type, initial.run.run_id) == (EventType.INITIAL, first.run_id)
    assert (created.type, created.run.run_id, created.revision) == (
        EventType.CREATED,
        second.run_id,
        second.revision,
    )


def test_watch_run_ends_with_the_run(client: Client) -> None:
    run = client.create_run("agent")
    seen: list[RunEvent] = []
    reader = in_background(lambda: seen.extend(client.watch_run(run.run_id)))
    time.sleep(0.2)
    client.cancel_run(run.run_id, reason="done")
    reader.join(10)
    assert not reader.is_alive()
    assert [(e.type, e.run.status) for e in seen] == [
        (EventType.INITIAL, RunStatus.PENDING),
        (EventType.UPDATED, RunStatus.INTERRUPTED),
    ]


def test_wait_run_returns_the_run_once_a_worker_completes_it(client: Client) -> None:
    run = client.create_run("waited-on")
    finished: list[object] = []
    waiter = in_background(lambda: finished.append(client.wait_run(run.run_id, timeout=20)))
    claimed = client.claim_run("worker-1", assistant_ids=["waited-on"])
    assert claimed is not None
    assert claimed.run_id == run.run_id
    client.complete_run(run.run_id, "worker-1", RunStatus.SUCCESS)
    waiter.join(10)
    (done,) = finished
    assert getattr(done, "status", None) is RunStatus.SUCCESS


def test_wait_run_of_a_finished_run_returns_at_once(client: Client) -> None:
    run = client.create_run("agent")
    client.cancel_run(run.run_id)
    assert client.wait_run(run.run_id, timeout=5).status is RunStatus.INTERRUPTED


def test_wait_run_raises_when_the_run_is_deleted_or_unknown(client: Client) -> None:
    run = client.create_run("agent")
    failures: list[BaseException] = []

    def wait() -> None:
        try:
            client.wait_run(run.run_id, timeout=10)
        except NotFound as error:
            failures.append(error)

    waiter = in_background(wait)
    time.sleep(0.2)
    client.cancel_run(run.run_id, action="rollback")
    waiter.join(10)
    assert len(failures) == 1
    with pytest.raises(NotFound):
        client.wait_run(str(run.run_id[:-1] + ("0" if run.run_id[-1] != "0" else "1")))


def test_wait_run_gives_up_after_its_timeout(client: Client) -> None:
    run = client.create_run("agent")
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        client.wait_run(run.run_id, timeout=0.5)
    assert time.monotonic() - started < 3


def test_async_client_watches_and_waits(server_address: str) -> None:
    async def scenario() -> tuple[list[RunEvent], RunStatus]:
        async with AsyncClient(server_address) as client:
            run = await client.create_run("agent")
            events = client.watch_runs(thread_id=run.thread_id, start_revision=run.revision)
            waited = asyncio.create_task(client.wait_run(run.run_id, timeout=10))
            await client.cancel_run(run.run_id)
            seen = [await anext(events), await anext(events)]
            await events.aclose()  # type: ignore[attr-defined]
            return seen, (await waited).status

    seen, status = asyncio.run(scenario())
    assert [e.type for e in seen] == [EventType.CREATED, EventType.UPDATED]
    assert status is RunStatus.INTERRUPTED


def test_watch_below_the_retention_raises_revision_compacted(tmp_path: Path) -> None:
    config = ServerConfig(
        address="127.0.0.1:0",
        database_url=f"sqlite:///{tmp_path / 'runplane.db'}",
        event_retention=0.5,
        compaction_interval=3600,
    )
    server = ServerThread(config).start()
    try:
        with Client(server.address) as client:
            run = client.create_run("agent")
            time.sleep(0.6)
            server.call(server.running.compactor.compact_now())
            with pytest.raises(RevisionCompacted) as raised:
                next(client.watch_runs(start_revision=run.revision))
            assert raised.value.compact_revision == run.revision
            assert raised.value.current_revision == run.revision
    finally:
        server.stop()
