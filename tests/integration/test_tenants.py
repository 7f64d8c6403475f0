"""Two tenants on one server, both databases: neither can see, interrupt, roll back,
block, reorder or replay the other's runs, even on the same thread_id.

`alice` writes and works in `team-a`, `bob` in `team-b`; `auditor` reads both.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.auth import Caller
from tests.support.stubs import failure
from tests.support.tenants import TEAM_A, TEAM_B, Tenants, bearer, secured_server
from tests.support.watching import cancel

pytestmark = pytest.mark.timeout(60)

ALICE = Caller("alice", [(TEAM_A, "writer"), (TEAM_A, "worker")])
BOB = Caller("bob", [(TEAM_B, "writer"), (TEAM_B, "worker")])
AUDITOR = Caller("auditor", [(TEAM_A, "reader"), (TEAM_B, "reader")])
REJECT = run_pb2.MULTITASK_STRATEGY_REJECT
INTERRUPT = run_pb2.MULTITASK_STRATEGY_INTERRUPT
ROLLBACK = run_pb2.MULTITASK_STRATEGY_ROLLBACK


@pytest.fixture(scope="module")
def tenants(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    folder: Path = tmp_path_factory.mktemp("tenants")
    with secured_server(backend, folder, [ALICE, BOB, AUDITOR]) as tenants:
        yield tenants


def new_id() -> str:
    return str(uuid.uuid4())


def status_of(tenants: Tenants, caller: Caller, run_id: str) -> int:
    run: run_pb2.Run = tenants.call(caller, "GetRun", run_service_pb2.GetRunRequest(run_id=run_id))
    return run.status


# -- threads are per namespace --------------------------------------------------------------


@pytest.mark.parametrize("strategy", [REJECT, INTERRUPT, ROLLBACK])
def test_a_strategy_reaches_only_its_own_namespace(
    tenants: Tenants, strategy: run_pb2.MultitaskStrategy.ValueType
) -> None:
    thread = new_id()
    alices = tenants.create(TEAM_A, ALICE, thread_id=thread)
    bobs = tenants.create(TEAM_B, BOB, thread_id=thread, multitask_strategy=strategy)
    assert bobs.status == run_pb2.RUN_STATUS_PENDING
    assert status_of(tenants, ALICE, alices.run_id) == run_pb2.RUN_STATUS_PENDING
    # Within one namespace the strategy does apply to the thread.
    if strategy == REJECT:
        with pytest.raises(grpc.RpcError) as refused:
            tenants.create(TEAM_A, ALICE, thread_id=thread, multitask_strategy=strategy)
        assert failure(refused.value).metadata["run_id"] == alices.run_id
    else:
        tenants.create(TEAM_A, ALICE, thread_id=thread, multitask_strategy=strategy)
        if strategy == INTERRUPT:
            assert status_of(tenants, ALICE, alices.run_id) == run_pb2.RUN_STATUS_INTERRUPTED
        else:
            with pytest.raises(grpc.RpcError) as gone:
                status_of(tenants, ALICE, alices.run_id)
            assert failure(gone.value).code == grpc.StatusCode.NOT_FOUND
    assert status_of(tenants, BOB, bobs.run_id) == run_pb2.RUN_STATUS_PENDING


def claim(tenants: Tenants, caller: Caller, assistant: str) -> str:
    """The id of the run `caller` claims now, or "" if none is claimable."""
    request = run_service_pb2.ClaimRunRequest(worker_id=caller.name, assistant_ids=[assistant])
    claimed: run_service_pb2.ClaimRunResponse = tenants.call(caller, "ClaimRun", request)
    return claimed.run.run_id


def test_one_running_run_and_fifo_hold_per_namespace(tenants: Tenants) -> None:
    thread, assistant = new_id(), f"fifo-{uuid.uuid4().hex[:8]}"
    first = tenants.create(TEAM_A, ALICE, thread_id=thread, assistant_id=assistant)
    second = tenants.create(TEAM_A, ALICE, thread_id=thread, assistant_id=assistant)
    bobs = tenants.create(TEAM_B, BOB, thread_id=thread, assistant_id=assistant)
    assert claim(tenants, ALICE, assistant) == first.run_id
    # Alice's thread is busy; Bob's run on the same thread_id is not behind it.
    assert claim(tenants, ALICE, assistant) == ""
    assert claim(tenants, BOB, assistant) == bobs.run_id
    # Nor is Alice's next run behind Bob's running one.
    complete = run_service_pb2.CompleteRunRequest(
        run_id=first.run_id, worker_id=ALICE.name, status=run_pb2.RUN_STATUS_SUCCESS
    )
    tenants.call(ALICE, "CompleteRun", complete)
    assert claim(tenants, ALICE, assistant) == second.run_id


def test_request_ids_are_per_namespace(tenants: Tenants) -> None:
    key = f"order-{uuid.uuid4().hex}"
    alices = tenants.create(TEAM_A, ALICE, request_id=key)
    bobs = tenants.create(TEAM_B, BOB, request_id=key)
    assert bobs.run_id != alices.run_id
    assert (bobs.namespace, bobs.created_by) == (TEAM_B, BOB.name)
    assert tenants.create(TEAM_A, ALICE, request_id=key).run_id == alices.run_id
    assert tenants.create(TEAM_B, BOB, request_id=key).run_id == bobs.run_id


CALLERS = 12


async def create_at_once(address: str, calls: list[tuple[Caller, str, str]]) -> list[object]:
    """CreateRun for each (caller, namespace, request_id) in `calls`, all released at once,
    REJECT on one thread_id: what each got back (a Run or an error)."""
    thread = new_id()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        start = asyncio.Event()

        async def one(caller: Caller, namespace: str, request_id: str) -> run_pb2.Run:
            request = run_service_pb2.CreateRunRequest(
                assistant_id="racer",
                thread_id=thread,
                namespace=namespace,
                request_id=request_id,
                multitask_strategy=REJECT,
            )
            await start.wait()
            return await stub.CreateRun(request, metadata=bearer(caller))

        tasks = [asyncio.create_task(one(*call)) for call in calls]
        await asyncio.sleep(0.05)
        start.set()
        return list(await asyncio.gather(*tasks, return_exceptions=True))


def test_racing_tenants_each_get_exactly_their_own_run(tenants: Tenants) -> None:
    """The same request_id, and REJECT on the same thread_id, from both tenants at once:
    each namespace gets exactly one run; the rest are repeats or THREAD_BUSY in their own
    namespace only."""
    key = f"race-{uuid.uuid4().hex}"
    same_key = [(ALICE, TEAM_A, key), (BOB, TEAM_B, key)] * CALLERS
    outcomes = asyncio.run(create_at_once(tenants.address, same_key))
    runs = [outcome for outcome in outcomes if isinstance(outcome, run_pb2.Run)]
    assert len(runs) == 2 * CALLERS  # every repeat returns the namespace's first run
    by_run = Counter((run.namespace, run.run_id) for run in runs)
    assert sorted(by_run.values()) == [CALLERS, CALLERS]
    assert {namespace for namespace, _ in by_run} == {TEAM_A, TEAM_B}

    no_key = [(ALICE, TEAM_A, ""), (BOB, TEAM_B, "")] * CALLERS
    outcomes = asyncio.run(create_at_once(tenants.address, no_key))
    winners = Counter(o.namespace for o in outcomes if isinstance(o, run_pb2.Run))
    assert winners == {TEAM_A: 1, TEAM_B: 1}
    losers = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert Counter(error.code() for error in losers) == {
        grpc.StatusCode.FAILED_PRECONDITION: 2 * CALLERS - 2
    }


# -- listings --------------------------------------------------------------------------------


def test_listings_never_show_another_tenants_runs(tenants: Tenants) -> None:
    thread = new_id()
    alices = [tenants.create(TEAM_A, ALICE, thread_id=thread).run_id for _ in range(3)]
    bobs = [tenants.create(TEAM_B, BOB, thread_id=thread).run_id for _ in range(3)]

    def listed(caller: Caller, namespace: str = "") -> list[str]:
        return [run.run_id for run in tenants.listed(caller, namespace, thread_id=thread)]

    newest_first = list(reversed(alices + bobs))
    assert listed(BOB) == [run_id for run_id in newest_first if run_id in bobs]
    assert listed(BOB, TEAM_B) == [run_id for run_id in newest_first if run_id in bobs]
    assert listed(BOB, TEAM_A) == []
    assert listed(ALICE) == [run_id for run_id in newest_first if run_id in alices]
    # A reader of both sees both, interleaved in order, page after page.
    assert listed(AUDITOR) == newest_first
    everything = {run.run_id for run in tenants.listed(BOB)}
    assert everything.isdisjoint(alices)


def test_a_page_token_is_bound_to_the_namespaces_it_was_read_in(tenants: Tenants) -> None:
    thread = new_id()
    for _ in range(2):
        tenants.create(TEAM_A, ALICE, thread_id=thread)
    first = run_service_pb2.ListRunsRequest(
        filter=run_service_pb2.RunFilter(thread_id=thread), page_size=1
    )
    token = tenants.call(ALICE, "ListRuns", first).next_page_token
    assert token
    following = run_service_pb2.ListRunsRequest(
        filter=run_service_pb2.RunFilter(thread_id=thread), page_size=1, page_token=token
    )
    assert len(tenants.call(ALICE, "ListRuns", following).runs) == 1
    # The same filter by a caller reading other namespaces is another query.
    for caller in (BOB, AUDITOR):
        with pytest.raises(grpc.RpcError) as refused:
            tenants.call(caller, "ListRuns", following)
        found = failure(refused.value)
        assert (found.code, set(found.violations)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            {"page_token"},
        )


# -- watches ---------------------------------------------------------------------------------


def watch(tenants: Tenants, caller: Caller, request: run_service_pb2.WatchRunsRequest) -> Any:
    """The streaming call (iterate it for responses; `cancel` it when done)."""
    return tenants.stub.WatchRuns(request, metadata=bearer(caller), timeout=30)


def read_until(
    stream: Iterator[run_service_pb2.WatchRunsResponse],
    done: Callable[[run_service_pb2.WatchRunsResponse], bool],
) -> list[run_service_pb2.WatchRunsResponse]:
    seen = []
    for response in stream:
        seen.append(response)
        if done(response):
            return seen
    raise AssertionError("the stream ended first")


def events_of(responses: list[run_service_pb2.WatchRunsResponse]) -> list[run_pb2.RunEvent]:
    return [event for response in responses for event in response.events]


def alice_works_on(tenants: Tenants, thread: str) -> int:
    """Create, update, cancel and delete runs of team-a on `thread`; the last revision."""
    run = tenants.create(TEAM_A, ALICE, thread_id=thread)
    mask = field_mask_pb2.FieldMask(paths=["metadata"])
    update = run_service_pb2.UpdateRunRequest(run=run_pb2.Run(run_id=run.run_id), update_mask=mask)
    tenants.call(ALICE, "UpdateRun", update)
    tenants.cancel_run(run.run_id, ALICE)
    tenants.call(ALICE, "DeleteRun", run_service_pb2.DeleteRunRequest(run_id=run.run_id))
    rolled_back = tenants.create(TEAM_A, ALICE, thread_id=thread)
    tenants.call(
        ALICE,
        "CancelRun",
        run_service_pb2.CancelRunRequest(
            run_id=rolled_back.run_id, action=run_pb2.CANCEL_ACTION_ROLLBACK
        ),
    )
    last: run_pb2.Run = tenants.create(TEAM_A, ALICE, thread_id=thread)
    return last.revision


def test_a_live_watch_carries_only_its_tenants_events(tenants: Tenants) -> None:
    thread = new_id()
    request = run_service_pb2.WatchRunsRequest(progress_interval=duration_pb2.Duration(seconds=1))
    bobs_stream = watch(tenants, BOB, request)
    auditors_stream = watch(tenants, AUDITOR, request)
    next(iter(bobs_stream))  # open: it starts from here
    next(iter(auditors_stream))
    alices_last = alice_works_on(tenants, thread)
    # Nothing of Alice's; a bookmark tells Bob that the store moved past her changes.
    quiet = read_until(bobs_stream, lambda response: response.revision >= alices_last)
    assert events_of(quiet) == []
    bobs = tenants.create(TEAM_B, BOB, thread_id=thread)
    seen = read_until(bobs_stream, lambda response: bool(response.events))
    assert [(e.type, e.run.run_id) for e in events_of(seen)] == [
        (run_pb2.EVENT_TYPE_CREATED, bobs.run_id)
    ]
    # A reader of both namespaces saw all of it: there was something to leak.
    audited = events_of(read_until(auditors_stream, lambda r: r.revision >= bobs.revision))
    assert Counter(event.run.namespace for event in audited) == {TEAM_A: 7, TEAM_B: 1}
    cancel(bobs_stream)
    cancel(auditors_stream)


def test_a_replayed_watch_carries_only_its_tenants_events(tenants: Tenants) -> None:
    thread = new_id()
    start = tenants.create(TEAM_B, BOB, thread_id=thread)
    alice_works_on(tenants, thread)
    bobs = tenants.create(TEAM_B, BOB, thread_id=thread)
    for namespace in ("", TEAM_B, TEAM_A):
        request = run_service_pb2.WatchRunsRequest(
            filter=run_service_pb2.RunFilter(namespace=namespace),
            start_revision=start.revision,
            progress_interval=duration_pb2.Duration(seconds=1),
        )
        stream = watch(tenants, BOB, request)
        replayed = events_of(read_until(stream, lambda r: r.revision >= bobs.revision))
        cancel(stream)
        expected = [] if namespace == TEAM_A else [start.run_id, bobs.run_id]
        assert [event.run.run_id for event in replayed] == expected


def test_an_initial_state_holds_only_its_tenants_runs(tenants: Tenants) -> None:
    thread = new_id()
    alices = tenants.create(TEAM_A, ALICE, thread_id=thread)
    bobs = tenants.create(TEAM_B, BOB, thread_id=thread)
    assert [run.run_id for run in tenants.initial(BOB, thread_id=thread)] == [bobs.run_id]
    assert tenants.initial(BOB, TEAM_A, thread_id=thread) == []
    both = [run.run_id for run in tenants.initial(AUDITOR, thread_id=thread)]
    assert both == [alices.run_id, bobs.run_id]


def test_a_deleted_run_of_another_tenant_cannot_be_replayed(tenants: Tenants) -> None:
    run = tenants.create(TEAM_A, ALICE)
    tenants.cancel_run(run.run_id, ALICE)
    tenants.call(ALICE, "DeleteRun", run_service_pb2.DeleteRunRequest(run_id=run.run_id))

    def replay(caller: Caller, run_id: str) -> list[int]:
        request = run_service_pb2.WatchRunRequest(run_id=run_id, start_revision=run.revision)
        stream = tenants.stub.WatchRun(request, metadata=bearer(caller), timeout=10)
        return [event.type for response in stream for event in response.events]

    # Its own tenant replays it up to the change that ended it.
    assert replay(ALICE, run.run_id) == [run_pb2.EVENT_TYPE_CREATED, run_pb2.EVENT_TYPE_UPDATED]
    for run_id in (run.run_id, new_id()):  # Alice's, and one that never was: alike
        with pytest.raises(grpc.RpcError) as refused:
            replay(BOB, run_id)
        found = failure(refused.value)
        assert (found.code, found.metadata) == (grpc.StatusCode.NOT_FOUND, {"run_id": run_id})


def test_a_run_id_taken_again_replays_only_the_new_tenants_history(tenants: Tenants) -> None:
    run_id = new_id()
    alices = tenants.create(TEAM_A, ALICE, run_id=run_id)
    tenants.cancel_run(run_id, ALICE)
    tenants.call(ALICE, "DeleteRun", run_service_pb2.DeleteRunRequest(run_id=run_id))
    tenants.create(TEAM_B, BOB, run_id=run_id)  # the id is free again, in another namespace
    request = run_service_pb2.WatchRunRequest(run_id=run_id, start_revision=alices.revision)
    stream = tenants.stub.WatchRun(request, metadata=bearer(BOB), timeout=10)
    first = next(iter(stream))
    cancel(stream)
    assert [(event.type, event.run.namespace) for event in first.events] == [
        (run_pb2.EVENT_TYPE_CREATED, TEAM_B)
    ]


def test_a_run_never_moves_to_another_namespace(tenants: Tenants) -> None:
    run = tenants.create(TEAM_A, ALICE)
    moved = run_pb2.Run(run_id=run.run_id, namespace=TEAM_B)
    for paths in (["namespace"], ["namespace", "metadata"]):
        update = run_service_pb2.UpdateRunRequest(
            run=moved, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        with pytest.raises(grpc.RpcError) as refused:
            tenants.call(ALICE, "UpdateRun", update)
        found = failure(refused.value)
        assert (found.code, set(found.violations)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            {"update_mask"},
        )
    assert status_of(tenants, ALICE, run.run_id) == run_pb2.RUN_STATUS_PENDING
    stored = tenants.call(ALICE, "GetRun", run_service_pb2.GetRunRequest(run_id=run.run_id))
    assert (stored.namespace, stored.revision) == (TEAM_A, run.revision)


def test_created_by_names_the_admitted_principal(tenants: Tenants) -> None:
    run = tenants.create(TEAM_B, BOB)
    assert run.created_by == BOB.name
    stored = tenants.call(AUDITOR, "GetRun", run_service_pb2.GetRunRequest(run_id=run.run_id))
    assert stored.created_by == BOB.name
