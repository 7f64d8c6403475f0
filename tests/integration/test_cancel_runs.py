"""CancelRuns: every inflight run a filter matches, cancelled in one transaction, on SQLite
and PostgreSQL, through the client and raw stubs; and raced by workers claiming the runs
it cancels, on one server and across two replicas."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf import struct_pb2

from runplane.client import (
    AsyncClient,
    CancelAction,
    CancelledRuns,
    Client,
    FailedPrecondition,
    InvalidArgument,
    RunStatus,
)
from runplane.server import runs
from runplane.server.access import Access
from runplane.server.pages import PageTokens
from runplane.server.policy import ANONYMOUS, Role
from runplane.server.records import Run, RunFilter
from runplane.server.requests import CreateRun
from runplane.server.runs import RunService
from runplane.server.store.database import Database
from runplane.server.store.migrate import upgrade
from runplane.server.store.run_store import LockBusy
from runplane.server.store.unit_of_work import UnitOfWork
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.databases import fresh_postgres_database
from tests.support.serve_process import ServeProcess
from tests.support.stubs import refused, run_service
from tests.support.watching import cancel

Stub = run_service_pb2_grpc.RunServiceStub
R = TypeVar("R")
T = TypeVar("T")
ADMIN = Access(ANONYMOUS, Role.ADMIN)
PENDING, RUNNING = run_pb2.RUN_STATUS_PENDING, run_pb2.RUN_STATUS_RUNNING
INTERRUPTED, SUCCESS = run_pb2.RUN_STATUS_INTERRUPTED, run_pb2.RUN_STATUS_SUCCESS


@pytest.fixture
def client(server_address: str) -> Iterator[Client]:
    with Client(server_address) as client:
        yield client


def _current_revision(client: Client) -> int:
    return next(client.list_runs(thread_id=str(uuid.uuid4())).pages()).revision


def _events(stub: Stub, assistant: str, start: int, end: int) -> list[run_pb2.RunEvent]:
    """The assistant's events from revision `start` through `end`, from the event log."""
    request = run_service_pb2.WatchRunsRequest(
        filter=run_service_pb2.RunFilter(assistant_id=assistant), start_revision=start
    )
    stream = stub.WatchRuns(request, timeout=30)
    events: list[run_pb2.RunEvent] = []
    try:
        for response in stream:
            events.extend(response.events)
            if response.revision >= end:
                return events
    finally:
        cancel(stream)
    raise AssertionError("the watch ended before reaching the revision")


# -- what it cancels -------------------------------------------------------------------------


def test_a_thread_is_cancelled_whole_and_its_ended_runs_and_other_threads_stay(
    client: Client, assistant: str
) -> None:
    thread_id = str(uuid.uuid4())
    done = client.create_run(assistant, thread_id=thread_id)
    client.cancel_run(done.run_id, reason="earlier")
    queued = [client.create_run(assistant, thread_id=thread_id) for _ in range(3)]
    running = client.claim_run("w1", assistant_ids=[assistant])
    assert running is not None
    assert running.run_id == queued[0].run_id
    elsewhere = client.create_run(assistant)

    cancelled = client.cancel_runs(thread_id=thread_id, reason="bulk")

    assert isinstance(cancelled, CancelledRuns)
    assert cancelled.count == 3
    after = {run.run_id: run for run in client.list_runs(assistant_id=assistant)}
    assert {after[run.run_id].status for run in queued} == {RunStatus.INTERRUPTED}
    assert {after[run.run_id].cancel_reason for run in queued} == {"bulk"}
    assert cancelled.revision == max(after[run.run_id].revision for run in queued)
    assert (after[done.run_id].cancel_reason, after[done.run_id].revision) == (
        "earlier",
        client.get_run(done.run_id).revision,
    )
    assert after[elsewhere.run_id].status is RunStatus.PENDING
    assert client.cancel_runs(thread_id=thread_id).count == 0


