"""Heartbeats are lease keep-alives: the lease moves in place, with no revision, no event
and no notification; GetRun shows the current lease, a watch event the lease as it was
at that event's revision. Through raw stubs, on SQLite and PostgreSQL; the renewal's own
guard (worker and namespace) through the store.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2

from runplane.server.records import Change, ChangeType, MultitaskStrategy, Run, RunStatus
from runplane.server.store.database import Database
from runplane.server.store.unit_of_work import LeaseRenewal, UnitOfWork
from runplane.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc
from tests.support.stubs import seconds
from tests.support.watching import cancel

Stub = run_service_pb2_grpc.RunServiceStub


def running_run(stub: Stub, lease: float = 30) -> run_pb2.Run:
    assistant = f"assistant-{uuid.uuid4()}"
    stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id=assistant))
    response = stub.ClaimRun(
        run_service_pb2.ClaimRunRequest(
            worker_id="w", assistant_ids=[assistant], lease_duration=seconds(lease)
        )
    )
    assert response.HasField("run")
    return response.run


def heartbeat(stub: Stub, run: run_pb2.Run, lease: float) -> run_pb2.Run:
    return stub.HeartbeatRun(
        run_service_pb2.HeartbeatRunRequest(
            run_id=run.run_id, worker_id=run.worker_id, lease_duration=seconds(lease)
        )
    )


def store_revision(stub: Stub) -> int:
    return stub.ListRuns(run_service_pb2.ListRunsRequest(page_size=1)).revision


def lease_us(run: run_pb2.Run) -> int:
    return run.lease_expires_at.ToMicroseconds()


def events_after(stub: Stub, revision: int, thread_id: str) -> list[run_pb2.RunEvent]:
    """The thread's events after `revision` up to the store's revision now."""
    upto = store_revision(stub)
    request = run_service_pb2.WatchRunsRequest(
        filter=run_service_pb2.RunFilter(thread_id=thread_id), start_revision=revision + 1
    )
    events: list[run_pb2.RunEvent] = []
    stream = stub.WatchRuns(request, timeout=10)
    for response in stream:
        events.extend(response.events)
        if response.revision >= upto:
            break
    cancel(stream)
    return events


def test_a_heartbeat_extends_the_lease_in_place(stub: Stub) -> None:
    claimed = running_run(stub, lease=20)
    assert stub.GetRun(run_service_pb2.GetRunRequest(run_id=claimed.run_id)) == claimed
    before = store_revision(stub)
    renewals = [heartbeat(stub, claimed, lease) for lease in (40, 60, 50)]
    for renewed in renewals:
        # The same run at the same revision, its lease moved: not a change.
        assert (renewed.revision, renewed.updated_at) == (claimed.revision, claimed.updated_at)
        assert renewed.status == run_pb2.RUN_STATUS_RUNNING
    assert lease_us(claimed) < lease_us(renewals[0]) < lease_us(renewals[1])
    assert lease_us(renewals[2]) < lease_us(renewals[1])  # a lease may also be shortened
    assert store_revision(stub) == before
    # GetRun shows the current lease (on SQLite, past a cache that held the claim).
    current = stub.GetRun(run_service_pb2.GetRunRequest(run_id=claimed.run_id))
    assert current == renewals[-1]
    stub.CompleteRun(
        run_service_pb2.CompleteRunRequest(
            run_id=claimed.run_id, worker_id="w", status=run_pb2.RUN_STATUS_SUCCESS
        )
    )
    events = events_after(stub, claimed.revision, claimed.thread_id)
    # No event for the heartbeats: the next one is the completion.
    assert [(e.type, e.run.status) for e in events] == [
        (run_pb2.EVENT_TYPE_UPDATED, run_pb2.RUN_STATUS_SUCCESS)
    ]
    assert events[0].revision == before + 1


def test_watch_events_carry_the_lease_as_it_was_at_their_revision(stub: Stub) -> None:
    claimed = running_run(stub, lease=20)
    renewed = heartbeat(stub, claimed, 45)
    update = run_service_pb2.UpdateRunRequest(
        run=run_pb2.Run(run_id=claimed.run_id),
        update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
    )
    update.run.metadata.update({"step": 1})
    updated = stub.UpdateRun(update)
    assert lease_us(updated) == lease_us(renewed)
    events = events_after(stub, claimed.revision - 1, claimed.thread_id)
    assert [(e.revision, lease_us(e.run)) for e in events] == [
        (claimed.revision, lease_us(claimed)),
        (updated.revision, lease_us(renewed)),
    ]


def test_a_run_kept_alive_is_not_swept(stub: Stub) -> None:
    claimed = running_run(stub, lease=0.6)
    deadline = time.monotonic() + 2.5  # the sweeper looks every second
    while time.monotonic() < deadline:
        heartbeat(stub, claimed, 0.6)
        time.sleep(0.15)
    kept = stub.GetRun(run_service_pb2.GetRunRequest(run_id=claimed.run_id))
    assert (kept.status, kept.attempt, kept.worker_id) == (run_pb2.RUN_STATUS_RUNNING, 1, "w")
    assert kept.revision == claimed.revision
    # Left alone, the lease expires and the run goes back in line.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        current = stub.GetRun(run_service_pb2.GetRunRequest(run_id=claimed.run_id))
        if current.status == run_pb2.RUN_STATUS_PENDING:
            break
        time.sleep(0.1)
    assert current.status == run_pb2.RUN_STATUS_PENDING
    with pytest.raises(grpc.RpcError) as caught:
        heartbeat(stub, claimed, 10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_renewal_takes_only_the_run_its_worker_holds_in_the_namespace_named(
    database: Database,
) -> None:
    """The access of a heartbeat's caller is checked against the run's namespace before
    the renewal, and the renewal names that namespace: a run id found elsewhere (deleted
    and taken again meanwhile) or held by another worker is left as it is."""
    run = Run("r", "thread", "agent", RunStatus.RUNNING, MultitaskStrategy.ENQUEUE, 0, 0)
    run.namespace, run.worker_id, run.lease_expires_at = "team-a", "w", 1

    def renew(namespace: str, worker_id: str, until: int) -> list[str]:
        def work(unit: UnitOfWork) -> list[str]:
            return list(unit.renew_leases([LeaseRenewal("r", namespace, worker_id, until)]))

        return asyncio.run(database.write(work))

    asyncio.run(database.write(lambda unit: unit.apply([Change(ChangeType.CREATED, run)])))
    assert renew("team-b", "w", 500) == []
    assert renew("team-a", "other-worker", 600) == []
    current = asyncio.run(database.read(lambda unit: unit.runs.get("r")))
    assert current is not None
    assert current.lease_expires_at == 1
    assert renew("team-a", "w", 700) == ["r"]
