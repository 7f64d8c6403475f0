"""The executor protocol through raw stubs: claims, leases, heartbeats, completion, sweeps.

Each test claims only its own assistant's runs, so tests sharing a server stay apart.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.databases import fresh_postgres_database
from tests.support.serve_process import ServeProcess
from tests.support.stubs import failure, run_service, seconds

Stub = run_service_pb2_grpc.RunServiceStub


@pytest.fixture
def assistant() -> str:
    return f"assistant-{uuid.uuid4()}"


def create(stub: Stub, assistant: str, **fields: object) -> run_pb2.Run:
    return stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id=assistant, **fields))  # type: ignore[arg-type]


def claim(
    stub: Stub, assistant: str, worker: str = "w1", lease: float = 30, wait: float = 0
) -> run_pb2.Run | None:
    response = stub.ClaimRun(
        run_service_pb2.ClaimRunRequest(
            worker_id=worker,
            assistant_ids=[assistant],
            lease_duration=seconds(lease),
            wait=seconds(wait),
        ),
        timeout=wait + 10,
    )
    return response.run if response.HasField("run") else None


def complete(
    stub: Stub, run: run_pb2.Run, status: run_pb2.RunStatus.ValueType = run_pb2.RUN_STATUS_SUCCESS
) -> run_pb2.Run:
    return stub.CompleteRun(
        run_service_pb2.CompleteRunRequest(
            run_id=run.run_id, worker_id=run.worker_id, status=status
        )
    )


def get(stub: Stub, run_id: str) -> run_pb2.Run:
    return stub.GetRun(run_service_pb2.GetRunRequest(run_id=run_id))


def wait_until(check: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_claim_marks_run_running_with_lease_and_attempt(stub: Stub, assistant: str) -> None:
    run = create(stub, assistant)
    before = time.time()
    claimed = claim(stub, assistant, worker="worker-a", lease=20)
    assert claimed is not None
    assert claimed.run_id == run.run_id
    assert (claimed.status, claimed.attempt, claimed.worker_id) == (
        run_pb2.RUN_STATUS_RUNNING,
        1,
        "worker-a",
    )
    assert claimed.started_at.ToSeconds() >= int(before) - 1
    assert 15 < claimed.lease_expires_at.ToSeconds() - before < 25
    assert claimed.revision > run.revision
    assert claim(stub, assistant) is None


def test_thread_runs_are_claimed_one_at_a_time_in_creation_order(
    stub: Stub, assistant: str
) -> None:
    thread_id = str(uuid.uuid4())
    queued = [create(stub, assistant, thread_id=thread_id).run_id for _ in range(4)]
    order = []
    for _ in queued:
        running = claim(stub, assistant)
        assert running is not None
        assert claim(stub, assistant) is None  # the thread is busy
        order.append(running.run_id)
        complete(stub, running)
    assert order == queued


def test_threads_do_not_block_each_other(stub: Stub, assistant: str) -> None:
    first = create(stub, assistant)
    second = create(stub, assistant)
    claimed = {claim(stub, assistant).run_id, claim(stub, assistant).run_id}  # type: ignore[union-attr]
    assert claimed == {first.run_id, second.run_id}


def test_claim_filters_by_assistant(stub: Stub, assistant: str) -> None:
    create(stub, assistant)
    assert claim(stub, f"{assistant}-other") is None
    assert claim(stub, assistant) is not None


def test_start_after_holds_run_back_until_due(stub: Stub, assistant: str) -> None:
    request = run_service_pb2.CreateRunRequest(assistant_id=assistant)
    request.start_after.FromNanoseconds(time.time_ns() + 700_000_000)
    run = stub.CreateRun(request)
    assert claim(stub, assistant) is None
    started = time.monotonic()
    claimed = claim(stub, assistant, wait=5)
    assert claimed is not None
    assert claimed.run_id == run.run_id
    assert time.monotonic() - started < 3  # woke when due, not at the end of the wait


def test_long_poll_wakes_on_create(server_address: str, assistant: str) -> None:
    async def scenario() -> tuple[run_pb2.Run, float]:
        async with grpc.aio.insecure_channel(server_address) as channel:
            stub = run_service_pb2_grpc.RunServiceStub(channel)
            request = run_service_pb2.ClaimRunRequest(
                worker_id="poller", assistant_ids=[assistant], wait=seconds(20)
            )
            waiting = asyncio.ensure_future(stub.ClaimRun(request))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            created_at = time.monotonic()
            await stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id=assistant))
            response = await waiting
            return response.run, time.monotonic() - created_at

    run, latency = asyncio.run(scenario())
    assert run.status == run_pb2.RUN_STATUS_RUNNING
    assert latency < 2


def test_long_poll_wakes_when_thread_previous_run_completes(
    stub: Stub, server_address: str, assistant: str
) -> None:
    first = create(stub, assistant)
    second = create(stub, assistant, thread_id=first.thread_id)
    running = claim(stub, assistant)
    assert running is not None

    async def claim_while_completing(address: str) -> run_pb2.Run:
        async with grpc.aio.insecure_channel(address) as channel:
            aio_stub = run_service_pb2_grpc.RunServiceStub(channel)
            request = run_service_pb2.ClaimRunRequest(
                worker_id="w2", assistant_ids=[assistant], wait=seconds(20)
            )
            waiting = asyncio.ensure_future(aio_stub.ClaimRun(request))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(complete, stub, running)
            return (await asyncio.wait_for(waiting, 5)).run

    assert asyncio.run(claim_while_completing(server_address)).run_id == second.run_id


def test_empty_claim_returns_after_wait(stub: Stub, assistant: str) -> None:
    started = time.monotonic()
    assert claim(stub, assistant, wait=0.5) is None
    assert 0.4 < time.monotonic() - started < 5


async def _claim_all(addresses: list[str], assistant: str, workers: int) -> list[str]:
    """`workers` workers, spread over `addresses`, claim until nothing is left."""

    async def worker(stub: run_service_pb2_grpc.RunServiceAsyncStub, name: str) -> list[str]:
        mine: list[str] = []
        while True:
            response = await stub.ClaimRun(
                run_service_pb2.ClaimRunRequest(worker_id=name, assistant_ids=[assistant])
            )
            if not response.HasField("run"):
                return mine
            mine.append(response.run.run_id)

    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    try:
        stubs = [run_service_pb2_grpc.RunServiceStub(channel) for channel in channels]
        claimed = await asyncio.gather(
            *(worker(stubs[i % len(stubs)], f"w{i}") for i in range(workers))
        )
    finally:
        for channel in channels:
            await channel.close(None)
    return [run_id for mine in claimed for run_id in mine]


def test_claim_race_hands_each_run_to_exactly_one_worker(
    server_address: str, assistant: str
) -> None:
    with run_service(server_address) as stub:
        created = {create(stub, assistant).run_id for _ in range(60)}
    claimed = asyncio.run(_claim_all([server_address], assistant, workers=12))
    assert Counter(claimed).most_common(1)[0][1] == 1
    assert set(claimed) == created


def test_runs_created_while_workers_wait_are_each_claimed_once_and_none_missed(
    server_address: str, assistant: str
) -> None:
    """Creates race with long-polling workers: runs on new threads, runs queued behind
    their thread's, and creates refused on a busy thread. Every run created is claimed
    exactly once, each soon after it became claimable (no wake-up lost: the fallback
    poll comes only after 5 s), and a refused create hands nothing out."""
    shared = [str(uuid.uuid4()) for _ in range(4)]

    async def scenario() -> tuple[set[str], list[str], float]:
        async with grpc.aio.insecure_channel(server_address) as channel:
            stub = run_service_pb2_grpc.RunServiceStub(channel)
            claimed: list[str] = []
            created: set[str] = set()
            refused: list[grpc.StatusCode] = []
            done = asyncio.Event()

            async def worker(name: str) -> None:
                request = run_service_pb2.ClaimRunRequest(
                    worker_id=name, assistant_ids=[assistant], wait=seconds(10)
                )
                while not done.is_set():
                    response = await stub.ClaimRun(request)
                    if response.HasField("run"):
                        claimed.append(response.run.run_id)
                        await stub.CompleteRun(
                            run_service_pb2.CompleteRunRequest(
                                run_id=response.run.run_id,
                                worker_id=name,
                                status=run_pb2.RUN_STATUS_SUCCESS,
                            )
                        )
                        if len(claimed) == 40:
                            done.set()

            async def create(**fields: object) -> None:
                request = run_service_pb2.CreateRunRequest(assistant_id=assistant, **fields)  # type: ignore[arg-type]
                try:
                    created.add((await stub.CreateRun(request)).run_id)
                except grpc.aio.AioRpcError as error:
                    refused.append(error.code())

            workers = [asyncio.ensure_future(worker(f"w{i}")) for i in range(8)]
            await asyncio.sleep(0.3)  # every worker waits
            busy = run_service_pb2.CreateRunRequest(assistant_id=f"{assistant}-other")
            busy_thread = (await stub.CreateRun(busy)).thread_id  # never claimed here
            reject = run_pb2.MULTITASK_STRATEGY_REJECT
            await asyncio.gather(
                *(create() for _ in range(24)),
                *(create(thread_id=shared[i % 4]) for i in range(16)),
                *(create(thread_id=busy_thread, multitask_strategy=reject) for _ in range(6)),
            )
            started = time.monotonic()
            await asyncio.wait_for(done.wait(), 30)
            waited = time.monotonic() - started
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            assert refused == [grpc.StatusCode.FAILED_PRECONDITION] * 6  # the busy thread's
            return created, claimed, waited

    created, claimed, waited = asyncio.run(scenario())
    assert len(created) == 40
    assert Counter(claimed).most_common(1)[0][1] == 1
    assert set(claimed) == created
    assert waited < 4


def test_heartbeat_extends_lease(stub: Stub, assistant: str) -> None:
    create(stub, assistant)
    running = claim(stub, assistant, lease=5)
    assert running is not None
    renewed = stub.HeartbeatRun(
        run_service_pb2.HeartbeatRunRequest(
            run_id=running.run_id, worker_id=running.worker_id, lease_duration=seconds(60)
        )
    )
    assert renewed.lease_expires_at.ToSeconds() >= running.lease_expires_at.ToSeconds() + 50
    assert renewed.status == run_pb2.RUN_STATUS_RUNNING


def test_complete_records_status_error_metadata_and_end(stub: Stub, assistant: str) -> None:
    request = run_service_pb2.CreateRunRequest(assistant_id=assistant)
    request.metadata.update({"a": 1})
    stub.CreateRun(request)
    running = claim(stub, assistant)
    assert running is not None
    completion = run_service_pb2.CompleteRunRequest(
        run_id=running.run_id,
        worker_id=running.worker_id,
        status=run_pb2.RUN_STATUS_ERROR,
        error="model refused",
    )
    completion.metadata.update({"tokens": 12})
    done = stub.CompleteRun(completion)
    assert (done.status, done.error) == (run_pb2.RUN_STATUS_ERROR, "model refused")
    assert dict(done.metadata) == {"a": 1, "tokens": 12}
    assert done.HasField("ended_at")
    assert not done.HasField("lease_expires_at")


@pytest.mark.parametrize(
    "status",
    [run_pb2.RUN_STATUS_PENDING, run_pb2.RUN_STATUS_TIMEOUT, run_pb2.RUN_STATUS_UNSPECIFIED],
)
def test_complete_accepts_only_success_or_error(
    stub: Stub, assistant: str, status: run_pb2.RunStatus.ValueType
) -> None:
    create(stub, assistant)
    running = claim(stub, assistant)
    assert running is not None
    with pytest.raises(grpc.RpcError) as caught:
        complete(stub, running, status)
    found = failure(caught.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "status" in found.violations
    assert get(stub, running.run_id).status == run_pb2.RUN_STATUS_RUNNING


def test_heartbeat_and_complete_after_the_run_is_lost(stub: Stub, assistant: str) -> None:
    create(stub, assistant)
    running = claim(stub, assistant, worker="owner")
    assert running is not None
    heartbeat = run_service_pb2.HeartbeatRunRequest(run_id=running.run_id, worker_id="intruder")
    with pytest.raises(grpc.RpcError) as caught:
        stub.HeartbeatRun(heartbeat)
    assert failure(caught.value).reason == "LEASE_LOST"

    stub.CancelRun(run_service_pb2.CancelRunRequest(run_id=running.run_id, reason="stop"))
    calls: list[Callable[[], object]] = [
        lambda: stub.HeartbeatRun(
            run_service_pb2.HeartbeatRunRequest(run_id=running.run_id, worker_id="owner")
        ),
        lambda: complete(stub, running),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        found = failure(caught.value)
        assert (found.code, found.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST")
    assert get(stub, running.run_id).status == run_pb2.RUN_STATUS_INTERRUPTED

    create(stub, assistant)
    doomed = claim(stub, assistant, worker="owner")
    assert doomed is not None
    stub.CancelRun(
        run_service_pb2.CancelRunRequest(
            run_id=doomed.run_id, action=run_pb2.CANCEL_ACTION_ROLLBACK
        )
    )
    with pytest.raises(grpc.RpcError) as caught:
        complete(stub, doomed)
    # Gone, it is missing like any run that never was (and like another tenant's run).
    assert failure(caught.value).code == grpc.StatusCode.NOT_FOUND


def test_expired_lease_requeues_in_place_then_errors_after_max_attempts(
    stub: Stub, assistant: str
) -> None:
    first = create(stub, assistant)
    behind = create(stub, assistant, thread_id=first.thread_id)
    for attempt in (1, 2, 3):
        running = claim(stub, assistant, worker=f"w{attempt}", lease=0.2, wait=10)
        assert running is not None
        # A requeued run keeps its place: the thread's later run never jumps ahead.
        assert (running.run_id, running.attempt) == (first.run_id, attempt)
        if attempt < 3:
            wait_until(lambda: get(stub, first.run_id).status == run_pb2.RUN_STATUS_PENDING)
            requeued = get(stub, first.run_id)
            assert (requeued.worker_id, requeued.HasField("lease_expires_at")) == ("", False)
    wait_until(lambda: get(stub, first.run_id).status == run_pb2.RUN_STATUS_ERROR)
    errored = get(stub, first.run_id)
    assert "attempt 3 of 3" in errored.error
    assert errored.HasField("ended_at")
    nxt = claim(stub, assistant)
    assert nxt is not None
    assert nxt.run_id == behind.run_id


def test_run_past_its_timeout_becomes_timeout(stub: Stub, assistant: str) -> None:
    request = run_service_pb2.CreateRunRequest(assistant_id=assistant, timeout=seconds(0.3))
    run = stub.CreateRun(request)
    running = claim(stub, assistant, lease=60)
    assert running is not None
    wait_until(lambda: get(stub, run.run_id).status == run_pb2.RUN_STATUS_TIMEOUT)
    timed_out = get(stub, run.run_id)
    assert "timeout" in timed_out.error
    with pytest.raises(grpc.RpcError) as caught:
        complete(stub, running)
    assert failure(caught.value).reason == "LEASE_LOST"


@pytest.mark.parametrize(
    "request_message",
    [
        run_service_pb2.ClaimRunRequest(worker_id=""),
        run_service_pb2.ClaimRunRequest(worker_id="w", lease_duration=seconds(-1)),
        run_service_pb2.ClaimRunRequest(worker_id="w", lease_duration=seconds(7200)),
        run_service_pb2.ClaimRunRequest(worker_id="w", wait=seconds(-1)),
        run_service_pb2.ClaimRunRequest(worker_id="w", assistant_ids=[""]),
    ],
)
def test_claim_rejects_bad_input(
    stub: Stub, request_message: run_service_pb2.ClaimRunRequest
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ClaimRun(request_message)
    assert failure(caught.value).code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_long_poll_on_one_replica_wakes_for_a_run_created_on_another(tmp_path: Path) -> None:
    with (
        fresh_postgres_database() as url,
        ServeProcess("127.0.0.1:0", url, tmp_path) as first,
        ServeProcess("127.0.0.1:0", url, tmp_path) as second,
        run_service(first.address) as worker_side,
        run_service(second.address) as creator_side,
    ):
        assistant = f"replicas-{uuid.uuid4()}"
        latencies = []
        for _ in range(3):
            outcome: list[run_pb2.Run | None] = []
            waiting = threading.Thread(
                target=lambda into=outcome: into.append(claim(worker_side, assistant, wait=20))
            )
            waiting.start()
            time.sleep(0.5)  # the claim is parked on the first replica
            created_at = time.monotonic()
            run = create(creator_side, assistant)
            waiting.join(25)
            latencies.append(time.monotonic() - created_at)
            claimed = outcome[0]
            assert claimed is not None
            assert claimed.run_id == run.run_id
            complete(worker_side, claimed)
        # Woken by the other replica's NOTIFY, not by the 5 s last-resort look.
        assert min(latencies) < 2


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_claim_race_across_two_replicas_hands_each_run_out_once(tmp_path: Path) -> None:
    with (
        fresh_postgres_database() as url,
        ServeProcess("127.0.0.1:0", url, tmp_path) as first,
        ServeProcess("127.0.0.1:0", url, tmp_path) as second,
        run_service(first.address) as stub,
    ):
        assistant = f"replicas-{uuid.uuid4()}"
        # Eight threads of five queued runs, and twenty runs on threads of their own.
        threads = [str(uuid.uuid4()) for _ in range(8)]
        created = {create(stub, assistant, thread_id=t).run_id for t in threads for _ in range(5)}
        created |= {create(stub, assistant).run_id for _ in range(20)}
        claimed = asyncio.run(_claim_all([first.address, second.address], assistant, 16))
        # Nothing completes, so only each thread's first run may be claimed.
        assert Counter(claimed).most_common(1)[0][1] == 1
        assert len(claimed) == 8 + 20
        running = [stub.GetRun(run_service_pb2.GetRunRequest(run_id=r)) for r in claimed]
        assert len({run.thread_id for run in running}) == len(running)
        assert set(claimed) <= created


def test_a_ring_reaches_the_worker_whose_assistant_it_is(
    server_address: str, assistant: str
) -> None:
    """Waiters for other assistants, parked first, do not swallow the wake-up."""

    async def scenario() -> tuple[list[bool], float]:
        async with grpc.aio.insecure_channel(server_address) as channel:
            stub = run_service_pb2_grpc.RunServiceStub(channel)

            def claim_for(assistant_id: str) -> asyncio.Future[run_service_pb2.ClaimRunResponse]:
                request = run_service_pb2.ClaimRunRequest(
                    worker_id=f"w-{assistant_id}", assistant_ids=[assistant_id], wait=seconds(3)
                )
                return asyncio.ensure_future(stub.ClaimRun(request))

            others = [claim_for(f"{assistant}-other-{i}") for i in range(5)]
            await asyncio.sleep(0.2)
            mine = claim_for(assistant)
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id=assistant))
            response = await mine
            waited = time.monotonic() - started
            empty = [not (await other).HasField("run") for other in others]
            assert response.HasField("run")
            return empty, waited

    empty, waited = asyncio.run(scenario())
    assert empty == [True] * 5
    assert waited < 2  # woken by the ring, not by the end of its 3 s wait


def test_a_cancelled_long_poll_does_not_swallow_a_ring(server_address: str, assistant: str) -> None:
    async def scenario() -> float:
        async with grpc.aio.insecure_channel(server_address) as channel:
            stub = run_service_pb2_grpc.RunServiceStub(channel)
            request = run_service_pb2.ClaimRunRequest(
                worker_id="w", assistant_ids=[assistant], wait=seconds(5)
            )
            leaving = stub.ClaimRun(request)  # first in line
            await asyncio.sleep(0.2)
            staying = asyncio.ensure_future(stub.ClaimRun(request))
            await asyncio.sleep(0.2)
            leaving.cancel()
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id=assistant))
            assert (await staying).HasField("run")
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 2


def test_a_ring_reaches_the_worker_whose_namespace_it_is(
    server_address: str, assistant: str
) -> None:
    """Waiters of the same assistant in other namespaces, parked first, are not woken
    for a run they cannot take; the worker of its namespace is, at once."""

    async def scenario() -> tuple[list[bool], float]:
        async with grpc.aio.insecure_channel(server_address) as channel:
            stub = run_service_pb2_grpc.RunServiceStub(channel)

            def claim_in(namespace: str) -> asyncio.Future[run_service_pb2.ClaimRunResponse]:
                request = run_service_pb2.ClaimRunRequest(
                    worker_id=f"w-{namespace}",
                    assistant_ids=[assistant],
                    namespace=namespace,
                    wait=seconds(3),
                )
                return asyncio.ensure_future(stub.ClaimRun(request))

            others = [claim_in(f"elsewhere-{i}") for i in range(5)]
            await asyncio.sleep(0.2)
            mine = claim_in("here")
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await stub.CreateRun(
                run_service_pb2.CreateRunRequest(assistant_id=assistant, namespace="here")
            )
            response = await mine
            waited = time.monotonic() - started
            empty = [not (await other).HasField("run") for other in others]
            assert response.run.namespace == "here"
            return empty, waited

    empty, waited = asyncio.run(scenario())
    assert empty == [True] * 5
    assert waited < 2  # woken by the ring, not by the end of its 3 s wait