def test_interrupt_yields_one_update_per_run_in_consecutive_revisions(
    client: Client, stub: Stub, assistant: str
) -> None:
    created = [client.create_run(assistant, metadata={"batch": "b1"}) for _ in range(4)]
    client.create_run(assistant, metadata={"batch": "b2"})
    start = _current_revision(client) + 1

    cancelled = client.cancel_runs(metadata={"batch": "b1"})

    events = _events(stub, assistant, start, cancelled.revision)
    assert [event.revision for event in events] == list(range(start, cancelled.revision + 1))
    assert cancelled.count == len(events) == 4
    assert {event.type for event in events} == {run_pb2.EVENT_TYPE_UPDATED}
    assert {event.run.run_id for event in events} == {run.run_id for run in created}
    assert {event.run.status for event in events} == {INTERRUPTED}
    assert {event.run.cancel_reason for event in events} == {"cancelled"}


def test_rollback_through_raw_stubs_deletes_the_runs(stub: Stub, assistant: str) -> None:
    created = [
        stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id=assistant)) for _ in range(3)
    ]
    request = run_service_pb2.CancelRunsRequest(
        filter=run_service_pb2.RunFilter(assistant_id=assistant),
        action=run_pb2.CANCEL_ACTION_ROLLBACK,
    )

    response = stub.CancelRuns(request)

    events = _events(stub, assistant, response.revision - 2, response.revision)
    assert response.count == 3
    assert [event.type for event in events] == [run_pb2.EVENT_TYPE_DELETED] * 3
    assert {event.run.run_id for event in events} == {run.run_id for run in created}
    assert {event.run.status for event in events} == {PENDING}  # their last state
    for run in created:
        get = run_service_pb2.GetRunRequest(run_id=run.run_id)
        found = refused(lambda get=get: stub.GetRun(get))  # type: ignore[misc]
        assert found.code == grpc.StatusCode.NOT_FOUND


def test_statuses_and_metadata_narrow_what_is_cancelled(client: Client, assistant: str) -> None:
    running = client.create_run(assistant, metadata={"team": "x", "n": 1})
    assert client.claim_run("w1", assistant_ids=[assistant]) is not None
    pending = client.create_run(assistant, metadata={"team": "x", "n": 2})
    other_team = client.create_run(assistant, metadata={"team": "y"})

    assert client.cancel_runs(assistant_id=assistant, statuses=["success"]).count == 0
    only_pending = client.cancel_runs(
        assistant_id=assistant, metadata={"team": "x"}, statuses=[RunStatus.PENDING]
    )

    assert only_pending.count == 1
    assert client.get_run(pending.run_id).status is RunStatus.INTERRUPTED
    assert client.get_run(running.run_id).status is RunStatus.RUNNING
    assert client.get_run(other_team.run_id).status is RunStatus.PENDING
    assert client.cancel_runs(metadata={"team": "x"}, action=CancelAction.ROLLBACK).count == 1
    assert [
        run.run_id for run in client.list_runs(assistant_id=assistant, statuses=["running"])
    ] == []


def test_nothing_matched_answers_the_current_revision(client: Client) -> None:
    revision = _current_revision(client)
    cancelled = client.cancel_runs(assistant_id=f"nobody-{uuid.uuid4()}")
    assert (cancelled.count, cancelled.revision) == (0, revision)


