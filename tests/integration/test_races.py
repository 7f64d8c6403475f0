"""Many concurrent callers, exact counts: the strategies and idempotency hold under races."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import grpc
import pytest
from google.protobuf import field_mask_pb2

from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc

CALLERS = 24


async def _create_concurrently(
    address: str, requests: list[run_service_pb2.CreateRunRequest]
) -> list[run_pb2.Run | grpc.aio.AioRpcError]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        start = asyncio.Event()

        async def one(request: run_service_pb2.CreateRunRequest) -> run_pb2.Run:
            await start.wait()
            return await stub.CreateRun(request)

        tasks = [asyncio.create_task(one(request)) for request in requests]
        await asyncio.sleep(0.05)
        start.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    outcomes: list[run_pb2.Run | grpc.aio.AioRpcError] = []
    for result in results:
        if not isinstance(result, run_pb2.Run | grpc.aio.AioRpcError):
            raise AssertionError(f"unexpected outcome {result!r}")
        outcomes.append(result)
    return outcomes


def _thread_runs(address: str, thread_id: str) -> list[run_pb2.Run]:
    with grpc.insecure_channel(address) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        request = run_service_pb2.ListRunsRequest(
            filter=run_service_pb2.RunFilter(thread_id=thread_id), page_size=1000
        )
        return list(stub.ListRuns(request).runs)


def _requests(
    thread_id: str, strategy: run_pb2.MultitaskStrategy.ValueType, request_id: str = ""
) -> list[run_service_pb2.CreateRunRequest]:
    return [
        run_service_pb2.CreateRunRequest(
            assistant_id="racer",
            thread_id=thread_id,
            multitask_strategy=strategy,
            request_id=request_id,
        )
        for _ in range(CALLERS)
    ]


@pytest.mark.timeout(60)
def test_reject_race_exactly_one_create_wins(server_address: str) -> None:
    thread_id = str(uuid.uuid4())
    outcomes = asyncio.run(
        _create_concurrently(
            server_address, _requests(thread_id, run_pb2.MULTITASK_STRATEGY_REJECT)
        )
    )
    winners = [o for o in outcomes if isinstance(o, run_pb2.Run)]
    losers = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert Counter(error.code() for error in losers) == {
        grpc.StatusCode.FAILED_PRECONDITION: CALLERS - 1
    }
    assert [run.run_id for run in _thread_runs(server_address, thread_id)] == [winners[0].run_id]


@pytest.mark.timeout(60)
def test_interrupt_race_leaves_exactly_one_inflight_run(server_address: str) -> None:
    thread_id = str(uuid.uuid4())
    outcomes = asyncio.run(
        _create_concurrently(
            server_address, _requests(thread_id, run_pb2.MULTITASK_STRATEGY_INTERRUPT)
        )
    )
    assert all(isinstance(o, run_pb2.Run) for o in outcomes)
    runs = _thread_runs(server_address, thread_id)
    statuses = Counter(run.status for run in runs)
    assert statuses == {
        run_pb2.RUN_STATUS_PENDING: 1,
        run_pb2.RUN_STATUS_INTERRUPTED: CALLERS - 1,
    }
    survivor = next(run for run in runs if run.status == run_pb2.RUN_STATUS_PENDING)
    # The survivor committed last; each other run was superseded by a run of this race.
    assert survivor.revision == max(run.revision for run in runs)
    ids = {run.run_id for run in runs}
    for run in runs:
        if run is not survivor:
            assert run.cancel_reason.removeprefix("superseded by run ") in ids


@pytest.mark.timeout(60)
def test_rollback_race_leaves_exactly_one_run(server_address: str) -> None:
    thread_id = str(uuid.uuid4())
    outcomes = asyncio.run(
        _create_concurrently(
            server_address, _requests(thread_id, run_pb2.MULTITASK_STRATEGY_ROLLBACK)
        )
    )
    assert all(isinstance(o, run_pb2.Run) for o in outcomes)
    runs = _thread_runs(server_address, thread_id)
    assert len(runs) == 1
    assert runs[0].status == run_pb2.RUN_STATUS_PENDING


@pytest.mark.timeout(60)
def test_concurrent_retries_with_one_request_id_create_one_run(server_address: str) -> None:
    for thread_id in (str(uuid.uuid4()), ""):  # a known thread, and "new thread" each time
        key = f"retry-{uuid.uuid4()}"
        outcomes = asyncio.run(
            _create_concurrently(
                server_address,
                _requests(thread_id, run_pb2.MULTITASK_STRATEGY_REJECT, request_id=key),
            )
        )
        runs = [o for o in outcomes if isinstance(o, run_pb2.Run)]
        assert len(runs) == CALLERS, [o for o in outcomes if not isinstance(o, run_pb2.Run)]
        assert len({run.run_id for run in runs}) == 1
        assert len(_thread_runs(server_address, runs[0].thread_id)) == 1


@pytest.mark.timeout(60)
def test_client_chosen_run_id_race_creates_one_run(server_address: str) -> None:
    run_id = str(uuid.uuid4())
    requests = [
        run_service_pb2.CreateRunRequest(assistant_id="racer", run_id=run_id)
        for _ in range(CALLERS)
    ]
    outcomes = asyncio.run(_create_concurrently(server_address, requests))
    winners = [o for o in outcomes if isinstance(o, run_pb2.Run)]
    losers = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert {error.code() for error in losers} == {grpc.StatusCode.ALREADY_EXISTS}


@pytest.mark.timeout(60)
def test_concurrent_gets_each_see_their_run_and_every_write_before_them(
    server_address: str,
) -> None:
    """GetRuns in flight together are read together on PostgreSQL: each still gets its
    own run (or NOT_FOUND), at least as new as every update answered before it was sent."""

    async def race() -> None:
        async with grpc.aio.insecure_channel(server_address) as channel:
            stub = run_service_pb2_grpc.RunServiceStub(channel)
            runs = await asyncio.gather(
                *(
                    stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id="racer"))
                    for _ in range(CALLERS)
                )
            )
            missing = str(uuid.uuid4())

            async def update_then_get(run: run_pb2.Run, round_: int) -> None:
                run.metadata.update({"round": round_})
                updated = await stub.UpdateRun(
                    run_service_pb2.UpdateRunRequest(
                        run=run, update_mask=field_mask_pb2.FieldMask(paths=["metadata"])
                    )
                )
                got = await stub.GetRun(run_service_pb2.GetRunRequest(run_id=run.run_id))
                assert got.run_id == run.run_id
                assert got.revision >= updated.revision
                assert got.metadata["round"] == round_

            async def get_missing() -> grpc.StatusCode:
                try:
                    await stub.GetRun(run_service_pb2.GetRunRequest(run_id=missing))
                except grpc.aio.AioRpcError as error:
                    return error.code()
                raise AssertionError("a run nobody created was found")

            for round_ in range(3):
                # Each run twice per round, with calls for a run that does not exist.
                codes = await asyncio.gather(
                    *(update_then_get(run, round_) for run in runs),
                    *(
                        stub.GetRun(run_service_pb2.GetRunRequest(run_id=run.run_id))
                        for run in runs
                    ),
                    *(get_missing() for _ in range(CALLERS)),
                )
                found = [
                    got for got in codes[CALLERS : 2 * CALLERS] if isinstance(got, run_pb2.Run)
                ]
                assert sorted(got.run_id for got in found) == sorted(run.run_id for run in runs)
                assert codes[2 * CALLERS :] == [grpc.StatusCode.NOT_FOUND] * CALLERS

    asyncio.run(race())