def test_a_filter_that_selects_no_thread_assistant_or_metadata_is_invalid(
    client: Client, stub: Stub, assistant: str
) -> None:
    run = client.create_run(assistant)
    for run_filter in (
        run_service_pb2.RunFilter(),
        run_service_pb2.RunFilter(statuses=[PENDING]),
        run_service_pb2.RunFilter(namespace="default"),
        run_service_pb2.RunFilter(metadata=struct_pb2.Struct()),
    ):
        found = refused(
            lambda f=run_filter: stub.CancelRuns(run_service_pb2.CancelRunsRequest(filter=f))  # type: ignore[misc]
        )
        assert (found.code, found.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert "filter" in found.violations
    with pytest.raises(InvalidArgument):
        client.cancel_runs(statuses=["pending"])
    bad = refused(
        lambda: stub.CancelRuns(
            run_service_pb2.CancelRunsRequest(
                filter=run_service_pb2.RunFilter(thread_id="not-a-uuid"),
                action=7,  # type: ignore[arg-type]
            )
        )
    )
    assert set(bad.violations) == {"filter.thread_id", "action"}
    assert client.get_run(run.run_id).status is RunStatus.PENDING


def test_a_filter_matching_more_than_the_limit_cancels_nothing(
    client: Client, assistant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server runs in this process: its limit, lowered, is the one it applies.
    monkeypatch.setattr(runs, "MAX_CANCELLED", 3)
    created = [client.create_run(assistant) for _ in range(4)]

    with pytest.raises(FailedPrecondition) as refusal:
        client.cancel_runs(assistant_id=assistant)

    assert (refusal.value.reason, refusal.value.metadata) == ("TOO_MANY_RUNS", {"limit": "3"})
    assert {client.get_run(run.run_id).status for run in created} == {RunStatus.PENDING}
    client.cancel_run(created[0].run_id)
    assert client.cancel_runs(assistant_id=assistant).count == 3


def test_the_next_run_of_a_cancelled_head_becomes_claimable(client: Client, assistant: str) -> None:
    for action in (CancelAction.INTERRUPT, CancelAction.ROLLBACK):
        thread_id = str(uuid.uuid4())
        head = client.create_run(assistant, thread_id=thread_id, metadata={"first": True})
        second = client.create_run(assistant, thread_id=thread_id)
        assert client.claim_run("w1", assistant_ids=[assistant]) is not None
        assert client.claim_run("w2", assistant_ids=[assistant]) is None  # the thread is busy

        assert client.cancel_runs(metadata={"first": True}, action=action).count == 1

        claimed = client.claim_run("w2", assistant_ids=[assistant])
        assert claimed is not None
        assert claimed.run_id == second.run_id
        assert head.run_id != claimed.run_id
        client.complete_run(claimed.run_id, "w2", RunStatus.SUCCESS)


def test_the_async_client_cancels_in_its_namespace_only(server_address: str) -> None:
    thread_id = str(uuid.uuid4())

    async def scenario() -> tuple[CancelledRuns, list[RunStatus], list[RunStatus]]:
        async with (
            AsyncClient(server_address, namespace="team-a") as team_a,
            AsyncClient(server_address, namespace="team-b") as team_b,
        ):
            mine = [await team_a.create_run("agent", thread_id=thread_id) for _ in range(2)]
            theirs = await team_b.create_run("agent", thread_id=thread_id)
            done = await team_a.cancel_runs(thread_id=thread_id)
            statuses = [(await team_a.get_run(run.run_id)).status for run in mine]
            return done, statuses, [(await team_b.get_run(theirs.run_id)).status]

    done, mine, theirs = asyncio.run(scenario())
    assert done.count == 2
    assert mine == [RunStatus.INTERRUPTED] * 2
    assert theirs == [RunStatus.PENDING]


# -- the race --------------------------------------------------------------------------------

THREADS, PER_THREAD, CLAIMERS = 24, 4, 12


@dataclass
class Race:
    claims: list[run_pb2.Run] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    lost: Counter[grpc.StatusCode] = field(default_factory=Counter)
    """Completions refused: the run was cancelled while its worker held it."""
    attempts: list[int] = field(default_factory=lambda: [0] * CLAIMERS)


async def _served(method: Callable[[R], Awaitable[T]], request: R) -> T:
    """The call's answer, the request sent again while the server answers UNAVAILABLE, as a worker
    does: a write refused so was not made (on PostgreSQL, the loser of a deadlock between
    replicas' transactions is refused so)."""
    while True:
        try:
            return await method(request)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(0.01)


async def _race(
    claim_addresses: list[str],
    cancel_address: str,
    assistant: str,
    action: run_pb2.CancelAction.ValueType,
) -> tuple[Race, run_service_pb2.CancelRunsResponse]:
    """Workers claim and complete the assistant's runs until a CancelRuns (sent once a
    few runs succeeded) has cancelled the rest, and a few claims more."""
    race = Race()
    channels = [grpc.aio.insecure_channel(address) for address in claim_addresses]
    stop, some_succeeded = asyncio.Event(), asyncio.Event()

    async def worker(index: int) -> None:
        stub = run_service_pb2_grpc.RunServiceStub(channels[index % len(channels)])
        worker_id = f"w{index}"
        while not stop.is_set():
            race.attempts[index] += 1
            claim = run_service_pb2.ClaimRunRequest(worker_id=worker_id, assistant_ids=[assistant])
            response = await _served(stub.ClaimRun, claim)
            if not response.HasField("run"):
                await asyncio.sleep(0.005)
                continue
            race.claims.append(response.run)
            complete = run_service_pb2.CompleteRunRequest(
                run_id=response.run.run_id, worker_id=worker_id, status=SUCCESS
            )
            try:
                await _served(stub.CompleteRun, complete)
                race.completed.append(response.run.run_id)
                if len(race.completed) >= 5:
                    some_succeeded.set()
            except grpc.aio.AioRpcError as error:
                race.lost[error.code()] += 1

    async with grpc.aio.insecure_channel(cancel_address) as cancel_channel:
        tasks = [asyncio.create_task(worker(i)) for i in range(CLAIMERS)]
        try:
            await some_succeeded.wait()
            cancel_stub = run_service_pb2_grpc.RunServiceStub(cancel_channel)
            cancel = run_service_pb2.CancelRunsRequest(
                filter=run_service_pb2.RunFilter(assistant_id=assistant), action=action
            )
            response = await _served(cancel_stub.CancelRuns, cancel)
            # Every worker looks twice more, after the cancel committed.
            seen = list(race.attempts)
            while not any(task.done() for task in tasks) and any(  # noqa: ASYNC110
                now < then + 2 for now, then in zip(race.attempts, seen, strict=True)
            ):
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            for channel in channels:
                await channel.close(None)
    return race, response


def _check_race(
    stub: Stub, assistant: str, claim_addresses: list[str], action: run_pb2.CancelAction.ValueType
) -> None:
    thread_ids = [str(uuid.uuid4()) for _ in range(THREADS)]
    created = [
        stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id=assistant, thread_id=t))
        for t in thread_ids
        for _ in range(PER_THREAD)
    ]
    start = max(run.revision for run in created) + 1
    race, response = asyncio.run(_race(claim_addresses, claim_addresses[0], assistant, action))
    total = THREADS * PER_THREAD
    first_cancel = response.revision - response.count + 1

    # Every run ended once: completed by its worker, or cancelled.
    assert response.count > 0
    assert len(race.completed) + response.count == total
    assert len(set(race.completed)) == len(race.completed)
    claimed = Counter(run.run_id for run in race.claims)
    assert set(claimed.values()) == {1}
    lost_code = (
        grpc.StatusCode.FAILED_PRECONDITION  # LEASE_LOST
        if action == run_pb2.CANCEL_ACTION_INTERRUPT
        else grpc.StatusCode.NOT_FOUND  # rolled back: deleted
    )
    assert set(race.lost) <= {lost_code}
    assert len(race.claims) == len(race.completed) + sum(race.lost.values())

    # The log: claims and completions, then the cancel's changes, then nothing.
    events = _events(stub, assistant, start, response.revision)
    assert [event.revision for event in events] == list(range(start, response.revision + 1))
    cancelling = [event for event in events if event.revision >= first_cancel]
    assert len(cancelling) == response.count
    if action == run_pb2.CANCEL_ACTION_INTERRUPT:
        assert {(e.type, e.run.status) for e in cancelling} == {
            (run_pb2.EVENT_TYPE_UPDATED, INTERRUPTED)
        }
    else:
        assert {e.type for e in cancelling} == {run_pb2.EVENT_TYPE_DELETED}
    cancelled = {event.run.run_id for event in cancelling}
    assert cancelled.isdisjoint(race.completed)
    assert cancelled | set(race.completed) == {run.run_id for run in created}
    claims = [e for e in events if e.run.status == RUNNING and e.type == run_pb2.EVENT_TYPE_UPDATED]
    assert len(claims) == len(race.claims)
    assert all(e.revision < first_cancel for e in claims)
    # Runs cancelled while RUNNING are the ones whose worker lost them.
    assert len(cancelled & set(claimed)) == sum(race.lost.values())

    # Nothing of the assistant is inflight, and each thread takes new runs again.
    listed = stub.ListRuns(
        run_service_pb2.ListRunsRequest(
            filter=run_service_pb2.RunFilter(assistant_id=assistant, statuses=[PENDING, RUNNING])
        )
    )
    assert list(listed.runs) == []
    fresh = {
        stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id=assistant, thread_id=t)).run_id
        for t in thread_ids
    }
    claim = run_service_pb2.ClaimRunRequest(worker_id="after", assistant_ids=[assistant])
    assert {stub.ClaimRun(claim).run.run_id for _ in thread_ids} == fresh


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "action",
    [run_pb2.CANCEL_ACTION_INTERRUPT, run_pb2.CANCEL_ACTION_ROLLBACK],
    ids=["interrupt", "rollback"],
)
def test_cancel_runs_racing_claims_ends_each_run_once(
    stub: Stub, server_address: str, assistant: str, action: run_pb2.CancelAction.ValueType
) -> None:
    _check_race(stub, assistant, [server_address], action)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_cancel_runs_on_one_replica_racing_claims_on_another(tmp_path: Path) -> None:
    with (
        fresh_postgres_database() as url,
        ServeProcess("127.0.0.1:0", url, tmp_path) as first,
        ServeProcess("127.0.0.1:0", url, tmp_path) as second,
        run_service(first.address) as stub,
    ):
        # The cancel goes to the first replica; the workers claim on both.
        addresses = [first.address, second.address]
        _check_race(stub, f"replicas-{uuid.uuid4()}", addresses, run_pb2.CANCEL_ACTION_INTERRUPT)


@pytest.mark.postgres
def test_a_thread_another_transaction_holds_is_waited_for_only_where_the_unit_may() -> None:
    """A group's later member only tries its threads' locks: one held elsewhere (by a
    replica's claim, say) is LockBusy at once. Where it may wait, it waits."""
    with fresh_postgres_database() as url:
        database = Database(url)
        try:
            upgrade(database.engine)
            service = RunService(database, PageTokens(b"k" * 32))
            thread_ids = [str(uuid.uuid4()) for _ in range(3)]
            for thread_id in thread_ids:
                asyncio.run(service.create(CreateRun("agent", thread_id=thread_id, access=ADMIN)))
            run_filter = RunFilter(assistant_id="agent", namespaces=None)

            def matching(*, wait: bool) -> list[Run]:
                with database.engine.begin() as connection:
                    unit = UnitOfWork(connection, database._dialect)
                    unit.runs.wait_for_locks = wait
                    return unit.runs.inflight_matching(run_filter, 10)

            with database.engine.begin() as holder:
                UnitOfWork(holder, database._dialect).runs.lock_thread("default", thread_ids[1])
                with pytest.raises(LockBusy):
                    matching(wait=False)
                waiting = ThreadPoolExecutor(1).submit(matching, wait=True)
                time.sleep(0.3)
                assert not waiting.done()
            found = waiting.result(timeout=20)
            assert [run.thread_id for run in found] == thread_ids
        finally:
            database.dispose()
